"""The RX's record of recent replies, so a repeated request is answered, not processed again.

A TX re-sends a request when its reply was lost (timeout, dropped
connection, RX restart). Keyed by session — ``(owner key, session_id)``, not
the ZeroMQ peer, which changes when the TX rebuilds its socket — and by
request — ``(seq, message type)`` — the record holds the encoded reply (and
whether it ended the round) of the last ``per_session`` requests of the last
``max_sessions`` sessions (least recently used sessions are dropped first).

Its memory is bounded in bytes too, per owner and in all: the replies one
owner's sessions keep total at most ``max_bytes_per_owner`` (when a new one
would pass it, that owner's oldest replies go first: one key's flood of large
replies, e.g. slf decoder downloads, evicts only its own), and all replies at
most ``max_bytes`` (then the oldest of any owner go). A reply larger than the
owner's budget is not kept. A re-sent request whose reply was evicted is
handled again, as a first one is.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_BYTES = 256 * 2**20
MAX_BYTES_PER_OWNER = 16 * 2**20  # e.g. 95 of slf's 171 kB decoder downloads


class ReplayCache:
    """Bounded ``session -> request -> reply`` map. ``session``: ``(owner, session_id)`` (the owner is what
    the byte budget is counted by); ``request``: any hashable; ``reply``: any value, of ``nbytes`` bytes."""

    def __init__(self, per_session: int = 64, max_sessions: int = 256, max_bytes: int = MAX_BYTES,
                 max_bytes_per_owner: int = MAX_BYTES_PER_OWNER):
        if min(per_session, max_sessions, max_bytes, max_bytes_per_owner) < 1:
            raise ValueError(f"per_session={per_session}, max_sessions={max_sessions}, max_bytes={max_bytes} and "
                             f"max_bytes_per_owner={max_bytes_per_owner} must be >= 1")
        self.per_session = per_session
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.max_bytes_per_owner = max_bytes_per_owner
        self._sessions: OrderedDict = OrderedDict()  # session -> OrderedDict(request -> (reply, nbytes))
        self.nbytes = 0
        self._owner_bytes: dict = {}
        self.evicted_bytes = 0  # replies dropped for the byte budgets since the daemon last looked

    def get(self, session, request):
        rounds = self._sessions.get(session)
        if rounds is None:
            return None
        self._sessions.move_to_end(session)
        got = rounds.get(request)
        return None if got is None else got[0]

    def put(self, session, request, reply, nbytes: int = 0) -> None:
        owner = session[0]
        if nbytes > self.max_bytes_per_owner:
            return  # never kept: a repeat is handled again
        rounds = self._sessions.get(session)
        if rounds is None:
            rounds = self._sessions[session] = OrderedDict()
            while len(self._sessions) > self.max_sessions:
                self._drop_session(next(iter(self._sessions)))
        self._sessions.move_to_end(session)
        if request in rounds:  # a reply recorded again replaces the old one
            old = rounds.pop(request)[1]
            self.nbytes -= old
            self._owner_bytes[owner] -= old
        rounds[request] = (reply, nbytes)
        self.nbytes += nbytes
        self._owner_bytes[owner] = self._owner_bytes.get(owner, 0) + nbytes
        while len(rounds) > self.per_session:
            self._drop(session, next(iter(rounds)))
        while self._owner_bytes.get(owner, 0) > self.max_bytes_per_owner:  # this owner's oldest first
            oldest = next(s for s in self._sessions if s[0] == owner)
            self._drop(oldest, next(iter(self._sessions[oldest])), evicted=True)
        while self.nbytes > self.max_bytes:  # then anyone's oldest
            oldest = next(iter(self._sessions))
            self._drop(oldest, next(iter(self._sessions[oldest])), evicted=True)

    def _drop(self, session, request, evicted: bool = False) -> None:
        rounds = self._sessions[session]
        _, n = rounds.pop(request)
        self.nbytes -= n
        self._owner_bytes[session[0]] -= n
        if evicted:
            self.evicted_bytes += n
        if not rounds:
            del self._sessions[session]
        if not self._owner_bytes[session[0]]:
            del self._owner_bytes[session[0]]

    def _drop_session(self, session) -> None:
        for request in list(self._sessions[session]):
            self._drop(session, request)

    def owner_bytes(self, owner) -> int:
        return self._owner_bytes.get(owner, 0)

    def __len__(self) -> int:
        return sum(len(r) for r in self._sessions.values())
