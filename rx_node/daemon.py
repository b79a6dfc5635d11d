"""The RX daemon: sessions, mode dispatch, channel feedback, replies.

:meth:`RxNode.handle` turns one incoming frame into reply frames without
touching a socket (tests drive it directly); :func:`rx_node.serving.serve` is the socket loop,
:mod:`rx_node.sessions` what is kept per session.
The daemon is mode-agnostic: a HELLO names the session's mode, and every
later request goes to the handler that mode's :class:`~common.modes.base.RxHalf`
registered for its message type. Every request ends in the mode's reply or an
ERROR naming the problem; a round-final reply is followed by the CHANNEL
feedback for the next round; the daemon keeps serving either way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import traceback
from collections import Counter, OrderedDict

from common.learn.process_tuning import release_freed_memory
from common.link.sidelink import PayloadLost, Sidelink
from common.modes.base import RoundContext, RoundError, RxHalf
from common.net.ratelimit import rate_limit
from common.wire.protocol import (
    MAX_SEQ,
    MAX_SESSION_ID,
    Channel,
    DecodeLimits,
    Error,
    Hello,
    ProtocolError,
    decode,
    encode,
    request_digest,
    unpack,
)
from rx_node.replay import ReplayCache
from rx_node.sessions import CREDENTIAL_BYTES, RxStats, Session, credential_owner

log = logging.getLogger("semalign.rx")
PER_PEER = {"per_peer": True}  # log lines a peer can cause over and over: rate-limited
rate_limit(log, select=lambda r: getattr(r, "per_peer", False))
RELEASE_AFTER_BYTES = 8 * 2**20  # freed memory goes back to the system after this much (a message, replies)


class RxNode:
    """Serves the modes in ``halves`` (mode name -> RX half) over one sidelink."""

    def __init__(self, halves: dict[str, RxHalf], link: Sidelink, limits: DecodeLimits = DecodeLimits()):
        if not halves:
            raise ValueError("an RX needs at least one mode to serve")
        self.halves = halves
        self.link = link
        self.limits = limits
        self.sessions: OrderedDict[int, Session] = OrderedDict()  # session id -> session, idlest first
        self.stats = RxStats()
        self.pid = os.getpid()
        self.replay = ReplayCache()
        self.max_sessions = 1024
        self.max_sessions_per_owner = 64  # sessions one key (or credential) may hold at once
        self._last_sid: OrderedDict[bytes, int] = OrderedDict()  # peer -> its last session (ERRORs of unreadable frames)
        self._handlers = {name: half.handlers() for name, half in halves.items()}
        self._any_handlers = {t: h for hs in self._handlers.values() for t, h in hs.items()}

    def close(self) -> None:
        """Flush and release what the modes hold, then the link; idempotent."""
        halves, self.halves = self.halves, {}
        for half in halves.values():
            try:
                half.close()
            except Exception:
                log.error("closing mode %s failed:\n%s", half.mode, traceback.format_exc())
        self.link.close()

    def warm_up(self) -> None:
        """Let every mode pay its start-up costs before the first real round."""
        for half in self.halves.values():
            half.warm_up()

    # ------------------------------------------------------------ dispatch

    def handle(self, peer: bytes, frames: list[bytes], received_ns: int | None = None,
               owner: str | None = None, n_frames: int | None = None) -> list[bytes]:
        """Reply frames for one incoming message from ``peer``; never raises (last resort: ERROR internal).

        ``frames``: bytes or buffers. ``owner``: the sender's authenticated
        identity (its CURVE key), which a session is bound to: another key
        cannot open, use or read a session it did not open. ``n_frames``: the
        frames the message had where the socket kept none of a message of
        several (:meth:`~common.net.transport.RxSocket.recv_frames`); None:
        ``len(frames)``.
        """
        return self.handle_timed(peer, frames, received_ns, owner, n_frames)[0]

    def handle_timed(self, peer: bytes, frames: list[bytes], received_ns: int | None = None,
                     owner: str | None = None, n_frames: int | None = None) -> tuple[list[bytes], int]:
        """:meth:`handle`, plus the RX wall clock (ns) before which the replies must not leave (0: now)."""
        self._hold_ns = 0
        try:
            return self._handle(peer, frames, received_ns, owner, n_frames), self._hold_ns
        except Exception as e:  # a bug must not take the daemon down; the sender learns what happened
            log.error("unhandled error on a message from %s:\n%s", peer.hex(), traceback.format_exc())
            return [encode(Error(self._last_sid.get(peer, 0), -1, "internal", f"{type(e).__name__}: {e}"))], 0

    def _serves(self, session: Session | None, peer: bytes, owner: str | None) -> bool:
        """Whether ``session`` takes requests from this sender: under CURVE from any connection of the key
        that opened it; on a plain socket from a connection that said HELLO for it."""
        if session is None:
            return False
        if owner is not None:
            return session.owner == owner
        return peer in session.peers

    def drop_peer(self, peer: bytes) -> None:
        """The connection ``peer`` is gone: detach it from its sessions (which stay, for the TX to continue)."""
        for session in self.sessions.values():
            if peer in session.peers:
                session.peers.remove(peer)
        self._last_sid.pop(peer, None)

    def _handle(self, peer: bytes, frames: list[bytes], received_ns: int | None, owner: str | None,
                n_frames: int | None) -> list[bytes]:
        received_ns = received_ns or time.time_ns()
        sid = self._last_sid.get(peer, 0)
        n_frames = len(frames) if n_frames is None else n_frames
        if n_frames != 1:
            return [self._error(sid, -1, "bad_message", f"expected 1 frame, got {n_frames}")]
        try:
            msg = decode(frames[0], self.limits)
        except ProtocolError as e:
            ids = self._readable_ids(frames[0])
            if ids is None:  # not a request whose session and round can be read: seq -1, not round-final
                return [self._error(sid, -1, e.code, str(e))]
            return self._round_error(peer, owner, *ids, e.code, str(e))
        if isinstance(msg, Hello):
            return self._on_hello(peer, msg, received_ns, owner)
        session = self.sessions.get(getattr(msg, "session_id", None))
        if not self._serves(session, peer, owner):
            session = None
        seq = getattr(msg, "seq", 0)
        if not 0 <= seq <= MAX_SEQ:  # CHANNEL seq + 1 must fit: 2**63 - 1 decodes (replies carry it), never a request
            return [self._error(msg.session_id, -1, "bad_message", f"seq {seq} outside [0, {MAX_SEQ}]")]
        accepted = self._handlers[session.mode] if session else self._any_handlers
        handler = accepted.get(msg.TYPE)
        if handler is None:
            where = f"mode {session.mode}" if session else "the RX"
            text = f"{where} does not accept {msg.TYPE} messages"
            if hasattr(msg, "seq"):
                return self._round_error(peer, owner, msg.session_id, seq, "unexpected", text)
            return [self._error(sid, -1, "unexpected", text)]
        if session is None:
            whose = "this CURVE key" if owner is not None else "this connection"
            return [self._error(msg.session_id, msg.seq, "no_session",
                                f"no open session {msg.session_id} for {whose}; send HELLO first")]
        self.sessions.move_to_end(session.session_id)  # most recently active last: idle ones are evicted first
        if peer not in session.peers:
            session.attach(peer)  # under CURVE a new connection of the key continues the session
        self._note_peer(peer, session.session_id)
        reply, final, hold_ns = self._answer(session, msg, handler, frames[0], received_ns)
        self._hold_ns = hold_ns
        replies = [reply]
        if final and self.sessions.get(session.session_id) is session:
            replies.append(self._channel(session, msg.seq + 1))
        return replies

    def _readable_ids(self, frame: bytes) -> tuple[int, int] | None:
        """``(session_id, seq)`` of a refused request frame when they can be read: a msgpack map (within the
        RX's limits) that is not a HELLO, with both ints in range. None otherwise."""
        if len(frame) > self.limits.max_message_bytes:
            return None  # not read at all
        try:
            body = unpack(frame, self.limits, strict_map_key=False)
        except ProtocolError:
            return None
        if not isinstance(body, dict) or body.get("type") == Hello.TYPE:
            return None
        sid, seq = body.get("session_id"), body.get("seq")
        if type(sid) is not int or type(seq) is not int or not 0 <= sid <= MAX_SESSION_ID or not 0 <= seq <= MAX_SEQ:
            return None
        return sid, seq

    def _round_error(self, peer: bytes, owner: str | None, sid: int, seq: int, code: str, text: str) -> list[bytes]:
        """ERROR for a readable request of round ``seq`` the RX refused before its mode saw it: it carries the
        seq, and on a session the sender holds it is round-final (CHANNEL ``seq + 1`` follows)."""
        replies = [self._error(sid, seq, code, text)]
        session = self.sessions.get(sid)
        if self._serves(session, peer, owner):
            replies.append(self._channel(session, seq + 1))
        return replies

    def _note_peer(self, peer: bytes, sid: int) -> None:
        self._last_sid[peer] = sid
        self._last_sid.move_to_end(peer)
        while len(self._last_sid) > 4 * self.max_sessions:
            self._last_sid.popitem(last=False)

    def _answer(self, session: Session, msg, handler, frame: bytes, received_ns: int) -> tuple[bytes, bool, int]:
        """A repeated request gets the recorded reply; a new one is handled and recorded.

        A request is ``(seq, type)`` plus the fields its class lists in
        ``REPLAY_FIELDS`` (e.g. a poll's number, so each poll is answered afresh).

        The record is keyed by the session's owner too, so a key that did not
        open a session never reads its replies.
        """
        key = (msg.seq, msg.TYPE, *(getattr(msg, f) for f in getattr(msg, "REPLAY_FIELDS", ())))
        cached = self.replay.get((session.owner, session.session_id), key)
        if cached is not None:
            self.stats.replayed += 1
            log.info("%s seq %d of session %d repeated: answering from the record", msg.TYPE, msg.seq,
                     session.session_id)
            return cached[0], cached[1], 0
        answer, is_error = self._run(session, msg, handler, frame, received_ns)
        if not is_error or getattr(self.halves.get(session.mode), "replay_errors", True):  # a mode may keep its ERRORs out
            self.replay.put((session.owner, session.session_id), key, answer, len(answer[0]))
            if self.replay.evicted_bytes > RELEASE_AFTER_BYTES:  # large replies dropped: give the memory back
                self.replay.evicted_bytes = 0
                release_freed_memory()
        return answer

    def _run(self, session: Session, msg, handler, frame: bytes, received_ns: int) -> tuple[tuple[bytes, bool, int], bool]:
        """The mode's answer: ((reply frame, ends the round, not-before time in ns), it is an ERROR)."""
        sid, seq = session.session_id, msg.seq
        try:
            state = session.announced.get(seq) or self.link.channel_state(seq)
            ctx = RoundContext(sid, seq, state, self.link, len(frame), received_ns, self.pid, session.store,
                               session.owner)
            reply = handler(msg, ctx)
        except PayloadLost as e:
            return (self._error(sid, seq, "lost", str(e)), True, 0), True
        except (RoundError, ProtocolError) as e:
            return (self._error(sid, seq, e.code, str(e)), True, 0), True
        except Exception as e:  # the daemon must keep serving; the round is recorded as failed
            log.error("%s round %d failed:\n%s", session.mode, seq, traceback.format_exc())
            return (self._error(sid, seq, "internal", f"{type(e).__name__}: {e}"), True, 0), True
        if reply.final:
            session.rounds += 1
            self.stats.ok += 1
        message = reply.message
        if "request_digest" in getattr(message, "__dataclass_fields__", {}):
            message = dataclasses.replace(message, request_digest=request_digest(frame))
        return (encode(message), reply.final, reply.not_before_ns), False

    def _error(self, sid: int, seq: int, code: str, message: str) -> bytes:
        log.warning("ERROR %s (session %d, seq %d): %s", code, sid, seq, message)
        if seq >= 0:
            self.stats.failed += 1
            self.stats.errors_by_code[code] = self.stats.errors_by_code.get(code, 0) + 1
        return encode(Error(sid, seq, code, message))

    def _channel(self, session: Session, seq: int) -> bytes:
        """CHANNEL feedback for round ``seq``; the state is kept so the round uses what was announced.

        A link that cannot tell its state (e.g. a radio that does not answer)
        yields an ERROR for ``seq`` instead; the TX then re-opens the session.
        """
        try:
            s = self.link.channel_state(seq)
        except Exception as e:  # backends raise their own classes (RadioError, OSError, ...)
            return encode(Error(session.session_id, seq, "link", f"channel state unavailable: "
                                                                  f"{type(e).__name__}: {e}"))
        session.announced = {seq: s}
        return encode(Channel(session.session_id, seq, s.sinr_db, s.mcs, s.mcs_table, s.modulation,
                              s.rate_bps, s.bler))

    # ------------------------------------------------------------ HELLO

    def _session_to_evict(self, owner: str | None) -> int:
        """The id of the session a new session of ``owner`` replaces when the RX is full: ``owner``'s own
        idle-longest session if it holds one, else the idle-longest of the owner holding the most sessions
        (unbound sessions count as one owner). So a flood evicts the flooders' sessions first, never the
        session of a key that holds fewer."""
        if owner is not None:
            own = next((sid for sid, s in self.sessions.items() if s.owner == owner), None)
            if own is not None:
                return own
        held = Counter(s.owner for s in self.sessions.values())
        most = max(held.values())
        return next(sid for sid, s in self.sessions.items() if held[s.owner] == most)

    def _on_hello(self, peer: bytes, msg: Hello, received_ns: int, owner: str | None) -> list[bytes]:
        """Open or continue session ``msg.session_id``, bound to the sender's key (or credential).

        Checks, first failing wins: ``bad_message`` (a credential of the wrong
        length), ``session_owner`` (the id is held by another key or
        credential), ``bad_message`` (role), ``mode``, ``fingerprint``,
        ``params`` (a key the mode does not take, then the mode's own check),
        the mode's owner check (fed-lora: ``device_key``),
        ``too_many_sessions`` (a new session for an owner holding
        :attr:`max_sessions_per_owner`).
        """
        half = self.halves.get(msg.mode)
        cred = msg.credential
        lo, hi = CREDENTIAL_BYTES
        bound = owner if owner is not None else (credential_owner(cred) if cred else None)
        existing = self.sessions.get(msg.session_id)
        problem = None
        if cred and not lo <= len(cred) <= hi:
            problem = ("bad_message", f"HELLO credential of {len(cred)} bytes; it must be empty or {lo}..{hi} "
                                      "bytes")
        elif existing is not None and existing.owner is not None and existing.owner != bound:
            who = "another TX key" if owner is not None else "another credential (or none)"
            problem = ("session_owner", f"session {msg.session_id} was opened by {who}; a TX can only "
                                        "continue sessions it opened (pick a new session id)")
        elif msg.role != "tx":
            problem = ("bad_message", f"HELLO role {msg.role!r}; the RX accepts role 'tx'")
        elif half is None:
            problem = ("mode", f"this RX serves mode{'s' if len(self.halves) > 1 else ''} "
                               f"{', '.join(sorted(self.halves))}, not {msg.mode!r}; start the RX with "
                               f"--mode {msg.mode} or the TX with --mode {sorted(self.halves)[0]}")
        elif msg.fingerprint != half.fingerprint:
            problem = ("fingerprint", f"fingerprint {msg.fingerprint[:12]}... does not match the RX's "
                                      f"{half.fingerprint[:12]}...; {half.fingerprint_hint}")
        else:
            known = half.hello_param_keys
            unknown = sorted(set(msg.params) - set(known)) if known is not None else []
            reason = (f"unknown params {unknown[:8]}; this mode takes {sorted(known)}" if unknown
                      else half.check_hello(msg.params))
            if reason:
                problem = ("params", f"mode {msg.mode}: {reason}")
            else:  # whether the sender's key may speak for what its params claim (e.g. a device id)
                problem = half.check_hello_owner(msg.params, owner)
        if not problem and existing is None and bound is not None:
            held = sum(1 for s in self.sessions.values() if s.owner == bound)
            if held >= self.max_sessions_per_owner:
                problem = ("too_many_sessions", f"this {'CURVE key' if owner is not None else 'credential'} "
                                                f"already holds {held} sessions, the most one may hold "
                                                f"({self.max_sessions_per_owner}); end one or reuse its id")
        if problem:
            return [self._error(msg.session_id, -1, *problem)]
        # a TX continuing its own session (same key or credential, any connection) keeps the mode's
        # per-session state, as the replay record does; the sender's other sessions are untouched
        reopened = existing is not None
        if reopened and existing.mode == msg.mode:
            session = existing  # its owner is fixed when it opens
            self.sessions.move_to_end(msg.session_id)
        else:
            if reopened:
                del self.sessions[msg.session_id]
            while len(self.sessions) >= self.max_sessions:
                gone = self.sessions.pop(self._session_to_evict(bound))
                log.info("session %d evicted (the RX holds %d sessions at most; its owner's idle longest)",
                         gone.session_id, self.max_sessions, extra=PER_PEER)
            session = self.sessions[msg.session_id] = Session(msg.session_id, msg.mode, bound)
        same_peer = peer in session.peers
        session.attach(peer)
        self._note_peer(peer, msg.session_id)
        session.store["hello_params"] = dict(msg.params)
        if not reopened:  # one line per session: the TX's further HELLOs (clock samples) are not news
            log.info("session %d (%s) opened by TX pid %d (next seq %d)", msg.session_id, msg.mode, msg.pid,
                     msg.next_seq)
        else:
            log.log(logging.DEBUG if same_peer else logging.INFO, "session %d (%s) re-opened by TX pid %d%s "
                    "(next seq %d)", msg.session_id, msg.mode, msg.pid, "" if same_peer else
                    " from a new connection", msg.next_seq)
        reply = Hello("rx", msg.session_id, msg.mode, half.fingerprint, half.hello_params(), msg.next_seq,
                      self.limits.max_message_bytes, self.pid, msg.t_origin_ns, received_ns, time.time_ns())
        return [encode(reply), self._channel(session, msg.next_seq)]
