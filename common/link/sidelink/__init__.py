"""Sidelink backends: the link under the protocol, seen from the RX.

Every backend carries the protocol's bytes over ZeroMQ/TCP (loopback, a host's
IP interface, or a radio's IP interface). What differs is where the channel
state comes from and what the link does to a payload:
:meth:`Sidelink.channel_state` is reported to the TX in CHANNEL, and
:meth:`Sidelink.deliver` applies air time, HARQ and loss where the link is
emulated. ``create_sidelink(name, **options)`` builds a registered backend:
``loopback`` (channel emulator), ``ip`` (real network, nominal rate),
``sirius`` (SIRIUS 5G-V2X radios behind a :class:`RadioControl` adapter).
"""

from common.link.sidelink.base import (
    SIDELINKS,
    DeliveryReport,
    PayloadLost,
    Sidelink,
    SidelinkChannel,
    UnsupportedOperation,
    create_sidelink,
    register_sidelink,
)
from common.link.sidelink.ip import IpLink
from common.link.sidelink.loopback import LoopbackLink
from common.link.sidelink.radio import (
    RADIO_CONTROLS,
    READING_FIELDS,
    CommandRadioControl,
    HttpRadioControl,
    RadioControl,
    RadioError,
    create_radio_control,
)
from common.link.sidelink.sirius import SiriusLink

__all__ = ["RADIO_CONTROLS", "READING_FIELDS", "SIDELINKS", "CommandRadioControl", "DeliveryReport",
           "HttpRadioControl", "IpLink", "LoopbackLink", "PayloadLost", "RadioControl", "RadioError",
           "Sidelink", "SidelinkChannel", "SiriusLink", "UnsupportedOperation", "create_radio_control", "create_sidelink",
           "register_sidelink"]
