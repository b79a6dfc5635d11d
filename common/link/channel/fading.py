"""Seeded small-scale fading: Rician/Rayleigh with Jakes time correlation.

Every generator returns complex baseband gains ``h`` (complex128, shape (n,))
with ``E|h|^2 = 1``; the received SNR is the mean SNR times ``|h|^2``.

Time correlation: Clarke/Jakes isotropic scattering gives the autocorrelation
``J0(2 pi f_D tau)`` of the scattered component. The usual emulation, used
here, is a first-order autoregression per step ``dt``::

    s[n+1] = rho s[n] + sqrt(1 - rho^2) w[n],   rho = J0(2 pi f_D dt),  w ~ CN(0, 1)

which matches the Jakes correlation at lag 1 exactly (longer lags decay as
``rho^k`` instead of following the Bessel oscillation).

Rician: ``h = sqrt(K / (K + 1)) e^{j phi} + sqrt(1 / (K + 1)) s`` with a fixed
line-of-sight phase ``phi`` (a LOS Doppler shift only rotates the phase,
which the receiver tracks; ``|h|`` is unaffected). ``K = 0`` is Rayleigh.
"""

from __future__ import annotations

import math

import numpy as np

SPEED_OF_LIGHT_MPS = 299_792_458.0


def bessel_j0(x: float | np.ndarray) -> np.ndarray:
    """Bessel function of the first kind, order 0, in pure numpy.

    Uses ``J0(x) = (1 / 2 pi) * integral_0^{2 pi} cos(x sin t) dt`` with the
    periodic trapezoid rule, whose error decays faster than exponentially
    once the number of nodes exceeds ``|x|`` (about 1e-15 here). For
    ``|x| > 1e4`` the large-argument asymptote ``sqrt(2 / (pi x)) cos(x - pi/4)``
    is used (error below 1e-7). Returns float64 with the shape of ``x``.
    """
    xa = np.abs(np.asarray(x, dtype=np.float64))
    out = np.empty_like(xa)
    big = xa > 1e4
    out[big] = np.sqrt(2.0 / (np.pi * xa[big])) * np.cos(xa[big] - np.pi / 4)
    small = xa[~big]
    if small.size:
        n_nodes = int(np.max(small)) + 64
        t = 2.0 * np.pi * np.arange(n_nodes) / n_nodes
        out[~big] = np.cos(np.multiply.outer(small, np.sin(t))).mean(axis=-1)
    return out


def doppler_hz(speed_mps: float, carrier_hz: float = 5.9e9) -> float:
    """Maximum Doppler shift ``f_D = v f0 / c`` in Hz (5.9 GHz, 50 km/h: about 273 Hz)."""
    if not (math.isfinite(speed_mps) and speed_mps >= 0):
        raise ValueError(f"speed_mps must be finite and >= 0, got {speed_mps!r}")
    if not (math.isfinite(carrier_hz) and carrier_hz > 0):
        raise ValueError(f"carrier_hz must be finite and > 0, got {carrier_hz!r}")
    return speed_mps * carrier_hz / SPEED_OF_LIGHT_MPS


def jakes_rho(doppler_hz: float, dt_s: float) -> float:
    """Lag-``dt_s`` Jakes correlation ``J0(2 pi f_D dt)`` (dimensionless, -0.41..1)."""
    if not (math.isfinite(doppler_hz) and doppler_hz >= 0):
        raise ValueError(f"doppler_hz must be finite and >= 0, got {doppler_hz!r}")
    if not (math.isfinite(dt_s) and dt_s > 0):
        raise ValueError(f"dt_s must be finite and > 0, got {dt_s!r}")
    return float(bessel_j0(2.0 * math.pi * doppler_hz * dt_s))


def k_factor_from_db(k_factor_db: float) -> float:
    """Linear K from dB; ``-inf`` dB gives 0 (Rayleigh)."""
    if math.isnan(k_factor_db) or k_factor_db == math.inf:
        raise ValueError(f"k_factor_db must be a finite number or -inf, got {k_factor_db!r}")
    return 0.0 if k_factor_db == -math.inf else 10.0 ** (k_factor_db / 10.0)


def make_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, int) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise ValueError(f"rng must be a numpy Generator, an int seed or None, got {rng!r}")


