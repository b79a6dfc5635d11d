"""Link budget, per-round states, air time and HARQ delivery; LinkParams validation."""

import json
import math

import numpy as np
import pytest

from common.link.channel import (
    ChannelEmulator,
    ChannelState,
    LinkParams,
    airtime_s,
    pathloss_db,
    peak_rate_bps,
    state_from_mcs,
    state_from_sinr,
)
from common.link.model import Transmission


def test_link_budget_3m_los():
    p = LinkParams()
    fspl = 20 * math.log10(4 * math.pi * 3.0 * 5.9e9 / 299_792_458.0)
    noise = -174 + 10 * math.log10(106 * 12 * 30e3) + 9.0
    assert p.mean_snr_db == pytest.approx(23.0 - fspl - noise)
    assert 50 < p.mean_snr_db < 60


@pytest.mark.parametrize("model, d, expected", [("v2v_highway_los", 100.0, 32.4 + 40 + 20 * math.log10(5.9)),
                                                ("v2v_urban_los", 100.0, 38.77 + 33.4 + 18.2 * math.log10(5.9))])
def test_tr37885_pathloss(model, d, expected):
    assert pathloss_db(model, d, 5.9e9) == pytest.approx(expected)
    assert abs(pathloss_db("free_space", d, 5.9e9) - pathloss_db("v2v_highway_los", d, 5.9e9)) < 0.1


def test_static_no_fading_paper_link_hits_top_mcs():
    emu = ChannelEmulator(LinkParams(fading="none"), seed=0)
    s = emu.step()
    assert (s.sinr_db, s.mcs, s.modulation) == (30.0, 27, "256QAM")
    assert s.rate_bps == pytest.approx(peak_rate_bps(8))
    s64 = emu.step("qam64")
    assert (s64.mcs, s64.modulation) == (28, "64QAM") and s64.rate_bps == pytest.approx(peak_rate_bps(6))
    assert emu.round == 2 and emu.time_s == pytest.approx(0.2)


def test_steps_are_seeded():
    p = LinkParams(distance_m=150, speed_mps=14.0, pathloss="v2v_urban_los")
    e1, e2, e3 = ChannelEmulator(p, 4), ChannelEmulator(p, 4), ChannelEmulator(p, 5)
    t1, t2, t3 = ([e.step() for _ in range(20)] for e in (e1, e2, e3))
    assert t1 == t2 and t1 != t3
    assert len({s.mcs for s in t1}) > 2


@pytest.mark.parametrize("fading", ["rician", "rayleigh", "rayleigh_block", "none"])
def test_every_fading_model_steps(fading):
    emu = ChannelEmulator(LinkParams(fading=fading, distance_m=300, speed_mps=20), seed=1)
    states = [emu.step() for _ in range(12)]
    assert all(isinstance(s, ChannelState) and s.rate_bps > 0 for s in states)
    if fading == "rayleigh_block":
        assert states[0] == states[1] == states[2] == states[3]


@pytest.mark.parametrize("nbytes", [0, 1, 1500, 100_000])
def test_airtime_is_bits_over_rate(nbytes):
    s = state_from_mcs(10, "qam64", LinkParams())
    assert airtime_s(nbytes, s) == pytest.approx(8 * nbytes / s.rate_bps)
    assert ChannelEmulator().airtime_s(nbytes, s) == airtime_s(nbytes, s)


def test_delivery_error_free():
    s = state_from_mcs(27, "qam256", LinkParams(), bler=0.0)
    d = ChannelEmulator().delivery(50_000, s)
    assert d == Transmission(airtime_s(50_000, s), 1)


def test_delivery_always_failing_is_lost_after_max_retx():
    p = LinkParams(max_harq_retx=2, processing_delay_s=2e-3)
    s = state_from_mcs(5, "qam64", p, bler=1.0)
    d = ChannelEmulator(p).delivery(10_000, s, np.random.default_rng(0))
    assert d.lost and d.transmissions == 3
    assert d.airtime_s == pytest.approx(3 * airtime_s(10_000, s) + 2 * 2e-3)


