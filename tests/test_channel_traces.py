"""Built-in traces and CSV replay, including every malformed-CSV error."""

import math

import pytest

from common.link.channel import TRACE_NAMES, LinkParams, build_trace, peak_rate_bps


def test_trace_names():
    assert set(TRACE_NAMES) == {"paper", "fading", "stress", "demo"}


@pytest.mark.parametrize("rounds", [1, 2, 7, 20])
def test_paper_trace_switches_from_256qam_to_64qam(rounds):
    tr = build_trace("paper", rounds, seed=3)
    assert len(tr) == rounds
    n256 = (rounds + 1) // 2
    assert all(s.mcs_table == "qam256" and s.mcs == 27 and s.modulation == "256QAM" for s in tr[:n256])
    assert all(s.mcs_table == "qam64" and s.mcs == 28 and s.modulation == "64QAM" for s in tr[n256:])
    assert tr[0].rate_bps == pytest.approx(peak_rate_bps(8))
    if rounds > 1:
        assert tr[-1].rate_bps == pytest.approx(peak_rate_bps(6))


def test_fading_trace_follows_sinr_and_is_seeded():
    tr = build_trace("fading", 60, seed=1)
    assert tr == build_trace("fading", 60, seed=1) != build_trace("fading", 60, seed=2)
    assert all(s.mcs_table == "qam256" for s in tr)
    assert len({s.mcs for s in tr}) >= 4
    by_sinr = sorted(tr, key=lambda s: s.sinr_db)
    assert all(b.mcs >= a.mcs for a, b in zip(by_sinr, by_sinr[1:]))


def test_fading_trace_speed_and_distance_are_configurable():
    far = build_trace("fading:distance_m=600", 60, seed=1)
    near = build_trace("fading", 60, seed=1)
    assert sum(s.rate_bps for s in far) < sum(s.rate_bps for s in near)
    static = build_trace("fading:speed_mps=0", 10, seed=1)
    assert all(s == static[0] for s in static)
    custom = build_trace("fading", 5, params=LinkParams(fading="rayleigh", distance_m=50.0, speed_mps=5.0))
    assert len(custom) == 5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stress_trace_has_deep_fades(seed):
    tr = build_trace("stress", 50, seed=seed)
    rates = [s.rate_bps for s in tr]
    assert min(rates) < 20e6
    assert sum(r < 20e6 for r in rates) >= 3
    assert sum(rates) / len(rates) < 0.5 * peak_rate_bps(6)


@pytest.mark.parametrize("rounds", [3, 4, 5, 6, 9, 10, 50])
def test_demo_trace_has_256qam_64qam_and_deep_fade(rounds):
    tr = build_trace("demo", rounds)
    assert len(tr) == rounds
    assert tr[0].modulation == "256QAM" and tr[0].rate_bps > 220e6
    assert any(s.mcs_table == "qam64" and s.modulation == "64QAM" and 165e6 < s.rate_bps < 175e6 for s in tr)
    fades = [s for s in tr if s.rate_bps < 20e6]
    assert fades and all(5e6 <= s.rate_bps <= 15e6 and s.bler <= 0.1 for s in fades)
    first_fade = next(i for i, s in enumerate(tr) if s.rate_bps < 20e6)
    assert all(s.rate_bps > 150e6 for s in tr[:first_fade])
    assert tr == build_trace("demo", rounds, seed=99)


def test_demo_needs_three_rounds():
    with pytest.raises(ValueError, match="rounds >= 3, got 2"):
        build_trace("demo", 2)


@pytest.mark.parametrize("spec, bad", [("fading:speed=3", "speed=3"), ("fading:speed_mps=fast", "'fast'"),
                                       ("stress:distance_m=-5", "-5"), ("paper:mcs_table=qam8", "qam8")])
def test_bad_overrides(spec, bad):
    with pytest.raises(ValueError, match=bad):
        build_trace(spec, 3)


@pytest.mark.parametrize("rounds", [0, -1, 2.0])
def test_bad_rounds(rounds):
    with pytest.raises(ValueError, match="rounds"):
        build_trace("paper", rounds)