def _cn01(rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` circularly-symmetric complex normal samples with unit variance.

    Draws (re, im) pairs in order, so the stream does not depend on how a
    sequence is split into calls.
    """
    x = rng.standard_normal((size, 2))
    return (x[:, 0] + 1j * x[:, 1]) / math.sqrt(2.0)


class RicianFading:
    """Rician (``k_factor > 0``) or Rayleigh (``k_factor = 0``) gains, one per step ``dt_s``.

    k_factor:   linear K = LOS power / scattered power, >= 0.
    doppler_hz: maximum Doppler shift f_D, Hz (0: static channel, rho = 1).
    dt_s:       time between consecutive samples (slot or round), s.
    rng:        numpy Generator or int seed.
    los_phase_rad: LOS phase; drawn uniformly from ``rng`` when None.
    The process starts in its stationary distribution.
    """

    def __init__(
        self,
        k_factor: float = 0.0,
        doppler_hz: float = 0.0,
        dt_s: float = 1e-3,
        rng: np.random.Generator | int | None = None,
        los_phase_rad: float | None = None,
    ) -> None:
        if not (math.isfinite(k_factor) and k_factor >= 0):
            raise ValueError(f"k_factor must be finite and >= 0, got {k_factor!r}")
        self.k_factor = float(k_factor)
        self.rho = jakes_rho(doppler_hz, dt_s)
        self._rng = make_rng(rng)
        phase = self._rng.uniform(0.0, 2.0 * math.pi) if los_phase_rad is None else float(los_phase_rad)
        self._los = math.sqrt(self.k_factor / (self.k_factor + 1.0)) * complex(math.cos(phase), math.sin(phase))
        self._scale = math.sqrt(1.0 / (self.k_factor + 1.0))
        self._s = complex(_cn01(self._rng, 1)[0])
        self._fresh = True  # the initial state is the first sample

    def _advance(self, n: int) -> np.ndarray:
        """Next ``n`` scattered-component samples (complex128, (n,))."""
        if n == 0:
            return np.empty(0, dtype=np.complex128)
        skip = 1 if self._fresh else 0
        innov = math.sqrt(max(0.0, 1.0 - self.rho**2)) * _cn01(self._rng, n - skip)
        out = np.empty(n, dtype=np.complex128)
        s, rho = self._s, self.rho
        out[0] = s if skip else rho * s + innov[0]
        s = out[0]
        for i in range(1, n):
            s = rho * s + innov[i - skip]
            out[i] = s
        self._s, self._fresh = s, False
        return out

    def sample(self, n: int = 1) -> np.ndarray:
        """Next ``n`` complex gains, complex128 shape (n,), ``E|h|^2 = 1``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        return self._los + self._scale * self._advance(n)


class RayleighBlockFading:
    """Rayleigh block fading: constant over ``block_slots`` slots, AR(1) across blocks.

    Block-to-block correlation is ``J0(2 pi f_D * block_slots * slot_s)``.
    ``sample(n)`` returns per-slot gains (complex128, (n,)) and continues the
    block position across calls.
    """

    def __init__(
        self,
        doppler_hz: float = 0.0,
        slot_s: float = 0.5e-3,
        block_slots: int = 14,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        if isinstance(block_slots, bool) or not isinstance(block_slots, int) or block_slots < 1:
            raise ValueError(f"block_slots must be an int >= 1, got {block_slots!r}")
        if not (math.isfinite(slot_s) and slot_s > 0):
            raise ValueError(f"slot_s must be finite and > 0, got {slot_s!r}")
        self.block_slots = block_slots
        self._blocks = RicianFading(0.0, doppler_hz, block_slots * slot_s, rng)
        self.rho = self._blocks.rho
        self._pos = 0  # slots already used from the current block
        self._current = complex(self._blocks.sample(1)[0])

    def sample(self, n: int = 1) -> np.ndarray:
        """Next ``n`` per-slot gains, complex128 shape (n,)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        out = np.empty(n, dtype=np.complex128)
        i = 0
        while i < n:
            if self._pos == self.block_slots:
                self._current, self._pos = complex(self._blocks.sample(1)[0]), 0
            take = min(n - i, self.block_slots - self._pos)
            out[i : i + take] = self._current
            i += take
            self._pos += take
        return out


class NoFading:
    """``h = 1`` always (static AWGN link)."""

    rho = 1.0

    def sample(self, n: int = 1) -> np.ndarray:
        """``n`` unit gains, complex128 shape (n,)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        return np.ones(n, dtype=np.complex128)
