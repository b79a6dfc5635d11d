"""What a mode is: the part of an alignment scheme that differs from the others.

A mode bundles its codec, its TX half (what a round sends and how it uses
the channel feedback), its RX half (what it does with what arrives), its
message types and its per-round result fields. The daemons (``tx_node``,
``rx_node``) own everything modes share: sessions, the handshake, CHANNEL
feedback, retries and the replay record, transport and CURVE, the sidelink,
the results log. They never test which mode they serve: the RX calls the
session's :class:`RxHalf` handler registered for a message's type, the TX
calls its :class:`TxHalf` once per round.

A mode registers itself with :func:`register_mode`; built-in modes are
imported on first use (:data:`BUILTIN_MODES`), so a mode's heavy
dependencies load only where it runs. How to add one: ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

from common.link.channel.state import ChannelState
from common.link.sidelink.base import DeliveryReport, PayloadLost, SidelinkChannel
from common.results.log import RoundRecord

# mode name -> module that registers it when imported: the one registry line of a mode (its campaigns, if
# any, are found by name: semalign/campaigns/<name with _ for ->/, see semalign/campaigns/__init__.py)
BUILTIN_MODES = {
    "fed-lora": "common.modes.fed_lora.mode",
    "pca-lora": "common.modes.pca_lora.mode",
    "slf": "common.modes.slf.mode",
}


DEFAULT_MODE = "pca-lora"  # the mode the daemons and the campaigns run when none is named


class RoundError(Exception):
    """A round the RX refuses or cannot finish; answered with ERROR ``code`` and recorded as failed."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class RoundFailed(RuntimeError):
    """A TX round that cannot go on; the message is recorded as the round's error."""


@dataclass
class RoundContext:
    """What an RX handler sees of the round besides the message.

    ``state``: the channel state announced in CHANNEL for this round.
    ``nbytes``: size of the message's frame. ``received_ns``: RX wall clock at
    receipt. ``session``: the mode's own per-session store (e.g. SLF's
    installed decoder), kept while the session lives. ``owner``: who the
    session is bound to (its TX's CURVE key, z85; on a plain socket
    ``credential:<digest>`` of its HELLO credential; None for a plain HELLO
    without one): state a mode keeps across sessions is keyed by it.
    """

    session_id: int
    seq: int
    state: ChannelState
    link: Any  # common.link.sidelink.Sidelink
    nbytes: int
    received_ns: int
    rx_pid: int
    session: dict = field(default_factory=dict)
    owner: str | None = None

    def deliver(self, nbytes: int) -> DeliveryReport:
        """The round's link applied to ``nbytes`` of this message: one use of the sidelink as a
        :class:`~common.link.model.Channel` (:class:`~common.link.sidelink.SidelinkChannel`), which
        never waits (the handler holds its reply until the report's ``delivered_ns``); raises
        :class:`~common.link.sidelink.PayloadLost` (the daemon answers ERROR ``lost``) when the link lost it."""
        sent = SidelinkChannel(self.link, self.state, self.received_ns).transmit(nbytes)
        if sent.lost:
            raise PayloadLost(sent.reason, sent)
        return sent


@dataclass(frozen=True)
class Reply:
    """An RX handler's answer. ``final``: the round ends here (the RX then sends the next CHANNEL).

    ``not_before_ns``: RX wall clock before which the reply must not leave (an
    emulated air time); the daemon holds it and serves other peers meanwhile.
    """

    message: Any
    final: bool = True
    not_before_ns: int = 0


Handler = Callable[[Any, RoundContext], Reply]


class RxHalf(ABC):
    """The RX side of a mode: accepts sessions and answers the mode's requests."""

    mode: ClassVar[str]
    fingerprint: str  # hex digest of what both ends must share
    fingerprint_hint: ClassVar[str] = "both nodes must load the same artifacts"  # said when they differ

    @abstractmethod
    def hello_params(self) -> dict:
        """The RX's session parameters, sent back in HELLO."""

    # Whether the daemon keeps this mode's ERROR replies in its replay record (a repeated request is
    # then answered with the recorded ERROR). A mode whose RX keeps its own round state and answers a
    # repeat consistently sets False, so an early or wrong request never poisons a later valid one.
    replay_errors: bool = True

    # The HELLO params keys the mode takes from a TX (None: any). The daemon refuses a HELLO with any
    # other key (ERROR ``params``, naming it) before :meth:`check_hello` sees it.
    hello_param_keys: frozenset[str] | None = None

    @abstractmethod
    def check_hello(self, params: dict) -> str | None:
        """Why a TX's HELLO ``params`` cannot open a session (None: they can)."""

    def check_hello_owner(self, params: dict, owner: str | None) -> tuple[str, str] | None:
        """``(code, message)`` when the sender's authenticated key ``owner`` (CURVE public key, z85;
        None on a plain socket) may not open a session with ``params``, else None (the default: any key
        the allow-list admits may). Called after :meth:`check_hello` accepted ``params``."""
        return None

    @abstractmethod
    def handlers(self) -> dict[str, Handler]:
        """Message TYPE -> handler for the requests this mode accepts."""

    def warm_up(self) -> None:
        """Pay one-time costs before serving (optional)."""

    def share_state(self, directory) -> None:
        """Keep the state that spans sessions in ``directory`` (a :class:`pathlib.Path`), which the RX's
        worker processes share (``semalign rx --workers W``), so a returning TX finds it whichever
        worker serves it (optional; state kept in memory is then per worker)."""

    def close(self) -> None:
        """Flush and release what the half holds (optional)."""