def test_unknown_name_is_neither_builtin_nor_file(tmp_path):
    with pytest.raises(ValueError, match="nosuch"):
        build_trace(str(tmp_path / "nosuch.csv"), 3)


def write(tmp_path, text, name="trace.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_csv_sinr_replay_wraps_around(tmp_path):
    path = write(tmp_path, "time_s,sinr_db\n0.0,30\n0.1,10.5\n\n0.2,-8\n")
    tr = build_trace(path, 7)
    assert [s.sinr_db for s in tr] == [30.0, 10.5, -8.0, 30.0, 10.5, -8.0, 30.0]
    assert tr[0].mcs == 27 and tr[2].mcs == 0 and tr[2].bler > 0.5
    assert tr[1].mcs < 27


def test_csv_mcs_only_and_tables(tmp_path):
    path = write(tmp_path, "time_s,mcs,mcs_table\n0,27,qam256\n1,28,qam64\n2,3,\n")
    tr = build_trace(path, 3, params=LinkParams(mcs_table="qam64"))
    assert [(s.mcs, s.mcs_table, s.modulation) for s in tr] == [(27, "qam256", "256QAM"), (28, "qam64", "64QAM"), (3, "qam64", "QPSK")]
    assert all(math.isnan(s.sinr_db) and s.bler == 0.0 for s in tr)
    assert tr[0].rate_bps == pytest.approx(peak_rate_bps(8))


def test_csv_mixed_columns_and_bler(tmp_path):
    path = write(tmp_path, "time_s, sinr_db, mcs, bler\n0,12.0,,\n1,,5,0.2\n2,25.0,20,\n")
    a, b, c = build_trace(path, 3)
    assert a.sinr_db == 12.0 and a.bler <= 0.1
    assert b.mcs == 5 and math.isnan(b.sinr_db) and b.bler == 0.2
    assert c.mcs == 20 and c.sinr_db == 25.0 and 0.0 <= c.bler < 0.1


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("", ["empty", "line 1"]),
        ("\n\n", ["empty"]),
        ("time_s,sinr_db\n", ["no data rows", "line 1"]),
        ("t,sinr_db\n0,10\n", ["line 1", "time_s"]),
        ("time_s,rate\n0,10\n", ["line 1", "sinr_db or mcs"]),
        ("time_s,sinr_db\n0,10\n0.1,abc\n", ["line 3", "sinr_db='abc'"]),
        ("time_s,sinr_db\nzero,10\n", ["line 2", "time_s='zero'"]),
        ("time_s,sinr_db\n0,nan\n", ["line 2", "'nan'"]),
        ("time_s,mcs\n0,29\n", ["line 2", "mcs='29'", "qam256"]),
        ("time_s,mcs,mcs_table\n0,28,qam256\n", ["line 2", "mcs='28'"]),
        ("time_s,mcs,mcs_table\n0,29,qam64\n", ["line 2", "mcs='29'"]),
        ("time_s,mcs\n0,-1\n", ["line 2", "mcs='-1'"]),
        ("time_s,mcs\n0,2.5\n", ["line 2", "mcs='2.5'"]),
        ("time_s,mcs\n0,seven\n", ["line 2", "mcs='seven'"]),
        ("time_s,mcs,mcs_table\n0,3,qam16\n", ["line 2", "qam16"]),
        ("time_s,sinr_db\n0,10,5\n", ["line 2", "3 fields"]),
        ("time_s,sinr_db\n1,10\n0.5,10\n", ["line 3", "time_s='0.5'"]),
        ("time_s,sinr_db,mcs\n0,,\n", ["line 2", "sinr_db or an mcs"]),
        ("time_s,mcs,bler\n0,3,1.5\n", ["line 2", "bler='1.5'"]),
    ],
)
def test_malformed_csv_errors(tmp_path, text, fragments):
    path = write(tmp_path, text, "bad.csv")
    with pytest.raises(ValueError) as exc:
        build_trace(path, 3)
    msg = str(exc.value)
    assert "bad.csv" in msg
    for frag in fragments:
        assert frag in msg, msg
