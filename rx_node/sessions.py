"""What the RX daemon keeps per session and counts: a :class:`Session` (bound to the TX key or credential
that opened it, not to a connection) and the daemon's :class:`RxStats`.

Used by :class:`~rx_node.daemon.RxNode` (which opens and evicts sessions) and summed by the multi-process
front end (:mod:`rx_node.workers`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

CREDENTIAL_BYTES = (16, 64)  # a HELLO's credential: empty, or this many bytes (lowest, highest)
PEERS_PER_SESSION = 8  # connections remembered per session (a TX that reconnects often: the latest ones)


def credential_owner(credential: bytes) -> str:
    """The owner a plain-socket session is bound to: a digest of the TX's credential (never logged itself)."""
    return "credential:" + hashlib.sha256(credential).hexdigest()[:32]


@dataclass
class Session:
    """One session, bound to its owner, not to a connection.

    ``owner``: the CURVE key (z85) that opened it; on a plain socket
    :func:`credential_owner` of the HELLO's credential, or None for a HELLO
    without one (bound to nothing). ``peers``: the connections that said
    HELLO for it, most recent last; on a plain socket the only ones whose
    requests it takes.
    """

    session_id: int
    mode: str
    owner: str | None
    rounds: int = 0
    announced: dict = field(default_factory=dict)  # seq -> ChannelState sent in CHANNEL
    store: dict = field(default_factory=dict)  # the mode's per-session state
    peers: list = field(default_factory=list)

    def attach(self, peer: bytes) -> None:
        if peer in self.peers:
            self.peers.remove(peer)
        self.peers.append(peer)
        del self.peers[:-PEERS_PER_SESSION]


@dataclass
class RxStats:
    """Counters since start: rounds answered with the mode's reply / with ERROR."""

    ok: int = 0
    failed: int = 0
    errors_by_code: dict = field(default_factory=dict)
    replayed: int = 0  # repeated requests answered from the record (not counted in rounds)
    replies_dropped: dict = field(default_factory=dict)  # reason -> replies a peer could not take

    @property
    def rounds(self) -> int:
        return self.ok + self.failed
