"""``ip`` backend: constant nominal state, no delivery delay."""

import math
import time

import pytest

from common.link.channel import mcs_entry, nr_rate_bps, peak_rate_bps
from common.link.sidelink import IpLink, UnsupportedOperation, create_sidelink


def test_default_is_top_64qam_mcs_at_40mhz():
    state = create_sidelink("ip").channel_state(0)
    assert (state.mcs_table, state.mcs, state.modulation) == ("qam64", 28, "64QAM")
    assert state.rate_bps == pytest.approx(peak_rate_bps(6))
    assert state.rate_bps == pytest.approx(170.1e6, rel=1e-3)
    assert math.isnan(state.sinr_db) and state.bler == 0.0


def test_rate_bps_overrides_the_nr_rate_and_is_constant():
    link = create_sidelink("ip", rate_bps=50_000_000, mcs=10)
    states = {link.channel_state(seq) for seq in range(5)}
    assert len(states) == 1
    (state,) = states
    assert state.rate_bps == 50e6 and state.mcs == 10 and state.modulation == "16QAM"


@pytest.mark.parametrize("mcs, table, bandwidth_hz, scs_hz", [
    (27, "qam256", 40e6, 30e3),
    (1, "qam64", 40e6, 30e3),
    (15, "qam256", 20e6, 15e3),
])
def test_mcs_and_carrier_give_the_nr_rate(mcs, table, bandwidth_hz, scs_hz):
    state = IpLink(mcs=mcs, mcs_table=table, bandwidth_hz=bandwidth_hz, scs_hz=scs_hz).channel_state(0)
    assert state.rate_bps == pytest.approx(nr_rate_bps(mcs_entry(table, mcs).se_exact, bandwidth_hz, scs_hz))


def test_deliver_records_air_time_and_applies_no_delay():
    link = IpLink(rate_bps=8e6)
    state = link.channel_state(0)
    t0 = time.perf_counter()
    report = link.deliver(1_000_000, state, time.time_ns() - 10**9)  # 1 s of air time
    assert time.perf_counter() - t0 < 0.05
    assert report.airtime_s == pytest.approx(1.0)
    assert (report.transmissions, report.delay_s) == (1, 0.0)


def test_deliver_rejects_bad_sizes_and_cannot_set_mcs():
    link = IpLink()
    with pytest.raises(ValueError, match=r"nbytes must be an int >= 0, got -1"):
        link.deliver(-1, link.channel_state(0), 0)
    with pytest.raises(UnsupportedOperation, match="'ip'"):
        link.set_mcs(3)
