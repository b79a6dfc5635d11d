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


class PayloadLost(RuntimeError):
    """The link lost the payload (e.g. HARQ gave up); the round fails with this reason."""


class UnsupportedOperation(RuntimeError):
    """The backend cannot do this (e.g. set the MCS of an emulated trace)."""


@dataclass(frozen=True)
class DeliveryReport:
    """What the link did: air time of all attempts including the HARQ round trips between them (s),
    attempts, the delay applied (s: on loopback the air time plus one processing delay per delivery),
    and the RX wall clock (ns) at which the message counts as delivered."""

    airtime_s: float
    transmissions: int
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
