"""MCS tables (TS 38.214), NR rate (TS 38.306), N_PRB (TS 38.101-1), link adaptation."""

import math

import numpy as np
import pytest

from common.link.channel import (
    MCS_TABLES,
    bler_of,
    max_mcs,
    mcs_entry,
    n_prb,
    nr_rate_bps,
    peak_rate_bps,
    required_sinr_db,
    sinr_to_mcs,
)


def formula_bps(qm, r_x1024, nrb=106, mu=1, v=1, f=1.0, oh=0.14):
    """TS 38.306 4.1.2 written out independently of the module."""
    ts = 1e-3 / (14 * 2**mu)
    return 1e6 * (1e-6 * v * qm * f * (r_x1024 / 1024) * nrb * 12 / ts * (1 - oh))


def test_peak_rate_ratio_64qam_over_256qam_is_0_75():
    assert peak_rate_bps(6) / peak_rate_bps(8) == pytest.approx(0.75, rel=1e-12)
    for bw, scs in [(20e6, 15e3), (100e6, 30e3), (50e6, 60e3)]:
        ratio = peak_rate_bps(6, bandwidth_hz=bw, scs_hz=scs) / peak_rate_bps(8, bandwidth_hz=bw, scs_hz=scs)
        assert ratio == pytest.approx(0.75, rel=1e-12)


@pytest.mark.parametrize("qm, expected_mbps", [(6, 170.0), (8, 227.0)])
def test_peak_rate_40mhz_30khz_matches_formula_and_design_figures(qm, expected_mbps):
    got = peak_rate_bps(qm, bandwidth_hz=40e6, scs_hz=30e3, overhead=0.14)
    assert got == pytest.approx(formula_bps(qm, 948), rel=1e-12)
    assert got / 1e6 == pytest.approx(expected_mbps, rel=0.01)


def test_rate_scales_with_layers_scaling_and_overhead():
    base = nr_rate_bps(2.0)
    assert nr_rate_bps(2.0, layers=2) == pytest.approx(2 * base)
    assert nr_rate_bps(2.0, scaling=0.75) == pytest.approx(0.75 * base)
    assert nr_rate_bps(2.0, overhead=0.0) == pytest.approx(base / 0.86)


# (table, index, Qm, R x 1024, spectral efficiency) as printed in TS 38.214 Tables 5.1.3.1-1/-2
SPEC_ROWS = [
    ("qam64", 0, 2, 120, 0.2344),
    ("qam64", 9, 2, 679, 1.3262),
    ("qam64", 10, 4, 340, 1.3281),
    ("qam64", 16, 4, 658, 2.5703),
    ("qam64", 17, 6, 438, 2.5664),
    ("qam64", 28, 6, 948, 5.5547),
    ("qam256", 0, 2, 120, 0.2344),
    ("qam256", 4, 2, 602, 1.1758),
    ("qam256", 5, 4, 378, 1.4766),
    ("qam256", 11, 6, 466, 2.7305),
    ("qam256", 19, 6, 873, 5.1152),
    ("qam256", 20, 8, 682.5, 5.3320),
    ("qam256", 26, 8, 916.5, 7.1602),
    ("qam256", 27, 8, 948, 7.4063),
]


@pytest.mark.parametrize("table, index, qm, r, se", SPEC_ROWS)
def test_mcs_entries_match_spec(table, index, qm, r, se):
    e = mcs_entry(table, index)
    assert (e.qm, e.code_rate_x1024, e.spectral_efficiency) == (qm, r, se)


@pytest.mark.parametrize("table", MCS_TABLES)
def test_every_row_is_consistent(table):
    for i in range(max_mcs(table) + 1):
        e = mcs_entry(table, i)
        assert abs(e.spectral_efficiency - e.qm * e.code_rate_x1024 / 1024) < 6e-5
    assert max_mcs("qam64") == 28 and max_mcs("qam256") == 27
    counts = {"qam64": {"QPSK": 10, "16QAM": 7, "64QAM": 12}, "qam256": {"QPSK": 5, "16QAM": 6, "64QAM": 9, "256QAM": 8}}
    mods = [mcs_entry(table, i).modulation for i in range(max_mcs(table) + 1)]
    assert {m: mods.count(m) for m in set(mods)} == counts[table]


