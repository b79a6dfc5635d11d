"""The one channel interface: what one use of a channel does to one message.

Three channel models live in the code, each where its mode needs it:

- the sidelink (:mod:`common.link.sidelink`): a frame of ``n`` **bytes** in a
  round of channel state ``state`` (MCS, rate, BLER from
  :mod:`common.link.channel`), HARQ attempts, air time, lost or delivered
  intact (:class:`~common.link.sidelink.base.SidelinkChannel`; the emulator's
  own model is :meth:`~common.link.channel.ChannelEmulator.delivery`);
- fed-lora's uplink (:mod:`common.modes.fed_lora.uplink`): an update of ``n``
  **bits** at a device's planned power and bandwidth over its round's gain,
  upload time ``n / rate``, lost with the packet-error probability
  (:class:`~common.modes.fed_lora.uplink.UplinkChannel`);
- slf's K-ary discrete memoryless channel (:mod:`common.modes.slf.dmc`): ``n``
  **symbols**, each substituted with probability ``eps``
  (:class:`~common.modes.slf.dmc.KaryChannel`).

What they share, and all this interface asks: a channel object stands for one
use (one round's state, one device's power and gain, one seeded draw; the
constructor binds whatever that use depends on), and :meth:`Channel.transmit`
of a message of ``size`` units gives a :class:`Transmission`: its air time,
the attempts it took, and whether it was lost. The outcome depends on the
message's size only, never on its contents (all three are memoryless in the
contents), so a channel that changes contents returns the errors it drew as a
subclass of :class:`Transmission` that applies them (slf's DMC:
``KaryErrors.apply(sent)``); the sidelink and the uplink deliver what was sent
or nothing.

What is deliberately not shared:

- the *time base*: the sidelink's report also says when (RX wall clock, ns) a
  frame counts as delivered, because the RX holds its reply until then; the
  uplink's and the DMC's uses are not on a wall clock;
- *air time of the DMC*: it is a symbol channel without a rate; its uses take
  ``airtime_s = 0`` and the frame carrying the packed symbols (slf's
  SLF_SEMANTIC over the sidelink) has the air time;
- *what a loss does*: the sidelink's :meth:`~common.link.sidelink.Sidelink.deliver`
  raises ``PayloadLost`` (the RX daemon answers ERROR ``lost``), the uplink's
  loss is a recorded outcome of the base station's round; :meth:`Channel.transmit`
  reports a loss (``lost``, ``reason``) and raises nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Transmission:
    """What one use of a channel did to one message.

    ``airtime_s``: time the message occupied the channel, all attempts and the
    HARQ gaps between them, s (float >= 0; ``inf`` when the channel has no
    rate at all, e.g. an uplink at zero power). ``transmissions``: attempts
    (int >= 1). ``lost``: the message did not arrive; ``reason`` says why
    ("" when delivered).
    """

    airtime_s: float
    transmissions: int
    lost: bool = field(default=False, kw_only=True)
    reason: str = field(default="", kw_only=True)

    def __post_init__(self) -> None:
        a = self.airtime_s
        if isinstance(a, bool) or not isinstance(a, (int, float)) or math.isnan(a) or a < 0:
            raise ValueError(f"airtime_s must be a number >= 0, got {a!r}")
        t = self.transmissions
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"transmissions must be an int >= 1, got {t!r}")
        if not isinstance(self.lost, bool):
            raise ValueError(f"lost must be a bool, got {self.lost!r}")


@runtime_checkable
class Channel(Protocol):
    """One use of a channel (see the module docstring).

    ``unit``: what ``size`` counts, ``"byte"`` (the sidelink), ``"bit"`` (fed-lora's
    uplink) or ``"symbol"`` (slf's DMC).
    """

    unit: ClassVar[str]

    def transmit(self, size: int) -> Transmission:
        """Send a message of ``size`` units (int >= 0) over this use; ValueError for a bad size.

        The contract every implementation keeps (``tests/test_channel_interface.py``):
        ``airtime_s`` is >= 0 and does not decrease with ``size`` for the same
        draws; an error-free channel delivers in one attempt and unchanged; the
        same seed gives the same transmission.
        """
        ...


def check_size(size: int, name: str = "size") -> int:
    """``size`` as a Python int; ValueError naming ``name`` unless it is an int >= 0 (numpy integers allowed)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
        raise ValueError(f"{name} must be an int >= 0, got {size!r}")
    return int(size)
