"""Fading statistics: mean power, K-factor, Jakes lag-1 correlation; J0; Doppler."""

import math

import numpy as np
import pytest

from common.link.channel import (
    RayleighBlockFading,
    RicianFading,
    bessel_j0,
    doppler_hz,
    jakes_rho,
    k_factor_from_db,
)

J0_FIRST_ZERO = 2.404825557695773


@pytest.mark.parametrize(
    "x, j0", [(0.0, 1.0), (1.0, 0.7651976865579666), (J0_FIRST_ZERO, 0.0), (10.0, -0.2459357644513483), (-1.0, 0.7651976865579666)]
)
def test_bessel_j0_known_values(x, j0):
    assert float(bessel_j0(x)) == pytest.approx(j0, abs=1e-12)


def test_bessel_j0_against_scipy():
    special = pytest.importorskip("scipy.special")
    x = np.array([0.1, 3.3, 50.0, 171.5, 1715.0, 2e4, 1e5])
    np.testing.assert_allclose(bessel_j0(x), special.j0(x), atol=1e-7)


def test_doppler_v2x_50kmh():
    assert doppler_hz(50 / 3.6, 5.9e9) == pytest.approx(273.3, abs=0.1)
    assert doppler_hz(0.0) == 0.0


def iid_dt(f_d=100.0):
    """Sample spacing giving rho = J0(2 pi f_D dt) = 0 (independent samples)."""
    return J0_FIRST_ZERO / (2 * math.pi * f_d)


def k_moment_estimate(h):
    """Greenstein moment estimator of the Rician K from |h|^2."""
    p = np.abs(h) ** 2
    ga = p.mean()
    gv = math.sqrt(max((p**2).mean() - ga**2, 0.0))
    root = math.sqrt(max(ga**2 - gv**2, 0.0))
    return root / (ga - root)


@pytest.mark.parametrize("k_lin", [0.0, 1.0, 5.0, 10.0])
def test_rician_power_and_k_factor(k_lin):
    fad = RicianFading(k_lin, 100.0, iid_dt(), rng=7)
    assert abs(fad.rho) < 1e-9
    h = fad.sample(100_000)
    assert h.dtype == np.complex128 and h.shape == (100_000,)
    assert np.mean(np.abs(h) ** 2) == pytest.approx(1.0, abs=0.02)
    assert k_moment_estimate(h) == pytest.approx(k_lin, abs=0.05 + 0.1 * k_lin)


def test_rayleigh_power_distribution_is_exponential():
    h = RicianFading(0.0, 100.0, iid_dt(), rng=3).sample(100_000)
    p = np.abs(h) ** 2
    for x in (0.01, 0.1, 1.0, 3.0):
        assert np.mean(p < x) == pytest.approx(1 - math.exp(-x), abs=0.01)


@pytest.mark.parametrize("k_lin", [0.0, 3.0])
@pytest.mark.parametrize("speed_mps, dt_s", [(50 / 3.6, 0.5e-3), (30.0, 0.2e-3)])
def test_lag1_autocorrelation_is_jakes(k_lin, speed_mps, dt_s):
    f_d = doppler_hz(speed_mps)
    rho = float(bessel_j0(2 * math.pi * f_d * dt_s))
    h = RicianFading(k_lin, f_d, dt_s, rng=11).sample(100_000)
    s = h - h.mean()  # scattered part (static LOS removed)
    est = np.real(np.vdot(s[:-1], s[1:])) / np.vdot(s, s).real
    assert est == pytest.approx(rho, abs=0.02)


def test_sampling_continues_across_calls_and_is_seeded():
    a = RicianFading(2.0, 200.0, 1e-3, rng=5)
    b = RicianFading(2.0, 200.0, 1e-3, rng=5)
    np.testing.assert_array_equal(np.concatenate([a.sample(3), a.sample(4)]), b.sample(7))
    assert not np.array_equal(RicianFading(2.0, 200.0, 1e-3, rng=6).sample(7), b.sample(7))


def test_static_channel_is_constant():
    h = RicianFading(1.0, 0.0, 1e-3, rng=1).sample(50)
    assert np.all(h == h[0])


def test_block_fading_constant_within_blocks_and_correlated_across():
    f_d, slot, n = 50.0, 0.5e-3, 7
    fad = RayleighBlockFading(f_d, slot, n, rng=2)
    h = np.concatenate([fad.sample(5), fad.sample(7 * 20_000 - 5)])
    blocks = h.reshape(-1, n)
    assert np.all(blocks == blocks[:, :1])
    g = blocks[:, 0]
    assert np.mean(np.abs(g) ** 2) == pytest.approx(1.0, abs=0.05)
    est = np.real(np.vdot(g[:-1], g[1:])) / np.vdot(g, g).real
    assert est == pytest.approx(jakes_rho(f_d, n * slot), abs=0.03)


def test_k_factor_db():
    assert k_factor_from_db(10.0) == pytest.approx(10.0)
    assert k_factor_from_db(-math.inf) == 0.0


@pytest.mark.parametrize(
    "make, bad",
    [
        (lambda: RicianFading(-1.0), "-1.0"),
        (lambda: RicianFading(1.0, -5.0), "-5.0"),
        (lambda: RicianFading(1.0, 10.0, 0.0), "0.0"),
        (lambda: RayleighBlockFading(block_slots=0), "0"),
        (lambda: doppler_hz(-3.0), "-3.0"),
        (lambda: RicianFading(rng="x"), "'x'"),
        (lambda: RicianFading().sample(-1), "-1"),
    ],
)
def test_bad_fading_args(make, bad):
    with pytest.raises(ValueError, match=bad):
        make()
