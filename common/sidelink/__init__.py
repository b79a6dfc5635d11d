"""Sidelink backends: the link under the protocol, seen from the RX.

Every backend carries the protocol's bytes over ZeroMQ/TCP (loopback, a host's
IP interface, or a radio's IP interface). What differs is where the channel
state comes from and what the link does to a payload:
:meth:`Sidelink.channel_state` is reported to the TX in CHANNEL, and
:meth:`Sidelink.deliver` applies air time, HARQ and loss where the link is
emulated. ``create_sidelink(name, **options)`` builds a registered backend.
"""

from common.sidelink.base import (
    SIDELINKS,
    DeliveryReport,
    PayloadLost,
    Sidelink,
    UnsupportedOperation,
    create_sidelink,
    register_sidelink,
)
from common.sidelink.loopback import LoopbackLink

__all__ = ["SIDELINKS", "DeliveryReport", "LoopbackLink", "PayloadLost", "Sidelink",
           "UnsupportedOperation", "create_sidelink", "register_sidelink"]
