"""The RX's record of recent replies, so a repeated PAYLOAD is answered, not processed again.

A TX re-sends round ``seq`` when its reply was lost (timeout, dropped
connection, RX restart). Keyed by ``(session_id, seq)`` — not by the ZeroMQ
peer, which changes when the TX rebuilds its socket — the record holds the
encoded RESULT or ERROR frame of the last ``per_session`` rounds of the last
``max_sessions`` sessions (least recently used sessions are dropped first),
so its memory is bounded however long the daemon runs.
"""

from __future__ import annotations

from collections import OrderedDict


class ReplayCache:
    """Bounded ``(session_id, seq) -> reply frame`` map."""

    def __init__(self, per_session: int = 64, max_sessions: int = 256):
        if per_session < 1 or max_sessions < 1:
            raise ValueError(f"per_session={per_session} and max_sessions={max_sessions} must be >= 1")
        self.per_session = per_session
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[int, OrderedDict[int, bytes]] = OrderedDict()

    def get(self, session_id: int, seq: int) -> bytes | None:
        rounds = self._sessions.get(session_id)
        if rounds is None:
            return None
        self._sessions.move_to_end(session_id)
        return rounds.get(seq)

    def put(self, session_id: int, seq: int, frame: bytes) -> None:
        rounds = self._sessions.get(session_id)
        if rounds is None:
            rounds = self._sessions[session_id] = OrderedDict()
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(session_id)
        rounds[seq] = frame
        rounds.move_to_end(seq)
        while len(rounds) > self.per_session:
            rounds.popitem(last=False)

    def __len__(self) -> int:
        return sum(len(r) for r in self._sessions.values())