def test_delivery_statistics_follow_bler():
    p = LinkParams(max_harq_retx=3)
    s = state_from_mcs(5, "qam64", p, bler=0.3)
    emu, rng = ChannelEmulator(p), np.random.default_rng(1)
    out = [emu.delivery(2_000, s, rng) for _ in range(20_000)]
    tx = np.array([d.transmissions for d in out])
    assert np.mean(tx == 1) == pytest.approx(0.7, abs=0.015)
    assert np.mean(tx == 2) == pytest.approx(0.21, abs=0.015)
    assert np.mean([d.lost for d in out]) == pytest.approx(0.3**4, abs=0.003)
    t_air = airtime_s(2_000, s)
    for d in out[:50]:
        assert d.airtime_s == pytest.approx(d.transmissions * t_air + (d.transmissions - 1) * p.processing_delay_s)


def test_state_from_sinr_uses_link_params():
    s = state_from_sinr(12.0, LinkParams(bandwidth_hz=20e6, scs_hz=15e3, mcs_table="qam64"))
    assert s.mcs_table == "qam64" and s.sinr_db == 12.0 and 0 <= s.bler <= 0.1


@pytest.mark.parametrize(
    "field, value",
    [
        ("distance_m", -3.0), ("distance_m", 0.0), ("carrier_hz", 0.0), ("bandwidth_hz", 33e6),
        ("scs_hz", 45e3), ("noise_figure_db", -1.0), ("speed_mps", -1.0), ("round_interval_s", 0.0),
        ("bler_target", 0.0), ("bler_target", 1.5), ("max_harq_retx", -1), ("max_harq_retx", 1.5),
        ("fading", "nakagami"), ("pathloss", "cost231"), ("mcs_table", "qam1024"), ("k_factor_db", math.nan),
        ("tx_power_dbm", math.inf), ("layers", 0), ("scaling", 0.0), ("overhead", -0.1), ("block_rounds", 0),
        ("processing_delay_s", -1e-3), ("bler_slope_db", 0.0), ("max_sinr_db", math.nan),
    ],
)
def test_bad_link_params_raise_naming_value(field, value):
    with pytest.raises(ValueError) as exc:
        LinkParams(**{field: value})
    assert repr(value) in str(exc.value) or str(value) in str(exc.value)


@pytest.mark.parametrize("nbytes", [-1, 1.5, True])
def test_bad_nbytes(nbytes):
    with pytest.raises(ValueError, match="nbytes"):
        airtime_s(nbytes, state_from_mcs(0, "qam64", LinkParams()))


def test_state_json_roundtrip_and_validation():
    s = state_from_mcs(3, "qam64", LinkParams())  # MCS-only: sinr nan
    d = s.to_dict()
    assert list(d) == ["sinr_db", "mcs", "mcs_table", "modulation", "rate_bps", "bler"]
    assert d["sinr_db"] is None
    back = ChannelState.from_dict(json.loads(json.dumps(d, allow_nan=False)))
    assert math.isnan(back.sinr_db) and back.mcs == 3 and back.rate_bps == s.rate_bps
    t = state_from_sinr(17.5, LinkParams())
    assert ChannelState.from_dict(t.to_dict()) == t


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"modulation": "QPSK", "mcs": 27}, "QPSK"),
        ({"mcs": 28}, "28"),
        ({"mcs_table": "qam16"}, "qam16"),
        ({"rate_bps": 0.0}, "0.0"),
        ({"bler": 1.2}, "1.2"),
        ({"sinr_db": math.inf}, "inf"),
    ],
)
def test_channel_state_validation(kwargs, bad):
    base = dict(sinr_db=30.0, mcs=27, mcs_table="qam256", modulation="256QAM", rate_bps=2e8, bler=0.0)
    base.update(kwargs)
    with pytest.raises(ValueError, match=bad):
        ChannelState(**base)


def test_from_dict_rejects_unknown_and_missing_keys():
    d = state_from_sinr(20.0, LinkParams()).to_dict()
    with pytest.raises(ValueError, match="colour"):
        ChannelState.from_dict({**d, "colour": 1})
    with pytest.raises(ValueError, match="rate_bps"):
        ChannelState.from_dict({k: v for k, v in d.items() if k != "rate_bps"})


def test_numpy_scalars_are_normalised():
    s = ChannelState(np.float64(3.0), np.int64(2), "qam64", "QPSK", np.float64(1e7), np.float32(0.5))
    assert type(s.mcs) is int and type(s.rate_bps) is float and type(s.bler) is float