@pytest.mark.parametrize("table, index", [("qam64", 29), ("qam256", 28), ("qam64", -1), ("qam256", 2.0), ("qam1024", 0)])
def test_bad_mcs_lookup_raises_naming_value(table, index):
    with pytest.raises(ValueError, match=repr(index) if table != "qam1024" else "qam1024"):
        mcs_entry(table, index)


@pytest.mark.parametrize(
    "bw_hz, scs_hz, nrb",
    [(40e6, 30e3, 106), (100e6, 30e3, 273), (20e6, 15e3, 106), (50e6, 15e3, 270), (5e6, 15e3, 25),
     (10e6, 60e3, 11), (100e6, 60e3, 135), (60e6, 30e3, 162), (90e6, 30e3, 245)],
)
def test_n_prb_table(bw_hz, scs_hz, nrb):
    assert n_prb(bw_hz, scs_hz) == nrb


@pytest.mark.parametrize("bw_hz, scs_hz, bad", [(60e6, 15e3, "60000000.0"), (5e6, 60e3, "5000000.0"), (41e6, 30e3, "41000000.0"), (40e6, 120e3, "120000.0")])
def test_n_prb_bad_pair_raises_naming_value(bw_hz, scs_hz, bad):
    with pytest.raises(ValueError, match=bad):
        nr_rate_bps(1.0, bandwidth_hz=bw_hz, scs_hz=scs_hz)


@pytest.mark.parametrize("kwargs, name", [({"layers": 0}, "layers"), ({"scaling": 1.5}, "scaling"), ({"overhead": 1.0}, "overhead")])
def test_rate_bad_args(kwargs, name):
    with pytest.raises(ValueError, match=name):
        nr_rate_bps(1.0, **kwargs)


@pytest.mark.parametrize("table", MCS_TABLES)
@pytest.mark.parametrize("gap_db, target", [(0.0, 0.1), (3.0, 0.1), (3.0, 0.01), (6.0, 0.3)])
def test_sinr_to_mcs_is_monotone_and_meets_target(table, gap_db, target):
    sinrs = np.arange(-15.0, 45.0, 0.1)
    mcs = [sinr_to_mcs(s, table, gap_db, target) for s in sinrs]
    assert all(b >= a for a, b in zip(mcs, mcs[1:]))
    assert mcs[0] == 0 and mcs[-1] == max_mcs(table)
    for s, m in zip(sinrs, mcs):
        if s >= required_sinr_db(mcs_entry(table, 0), gap_db, target):
            assert bler_of(s, mcs_entry(table, m), gap_db) <= target + 1e-12


def test_shannon_gap_selection_rule():
    # 20 dB, gap 3 dB: achievable SE = log2(1 + 10**1.7) = 5.67 -> highest MCS with SE <= 5.67 (10 % BLER)
    se = math.log2(1 + 10 ** (17 / 10))
    m = sinr_to_mcs(20.0, "qam256", gap_db=3.0, bler_target=0.1)
    assert mcs_entry("qam256", m).se_exact <= se < mcs_entry("qam256", m + 1).se_exact


def test_lower_bler_target_never_raises_mcs():
    for s in np.arange(-5, 35, 0.5):
        assert sinr_to_mcs(s, bler_target=0.01) <= sinr_to_mcs(s, bler_target=0.1) <= sinr_to_mcs(s, bler_target=0.3)


def test_bler_curve():
    e = mcs_entry("qam256", 15)
    s10 = required_sinr_db(e, gap_db=3.0, bler_target=0.1)
    assert bler_of(s10, e, gap_db=3.0) == pytest.approx(0.1)
    assert bler_of(required_sinr_db(e, 3.0, 0.01), e, 3.0) == pytest.approx(0.01)
    b = [bler_of(s, e) for s in np.arange(-10, 40, 0.5)]
    assert all(y <= x for x, y in zip(b, b[1:])) and b[0] > 0.999 and b[-1] < 1e-6
    # below MCS 0 the link stays on MCS 0 with high BLER
    assert sinr_to_mcs(-20.0, "qam64") == 0 and bler_of(-20.0, mcs_entry("qam64", 0)) > 0.99


@pytest.mark.parametrize("bad", [{"bler_target": 0.0}, {"bler_target": 1.0}, {"gap_db": math.inf}])
def test_link_adaptation_bad_args(bad):
    with pytest.raises(ValueError, match=repr(next(iter(bad.values())))):
        sinr_to_mcs(10.0, **bad)
    with pytest.raises(ValueError, match="nan"):
        sinr_to_mcs(math.nan)
