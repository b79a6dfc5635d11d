"""The RX's record of recent replies, so a repeated request is answered, not processed again.

A TX re-sends a request when its reply was lost (timeout, dropped
connection, RX restart). Keyed by session — ``(owner key, session_id)``, not
the ZeroMQ peer, which changes when the TX rebuilds its socket — and by
request — ``(seq, message type)`` — the record holds the encoded reply (and
whether it ended the round) of the last ``per_session`` requests of the last
``max_sessions`` sessions (least recently used sessions are dropped first),
so its memory is bounded however long the daemon runs.
"""

from __future__ import annotations

from collections import OrderedDict


class ReplayCache:
    """Bounded ``session -> request -> reply`` map (keys: any hashable values)."""

    def __init__(self, per_session: int = 64, max_sessions: int = 256):
        if per_session < 1 or max_sessions < 1:
            raise ValueError(f"per_session={per_session} and max_sessions={max_sessions} must be >= 1")
        self.per_session = per_session
        self.max_sessions = max_sessions
        self._sessions: OrderedDict = OrderedDict()

    def get(self, session, request):
        rounds = self._sessions.get(session)
        if rounds is None:
            return None
        self._sessions.move_to_end(session)
        return rounds.get(request)

    def put(self, session, request, reply) -> None:
        rounds = self._sessions.get(session)
        if rounds is None:
            rounds = self._sessions[session] = OrderedDict()
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(session)
        rounds[request] = reply
        rounds.move_to_end(request)
        while len(rounds) > self.per_session:
            rounds.popitem(last=False)

    def __len__(self) -> int:
        return sum(len(r) for r in self._sessions.values())
