"""``loopback``: the channel emulator between two processes on one machine."""

from __future__ import annotations

import time
from typing import Callable

from common.link.channel import ChannelEmulator, ChannelState, LinkParams, build_trace
from common.link.sidelink.base import (
    DeliveryReport,
    PayloadLost,
    Sidelink,
    register_sidelink,
)


@register_sidelink
class LoopbackLink(Sidelink):
    """Channel emulator on one machine: a trace of channel states, delivery delayed by air time.

    ``trace``: a built-in name or CSV path (see :func:`common.link.channel.build_trace`);
    round ``seq`` sees ``states[seq % rounds]``. Delivery waits for the HARQ
    air time (``8 * nbytes / rate_bps`` per attempt) plus ``processing_delay_s``.
    ``params``: LinkParams, or a dict of its fields (a ``[link.params]`` TOML table).
    ``sleep`` (seconds) and ``clock`` (Unix time in seconds) are the wait's, injectable for tests.
    """

    name = "loopback"

    def __init__(self, trace: str = "demo", rounds: int = 9, seed: int = 0,
                 params: LinkParams | dict | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time):
        if isinstance(params, dict):
            try:
                params = LinkParams(**params)
            except TypeError as e:
                raise ValueError(f"loopback sidelink: bad link params {sorted(params)} ({e})") from e
        self.states = build_trace(trace, rounds, seed, params)
        self.emulator = ChannelEmulator(params or LinkParams(), seed)
        self._sleep = sleep
        self._clock = clock

    def channel_state(self, seq: int) -> ChannelState:
        return self.states[seq % len(self.states)]

    def deliver(self, nbytes: int, state: ChannelState, received_ns: int, wait: bool = True) -> DeliveryReport:
        outcome = self.emulator.delivery(nbytes, state)
        delay_s = outcome.airtime_s + self.emulator.params.processing_delay_s
        delivered_ns = received_ns + int(delay_s * 1e9)
        remaining = delivered_ns / 1e9 - self._clock()
        if wait and remaining > 0:
            self._sleep(remaining)
        reason = f"payload of {nbytes} B {outcome.reason}" if outcome.lost else ""
        report = DeliveryReport(outcome.airtime_s, outcome.transmissions, delay_s, delivered_ns,
                                lost=outcome.lost, reason=reason)
        if report.lost:
            raise PayloadLost(report.reason, report)
        return report
