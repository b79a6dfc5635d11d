"""``loopback`` backend: delivery waits for the emulated air time."""

import dataclasses
import time

import pytest

from common.link.channel import LinkParams
from common.link.sidelink import LoopbackLink, PayloadLost, create_sidelink


def test_fake_sleep_gets_the_remaining_air_time():
    slept = []
    received_ns = time.time_ns()
    now = [received_ns / 1e9 + 0.002]  # 2 ms spent before the wait: the sleep gets the rest
    link = LoopbackLink(trace="demo", rounds=3, params=LinkParams(fading="none"), sleep=slept.append,
                        clock=lambda: now[0])
    state = link.channel_state(2)  # deep fade: 64-QAM MCS 1, ~9.4 Mb/s, BLER ~0
    report = link.deliver(500_000, state, received_ns)
    assert report.transmissions == 1
    assert report.airtime_s == pytest.approx(8 * 500_000 / state.rate_bps)
    assert report.delay_s == pytest.approx(report.airtime_s + 1e-3)
    (waited,) = slept
    assert waited == pytest.approx(report.delay_s - 0.002, abs=1e-6)


def test_real_delivery_ends_at_receive_time_plus_delay():
    link = create_sidelink("loopback", trace="demo", rounds=3, params={"fading": "none"})
    state = link.channel_state(2)
    nbytes = int(0.04 * state.rate_bps / 8)  # 40 ms of air time
    received_ns = time.time_ns()
    report = link.deliver(nbytes, state, received_ns)
    late_s = time.time() - (received_ns / 1e9 + report.delay_s)
    assert report.delay_s == pytest.approx(0.041, abs=1e-4)
    assert late_s >= -1e-3  # never early; how late depends on the machine's load (a benchmark's figure)


def test_payload_received_long_ago_is_not_delayed_further():
    slept = []
    link = LoopbackLink(trace="demo", rounds=3, sleep=slept.append)
    link.deliver(1000, link.channel_state(0), time.time_ns() - 10**9)
    assert slept == []


def test_lost_payload_raises_after_all_harq_attempts():
    slept = []
    link = LoopbackLink(trace="stress", rounds=3, params=LinkParams(max_harq_retx=1), sleep=slept.append)
    state = link.channel_state(0)
    lossy = dataclasses.replace(state, bler=1.0)
    with pytest.raises(PayloadLost, match=r"after 2 HARQ transmissions"):
        link.deliver(1000, lossy, time.time_ns())
