"""The sidelink interface and its name -> backend registry.

A backend says what channel a round sees (:meth:`Sidelink.channel_state`,
reported to the TX in CHANNEL) and what the link does to a payload that
arrived over the transport (:meth:`Sidelink.deliver`: air time, HARQ, loss).
Backends register by name; ``create_sidelink(name, **options)`` builds one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar

from common.link.channel import ChannelState
from common.link.model import Transmission


class PayloadLost(RuntimeError):
    """The link lost the payload (e.g. HARQ gave up); the round fails with this reason.

    ``report``: the lost transmission's :class:`DeliveryReport` (``lost`` True), where the backend has one.
    """

    def __init__(self, message: str, report: DeliveryReport | None = None):
        super().__init__(message)
        self.report = report


class UnsupportedOperation(RuntimeError):
    """The backend cannot do this (e.g. set the MCS of an emulated trace)."""


@dataclass(frozen=True)
class DeliveryReport(Transmission):
    """What the link did: a :class:`~common.link.model.Transmission` (``airtime_s``: all attempts including
    the HARQ round trips between them, s; ``transmissions``: attempts; ``lost``, ``reason``), the delay
    applied (``delay_s``, s: on loopback the air time plus one processing delay per delivery), and the RX
    wall clock (``delivered_ns``, ns) at which the message counts as delivered."""

    delay_s: float
    delivered_ns: int


class Sidelink(ABC):
    """One RX-side link. Implementations must be cheap to query once per round."""

    name: ClassVar[str]

    @abstractmethod
    def channel_state(self, seq: int) -> ChannelState:
        """Channel for round ``seq`` (measured, read from a radio, or emulated)."""

    @abstractmethod
    def deliver(self, nbytes: int, state: ChannelState, received_ns: int, wait: bool = True) -> DeliveryReport:
        """Apply the link to a payload of ``nbytes`` received at ``received_ns`` (wall clock).

        With ``wait``, returns once the payload would have been delivered;
        without, returns at once and the report's ``delivered_ns`` says when
        (the caller holds its reply until then). Raises :class:`PayloadLost`
        if the link lost it.
        """

    def set_mcs(self, mcs: int) -> None:
        raise UnsupportedOperation(f"the {self.name!r} sidelink cannot set the MCS")

    def close(self) -> None:
        """Release whatever the backend holds."""


@dataclass(frozen=True)
class SidelinkChannel:
    """A sidelink as a :class:`~common.link.model.Channel` (``unit`` "byte"): one frame of round state
    ``state`` received at ``received_ns`` (RX wall clock, ns).

    :meth:`transmit` is the link's :meth:`Sidelink.deliver` without waiting; a lost frame is reported
    (the :class:`PayloadLost`'s report), not raised. A ``PayloadLost`` without a report (a backend that
    cannot say what the lost frame cost) is raised as it is.
    """

    link: Sidelink
    state: ChannelState
    received_ns: int
    unit: ClassVar[str] = "byte"

    def transmit(self, size: int) -> DeliveryReport:
        try:
            return self.link.deliver(size, self.state, self.received_ns, wait=False)
        except PayloadLost as e:
            if e.report is None:
                raise
            return e.report


SIDELINKS: dict[str, Callable[..., Sidelink]] = {}


def register_sidelink(cls):
    SIDELINKS[cls.name] = cls
    return cls


def create_sidelink(name: str, **options) -> Sidelink:
    """Build the backend ``name``; ValueError names unknown backends and options."""
    try:
        cls = SIDELINKS[name]
    except KeyError:
        raise ValueError(f"unknown sidelink backend {name!r}; choose one of {sorted(SIDELINKS)}") from None
    try:
        return cls(**options)
    except TypeError as e:
        raise ValueError(f"sidelink {name!r}: bad options {sorted(options)} ({e})") from e
