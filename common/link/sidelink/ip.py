"""``ip``: a plain network link between two hosts (or two radios' IP interfaces), no emulation.

The payload already crossed the real network when the RX reads it, so
:meth:`IpLink.deliver` adds no delay: it only records the air time the payload
would take at the configured nominal rate. :meth:`IpLink.channel_state` reports
that nominal link every round, so the TX's budget ``B_max = rate_bps *
deadline_s / 8`` follows the configured rate, not a measurement: set
``rate_bps`` to what the link really gives (e.g. the ``tc tbf`` rate of the
netns testbed), or describe it as an NR carrier with ``mcs`` + ``mcs_table`` +
bandwidth.
"""

from __future__ import annotations

import dataclasses

from common.link.channel import ChannelState, LinkParams, airtime_s, max_mcs, state_from_mcs
from common.link.sidelink.base import DeliveryReport, Sidelink, register_sidelink


def undelayed_delivery(nbytes: int, state: ChannelState, received_ns: int) -> DeliveryReport:
    """Report for a link whose air part is real: one transmission, air time at ``state.rate_bps``, no delay."""
    return DeliveryReport(airtime_s(nbytes, state), 1, 0.0, received_ns)


@register_sidelink
class IpLink(Sidelink):
    """Nominal, constant link over a real network.

    rate_bps:     link rate in bit/s reported to the TX; ``None`` (default) takes
                  the TS 38.306 rate of ``mcs`` on the NR carrier below.
    mcs:          MCS index labelling the state (and giving the rate when
                  ``rate_bps`` is None); default: the top MCS of ``mcs_table``.
    mcs_table:    "qam64" (default; its top MCS at 40 MHz / 30 kHz is ~170.1 Mb/s,
                  the netns testbed's default tbf rate) or "qam256" (~226.9 Mb/s).
    bandwidth_hz, scs_hz, layers, scaling, overhead: the NR carrier
                  (TS 38.306 4.1.2), defaults 40 MHz, 30 kHz, 1, 1.0, 0.14.

    The reported state has ``sinr_db = nan`` (nothing is measured) and BLER 0.
    """

    name = "ip"

    def __init__(self, rate_bps: float | None = None, mcs: int | None = None, mcs_table: str = "qam64",
                 bandwidth_hz: float = 40e6, scs_hz: float = 30e3, layers: int = 1,
                 scaling: float = 1.0, overhead: float = 0.14):
        params = LinkParams(bandwidth_hz=bandwidth_hz, scs_hz=scs_hz, mcs_table=mcs_table,
                            layers=layers, scaling=scaling, overhead=overhead)
        index = max_mcs(mcs_table) if mcs is None else mcs
        nominal = state_from_mcs(index, mcs_table, params)
        # ChannelState validates rate_bps (finite, > 0) and names a bad value.
        self.state = nominal if rate_bps is None else dataclasses.replace(nominal, rate_bps=rate_bps)

    def channel_state(self, seq: int) -> ChannelState:
        return self.state

    def deliver(self, nbytes: int, state: ChannelState, received_ns: int, wait: bool = True) -> DeliveryReport:
        return undelayed_delivery(nbytes, state, received_ns)