class RoundIO(ABC):
    """The TX daemon's services to a :class:`TxHalf` during one round.

    After an exchange, ``sent_ns`` is the TX wall clock of the first send of
    its first message and ``replied_ns`` when its last reply arrived.
    """

    session_id: int
    clock_offset_ns: int  # RX clock minus TX clock, ns
    sent_ns: int = 0
    replied_ns: int = 0

    @abstractmethod
    def exchange_all(self, msgs: Iterable, reply_types: list[tuple[str, ...]]) -> list:
        """Send ``msgs`` (of this round's seq) back to back, then return one reply per message, in order
        (reply ``i`` of one of ``reply_types[i]``): the RX may work on the first while the next are on
        their way. ``msgs`` may be a generator: each message is sent as soon as it is built.

        Re-sends them after a lost reply; raises :class:`RoundFailed` naming the
        RX's ERROR or why no reply came.
        """

    def exchange(self, msg: Any, reply_types: tuple[str, ...]) -> Any:
        """Send ``msg`` and return its reply of one of ``reply_types`` (:meth:`exchange_all` of one)."""
        return self.exchange_all([msg], [reply_types])[0]


class TxHalf(ABC):
    """The TX side of a mode: opens sessions with its parameters and runs rounds."""

    mode: ClassVar[str]
    fingerprint: str

    @abstractmethod
    def hello_params(self) -> dict:
        """The TX's session parameters, sent in HELLO."""

    def check_hello_reply(self, params: dict) -> str | None:
        """Why the RX's HELLO ``params`` do not suit this TX (None: they do)."""
        return None

    @abstractmethod
    def config_record(self) -> dict:
        """Mode settings written to ``results.json``'s ``config``."""

    @abstractmethod
    def run_round(self, seq: int, channel, rec: RoundRecord, io: RoundIO) -> None:
        """Run round ``seq`` given its CHANNEL feedback; fill ``rec`` (status ``ok`` on success).

        Raise :class:`RoundFailed` for a failure the record should name.
        """


class Mode(ABC):
    """A registered alignment scheme: builds its halves from the daemons' options."""

    name: ClassVar[str]
    summary: ClassVar[str]
    rx_options: ClassVar[list] = []  # common.options.Option specs the RX half reads from opts
    # with RX workers (semalign rx --workers W): all sessions of this mode on one worker (its RX state spans
    # sessions with one owner, e.g. a federation), and the rx_options naming on-disk state with one writer
    # (given to worker 0 only; the other workers keep that state in memory)
    rx_one_owner: ClassVar[bool] = False
    rx_one_writer_options: ClassVar[tuple] = ()
    tx_options: ClassVar[list] = []  # ... and the TX half

    @classmethod
    @abstractmethod
    def build_rx(cls, opts: dict) -> RxHalf:
        """The RX half from the RX's options (``opts``: option name -> value, None = default)."""

    @classmethod
    @abstractmethod
    def build_tx(cls, opts: dict) -> TxHalf:
        """The TX half from the TX's options."""


MODES: dict[str, type[Mode]] = {}


def register_mode(cls: type[Mode]) -> type[Mode]:
    """Make ``cls`` available under ``cls.name`` (usable as a class decorator)."""
    known = MODES.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(f"mode {cls.name!r} is already registered by {known.__module__}")
    MODES[cls.name] = cls
    return cls


def mode_names() -> list[str]:
    """Every mode a node can be started with."""
    return sorted(set(BUILTIN_MODES) | set(MODES))


def get_mode(name: str) -> type[Mode]:
    """The mode called ``name``; ValueError lists the known ones."""
    if name not in MODES and name in BUILTIN_MODES:
        importlib.import_module(BUILTIN_MODES[name])
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; known modes: {', '.join(mode_names())}")
    return MODES[name]
