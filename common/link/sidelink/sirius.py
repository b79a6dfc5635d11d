"""``sirius``: two SIRIUS 5G-V2X radios, data over the radios' IP interface.

No public API of the SIRIUS platform is known. What this backend assumes: each
unit gives its host an IP interface over the sidelink (as open sidelink stacks
such as OpenAirInterface NR sidelink and ns-3 5G-LENA do), so the protocol's
ZeroMQ/TCP bytes simply travel over it; and the unit exposes, somehow, its
channel state (RSRP / SINR / CQI / MCS) and optionally an MCS setting. That
"somehow" is a :class:`~common.link.sidelink.radio.RadioControl` configured in
``[link.radio]`` (HTTP JSON or a command template, see ``common.link.sidelink.radio``).

Each round :meth:`SiriusLink.channel_state` reads the radio: the MCS it reports
is used as is, else its SINR goes through link adaptation
(:func:`common.link.channel.sinr_to_mcs`); the rate is the TS 38.306 rate of that
MCS on the configured carrier. The radio does the air part, so
:meth:`SiriusLink.deliver` adds no delay.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from common.link.channel import (
    ChannelState,
    LinkParams,
    bler_of,
    max_mcs,
    mcs_entry,
    state_from_mcs,
    state_from_sinr,
)
from common.link.sidelink.base import DeliveryReport, Sidelink, register_sidelink
from common.link.sidelink.ip import undelayed_delivery
from common.link.sidelink.radio import RadioControl, RadioError, create_radio_control


@register_sidelink
class SiriusLink(Sidelink):
    """RX-side link over a SIRIUS unit.

    radio:        the ``[link.radio]`` table (``control = "http"`` or
                  ``"command"`` plus that adapter's options), or a RadioControl.
    mcs_table:    MCS table the radio's indices refer to, "qam256" (default) or "qam64".
    bandwidth_hz, scs_hz, layers, scaling, overhead: the sidelink carrier for
                  the TS 38.306 rate (defaults 40 MHz, 30 kHz, 1, 1.0, 0.14).
    gap_db, bler_target, bler_slope_db: link adaptation when the radio gives
                  SINR only (see ``common.link.channel.nr``; defaults 3 dB, 0.1, 0.5 dB).
    max_stale_s:  when the radio does not answer, a good reading at most this
                  old (s) stands in; 0 (default): the read fails the round.
    clock:        monotonic clock in s (tests pass a fake).

    ``last_reading`` holds the last good radio reading (dict, see
    ``READING_FIELDS``), ``last_error`` the last failure message (None after a
    good read) and ``read_failures`` counts failed reads.
    """

    name = "sirius"

    def __init__(self, radio: dict[str, Any] | RadioControl | None = None, mcs_table: str = "qam256",
                 bandwidth_hz: float = 40e6, scs_hz: float = 30e3, layers: int = 1, scaling: float = 1.0,
                 overhead: float = 0.14, gap_db: float = 3.0, bler_target: float = 0.1,
                 bler_slope_db: float = 0.5, max_stale_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        if isinstance(radio, dict):
            radio = create_radio_control(**radio)
        if not isinstance(radio, RadioControl):
            raise ValueError(f"sirius sidelink needs radio = a [link.radio] table with control = 'http' or "
                             f"'command', got {radio!r}")
        if isinstance(max_stale_s, bool) or not isinstance(max_stale_s, (int, float)) or not (
            math.isfinite(max_stale_s) and max_stale_s >= 0
        ):
            raise ValueError(f"sirius sidelink: max_stale_s must be finite and >= 0, got {max_stale_s!r}")
        self.params = LinkParams(bandwidth_hz=bandwidth_hz, scs_hz=scs_hz, mcs_table=mcs_table, layers=layers,
                                 scaling=scaling, overhead=overhead, gap_db=gap_db, bler_target=bler_target,
                                 bler_slope_db=bler_slope_db)
        self.radio = radio
        self.max_stale_s = float(max_stale_s)
        self._clock = clock
        self.last_reading: dict[str, float | int] | None = None
        self.last_error: str | None = None
        self.read_failures = 0
        self._cached: tuple[float, ChannelState] | None = None

    def _state_of(self, reading: dict[str, float | int]) -> ChannelState:
        table = self.params.mcs_table
        sinr_db = float(reading.get("sinr_db", math.nan))
        mcs = reading.get("mcs")
        if mcs is not None:
            if not 0 <= mcs <= max_mcs(table):
                raise RadioError(f"radio at {self.radio.endpoint} reported MCS {mcs}, outside "
                                 f"{table} 0..{max_mcs(table)} (check mcs_table)")
            p = self.params
            bler = 0.0 if math.isnan(sinr_db) else bler_of(sinr_db, mcs_entry(table, mcs), p.gap_db, p.bler_slope_db)
            return state_from_mcs(mcs, table, p, sinr_db, bler)
        if not math.isnan(sinr_db):
            return state_from_sinr(sinr_db, self.params)
        raise RadioError(f"radio at {self.radio.endpoint} reported neither mcs nor sinr_db "
                         f"(got {sorted(reading)}; check the fields mapping)")

    def channel_state(self, seq: int) -> ChannelState:
        """Read the radio now; RadioError (naming the endpoint) if it fails and no fresh-enough reading is cached."""
        try:
            reading = self.radio.read_state()
            state = self._state_of(reading)
        except RadioError as e:
            self.last_error = str(e)
            self.read_failures += 1
            if self._cached is not None and self.max_stale_s > 0:
                read_at_s, cached = self._cached
                if self._clock() - read_at_s <= self.max_stale_s:
                    return cached
            raise
        self.last_reading, self.last_error = reading, None
        self._cached = (self._clock(), state)
        return state

    def deliver(self, nbytes: int, state: ChannelState, received_ns: int, wait: bool = True) -> DeliveryReport:
        return undelayed_delivery(nbytes, state, received_ns)

    def set_mcs(self, mcs: int) -> None:
        """Ask the radio for MCS ``mcs`` of ``mcs_table``; ValueError if out of range, RadioError if it fails."""
        mcs_entry(self.params.mcs_table, mcs)
        self.radio.set_mcs(mcs)

    def close(self) -> None:
        self.radio.close()
