"""``loopback`` backend: delivery waits for the emulated air time."""

import dataclasses
import time

import pytest

from common.link.channel import LinkParams
from common.link.sidelink import LoopbackLink, PayloadLost, create_sidelink


def test_fake_sleep_gets_the_remaining_air_time():
    slept = []
    link = LoopbackLink(trace="demo", rounds=3, params=LinkParams(fading="none"), sleep=slept.append)
    state = link.channel_state(2)  # deep fade: 64-QAM MCS 1, ~9.4 Mb/s, BLER ~0
    received_ns = time.time_ns()
    report = link.deliver(500_000, state, received_ns)
    assert report.transmissions == 1
    assert report.airtime_s == pytest.approx(8 * 500_000 / state.rate_bps)
    assert report.delay_s == pytest.approx(report.airtime_s + 1e-3)
    (waited,) = slept
    assert report.delay_s - 0.005 < waited <= report.delay_s  # minus the time spent before the sleep


def test_real_delivery_ends_at_receive_time_plus_delay():
    link = create_sidelink("loopback", trace="demo", rounds=3, params={"fading": "none"})
    state = link.channel_state(2)
    nbytes = int(0.04 * state.rate_bps / 8)  # 40 ms of air time
    received_ns = time.time_ns()
    report = link.deliver(nbytes, state, received_ns)
    late_s = time.time() - (received_ns / 1e9 + report.delay_s)
    assert report.delay_s == pytest.approx(0.041, abs=1e-4)
    assert -1e-3 <= late_s < 0.015  # sleep overshoot on a loaded machine


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
