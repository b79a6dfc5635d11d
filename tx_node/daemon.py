"""The TX daemon: handshake, channel feedback, rounds, retries (mode-agnostic).

The session's mode is the :class:`~common.modes.base.TxHalf` given to
:class:`TxNode`: it sends the mode's parameters in HELLO and runs each round
(what to send given the channel feedback, what to record of the reply).
Every wait has a timeout. A round that fails (budget too small, RX error,
lost reply) is recorded with its reason and the campaign goes on; after a
lost reply the socket is rebuilt and the session re-opened (lazy pirate).
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from common.modes.base import RoundFailed, RoundIO, TxHalf
from common.net.transport import TxSocket
from common.results.log import ResultsLog, RoundRecord
from common.wire.protocol import Channel, Error, Hello, ProtocolError, decode, encode, request_digest

log = logging.getLogger("semalign.tx")
# ERRORs that mean a reply was lost, not refused: the round is sent again on a fresh connection (code -> reason)
LOST_REPLY_CODES = {"no_session": "the RX has no session (restarted?)",
                    "replies_unread": "the RX did not queue the reply (this key's large replies were unread)"}


class HandshakeFailed(RuntimeError):
    """The RX did not accept the session (refused it, or never answered)."""


@dataclass(frozen=True)
class TxConfig:
    """Session and retry settings (times in s).

    Opening a session (at the start, and again after a lost connection) is
    given up after ``connect_timeout_s`` or ``hello_attempts`` HELLOs of
    ``hello_timeout_s`` each, whichever comes first.
    """

    result_timeout_s: float = 30.0
    hello_timeout_s: float = 2.0
    hello_attempts: int = 30
    connect_timeout_s: float = 20.0
    clock_samples: int = 4
    round_attempts: int = 3
    backoff_s: float = 0.2
    backoff_max_s: float = 5.0
    stop_grace_s: float = 5.0

    def __post_init__(self):
        for name in ("result_timeout_s", "hello_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.hello_attempts < 1 or self.clock_samples < 1 or self.round_attempts < 1:
            raise ValueError("hello_attempts, clock_samples and round_attempts must be >= 1")
        if not 0 < self.backoff_s <= self.backoff_max_s or self.stop_grace_s < 0:
            raise ValueError(f"need 0 < backoff_s={self.backoff_s} <= backoff_max_s={self.backoff_max_s} "
                             f"and stop_grace_s={self.stop_grace_s} >= 0")


class TxNode:
    """Runs one mode's rounds against one RX through ``sock``."""

    def __init__(self, half: TxHalf, sock: TxSocket, config: TxConfig = TxConfig(),
                 stop: threading.Event | None = None, session_id: int | None = None,
                 credential: bytes | None = None):
        self.half = half
        self.sock = sock
        self.config = config
        self.stop = stop or threading.Event()
        self.session_id = session_id if session_id is not None else random.SystemRandom().getrandbits(63)
        # sent in every HELLO: on a plain socket the RX binds the session to it, so that this TX (and only a
        # holder of it) continues the session from a new connection; under CURVE the key binds it instead
        self.credential = credential if credential is not None else secrets.token_bytes(16)
        self.clock_offset_ns = 0
        self.rx_pid: int | None = None
        self.rx_params: dict = {}
        self._channels: dict[int, Channel] = {}
        self.pid = os.getpid()

    # ------------------------------------------------------------ messaging

    def _backoff_level(self, attempt: int) -> float:
        """The back-off before re-try ``attempt + 1``: ``backoff_s * 2**attempt``, at most ``backoff_max_s``."""
        return min(self.config.backoff_max_s, self.config.backoff_s * 2 ** min(attempt, 30))

    def _backoff(self, attempt: int, until: float | None = None) -> None:
        """Sleep the back-off of ``attempt`` (jittered 50-100 %, never past the monotonic time ``until``);
        stop wakes it."""
        delay = self._backoff_level(attempt) * (0.5 + random.random() / 2)
        if until is not None:
            delay = min(delay, max(0.0, until - time.monotonic()))
        self.stop.wait(delay)

    def _recv_until(self, want, timeout_s: float, disconnects: int | None = None, grace_s: float = 0.0):
        """Read messages until ``want(msg)``; CHANNELs are kept by seq. None on timeout.

        ``disconnects``: give up early once the socket has seen more connection
        drops than this. ``grace_s``: after ``stop`` is set, keep waiting this long.
        """
        deadline = time.monotonic() + timeout_s
        stopping = False
        while True:
            if self.stop.is_set() and not stopping:
                if grace_s <= 0:
                    return None
                stopping, deadline = True, min(deadline, time.monotonic() + grace_s)
            if disconnects is not None and self.sock.disconnects > disconnects:
                return None
            left_ms = int((deadline - time.monotonic()) * 1e3)
            if left_ms <= 0:
                return None
            frame = self.sock.recv(min(left_ms, 200))
            if frame is None:
                continue
            try:
                msg = decode(frame)
            except ProtocolError as e:
                log.warning("undecodable reply from the RX: %s", e)
                continue
            if isinstance(msg, Channel) and msg.session_id == self.session_id:
                self._channels[msg.seq] = msg
            if want(msg):
                return msg

    def handshake(self, next_seq: int = 0) -> None:
        """Open the session; estimate the RX clock offset from ``clock_samples`` exchanges.

        Gives up (:class:`HandshakeFailed`, saying what to check) after
        ``connect_timeout_s`` or ``hello_attempts`` unanswered HELLOs, whichever
        comes first. One log line per back-off level: the re-tries at the
        longest back-off are announced once, not one by one.
        """
        cfg = self.config
        samples = []
        started = time.monotonic()
        give_up_at = started + cfg.connect_timeout_s
        unanswered = 0
        for attempt in range(cfg.hello_attempts):
            if self.stop.is_set():
                raise HandshakeFailed("stopped")
            t0 = time.time_ns()
            self.sock.send(encode(Hello("tx", self.session_id, self.half.mode, self.half.fingerprint,
                                        self.half.hello_params(), next_seq, 0, self.pid, t0,
                                        credential=self.credential)))
            wait_s = max(0.05, min(cfg.hello_timeout_s, give_up_at - time.monotonic()))
            reply = self._recv_until(lambda m: isinstance(m, (Hello, Error)), wait_s)
            t3 = time.time_ns()
            if isinstance(reply, Error):
                raise HandshakeFailed(f"RX refused the session: {reply.code}: {reply.message}")
            if reply is None:
                if self.sock.auth_failures:
                    raise HandshakeFailed(f"the RX at {self.sock.address} refused the CURVE handshake: "
                                          "this TX's public key is not in its allow-list, or "
                                          "--curve-server-public is not the RX's key")
                unanswered += 1
                if time.monotonic() >= give_up_at or attempt + 1 >= cfg.hello_attempts:
                    break
                level = self._backoff_level(unanswered - 1)
                if unanswered == 1 or level > self._backoff_level(unanswered - 2):
                    at_max = level >= cfg.backoff_max_s
                    log.info("no answer from the RX at %s after %.0f s (attempt %d); re-trying %s, "
                             "giving up after %g s", self.sock.address, time.monotonic() - started,
                             unanswered, f"every ~{cfg.hello_timeout_s + level:.0f} s" if at_max else
                             f"in {level / 2:.2g}-{level:.2g} s", cfg.connect_timeout_s)
                self.sock.reset()
                self._backoff(unanswered - 1, until=give_up_at)
                continue
            problem = self.half.check_hello_reply(reply.params)
            if problem:
                raise HandshakeFailed(f"the RX's {self.half.mode} session does not suit this TX: {problem}")
            self.rx_pid, self.rx_params = reply.pid, reply.params
            delay = (t3 - t0) - (reply.t_transmit_ns - reply.t_receive_ns)
            offset = ((reply.t_receive_ns - t0) + (reply.t_transmit_ns - t3)) // 2
            samples.append((delay, offset))
            if len(samples) >= self.config.clock_samples:
                self.clock_offset_ns = min(samples)[1]
                log.info("session %d open with RX pid %d; clock offset %.3f ms", self.session_id,
                         self.rx_pid, self.clock_offset_ns / 1e6)
                return
        raise HandshakeFailed(
            f"no answer from the RX at {self.sock.address} after {unanswered} attempt"
            f"{'s' if unanswered != 1 else ''} in {time.monotonic() - started:.0f} s; check the address and "
            f"port (--connect), that the RX is running and serving there (its log says 'serving ... on "
            f"tcp://...'), that no firewall is in the way, and that both use CURVE keys (the RX's public "
            f"key as --curve-server-public, this TX's in its --curve-allow directory) or both --insecure; "
            f"--connect-timeout-s ({cfg.connect_timeout_s:g} s) and --hello-attempts ({cfg.hello_attempts}) set "
            f"how long to try")

    def _channel_for(self, seq: int) -> Channel:
        """The RX's feedback for round ``seq``; re-opens the session once if none came.

        Raises :class:`RoundFailed` with the RX's reason when it cannot give one.
        """
        for attempt in range(2):
            if seq not in self._channels:
                got = self._recv_until(lambda m: isinstance(m, (Channel, Error)) and m.seq == seq,
                                       self.config.hello_timeout_s)
                if isinstance(got, Error):
                    raise RoundFailed(f"RX error {got.code}: {got.message}")
            if seq in self._channels:
                return self._channels.pop(seq)
            if attempt == 0:
                log.info("no CHANNEL for round %d; re-opening the session", seq)
                self.sock.reset()
                self.handshake(next_seq=seq)
        raise RoundFailed(f"no channel feedback for round {seq}")

    # ------------------------------------------------------------ rounds

    def run(self, rounds: int, results: ResultsLog, first_seq: int = 0, on_round=None,
            skip: set[int] | frozenset = frozenset()) -> list[RoundRecord]:
        """Handshake, then rounds ``first_seq .. first_seq+rounds-1`` except ``skip`` (resume).

        Each record goes to ``results`` as it ends; a stop (SIGTERM) ends the
        campaign after the current round (finished, or recorded as ``aborted``).
        """
        todo = [s for s in range(first_seq, first_seq + rounds) if s not in skip]
        if not todo:
            return []
        try:
            self.handshake(todo[0])
        except HandshakeFailed:
            if self.stop.is_set():
                return []
            raise
        records = []
        previous = todo[0] - 1
        for seq in todo:
            if self.stop.is_set():
                break
            if seq != previous + 1 and seq not in self._channels:
                try:
                    self.handshake(seq)  # a gap (resumed campaign): ask for this round's channel now
                except HandshakeFailed:
                    if self.stop.is_set():
                        break
                    raise
            record = self.run_round(seq)
            previous = seq
            results.append(record)
            records.append(record)
            for old in [k for k in self._channels if k <= seq]:
                del self._channels[old]
            if on_round:
                on_round(record)
        return records

    def run_round(self, seq: int) -> RoundRecord:
        """One round; never raises for a round-level failure (it is recorded instead)."""
        rec = RoundRecord(seq, session_id=self.session_id, mode=self.half.mode, tx_pid=self.pid,
                          started_at=time.time())
        try:
            channel = self._channel_for(seq)
            rec.modulation, rec.mcs, rec.mcs_table = channel.modulation, channel.mcs, channel.mcs_table
            rec.sinr_db, rec.rate_bps = channel.sinr_db, channel.rate_bps
            self.half.run_round(seq, channel, rec, _RoundExchange(self, seq, rec))
        except HandshakeFailed as e:
            rec.error = f"{rec.error}; then session lost: {e}" if rec.error else f"session lost: {e}"
            rec.status = "aborted" if self.stop.is_set() else "failed"
        except _Stopped:
            rec.status, rec.error = "aborted", "stopped while waiting for the reply"
        except RoundFailed as e:
            rec.status, rec.error = "failed", str(e)
        return rec

    def exchange(self, seq: int, frames: Iterable[bytes], reply_types: list[tuple[str, ...]], rec: RoundRecord):
        """Send round ``seq``'s ``frames`` back to back and wait for one reply each; re-send (same seq)
        when a reply is lost.

        ``frames`` may be a generator: each frame is sent as soon as it is
        built, so building the next overlaps the previous one's transfer.

        Reply ``i`` is a message of one of ``reply_types[i]`` for ``seq`` whose
        ``request_digest`` (when it has one) is frame ``i``'s. A reply is lost
        when none comes within ``result_timeout_s``, when the connection drops
        (the RX died), when the RX answers ``no_session`` (it was
        restarted) or ``replies_unread`` (it did not queue the reply: this
        key's large replies it had queued were not yet read). Then the socket is rebuilt, the session re-opened at
        ``seq`` after a back-off, and every frame sent again, identical, at
        most ``round_attempts`` times in all; an RX that still has the round
        answers what it already handled from its record. Returns (replies,
        sent_ns, replied_ns) where ``sent_ns`` is the *first* send of the
        first frame: what a mode measures up to it (e.g. pca-lora's ``pack``
        stage) never includes re-sends and back-off, which fall into the time
        from the send to the last reply. Raises :class:`RoundFailed` for an
        ERROR or when every attempt failed, :class:`HandshakeFailed` if the RX
        stays away.
        """
        cfg = self.config
        reasons = []
        pending, frames, digests = iter(frames), [], []
        replies: list = [None] * len(reply_types)
        first_sent_ns = None
        for attempt in range(cfg.round_attempts):
            rec.attempts = attempt + 1
            self.sock.poll_events()
            drops = self.sock.disconnects
            for frame in frames:  # a re-send
                self.sock.send(frame)
            for frame in pending:  # the first send, each frame as soon as it is built
                if first_sent_ns is None:
                    first_sent_ns = time.time_ns()
                self.sock.send(frame)
                frames.append(frame)
                digests.append(request_digest(frame))
            if len(frames) != len(replies):
                raise ValueError(f"{len(frames)} frames for {len(replies)} reply types")
            deadline = time.monotonic() + cfg.result_timeout_s
            reply = None
            while any(r is None for r in replies):
                reply = self._recv_until(lambda m: getattr(m, "seq", None) == seq
                                         and m.session_id == self.session_id
                                         and (isinstance(m, Error) or self._slot(m, replies, reply_types,
                                                                                 digests) is not None),
                                         max(0.0, deadline - time.monotonic()), disconnects=drops,
                                         grace_s=cfg.stop_grace_s)
                if reply is None or isinstance(reply, Error):
                    break
                replies[self._slot(reply, replies, reply_types, digests)] = reply
            if isinstance(reply, Error) and reply.code not in LOST_REPLY_CODES:
                raise RoundFailed(f"RX error {reply.code}: {reply.message}")
            if all(r is not None for r in replies):
                return replies, first_sent_ns, time.time_ns()
            if self.stop.is_set():
                raise _Stopped()
            missing = [i for i, r in enumerate(replies) if r is None]
            wanted = "/".join(reply_types[missing[-1]])  # the round's last reply missing, and how many before it
            earlier = f" (nor {len(missing) - 1} earlier repl{'ies' if len(missing) > 2 else 'y'})" \
                if len(missing) > 1 else ""
            if isinstance(reply, Error):
                reasons.append(LOST_REPLY_CODES[reply.code])
            elif self.sock.disconnects > drops:
                reasons.append("connection to the RX dropped")
            else:
                reasons.append(f"no {wanted} for round {seq} within {cfg.result_timeout_s} s{earlier}")
            rec.error = "; ".join(reasons) + f" ({attempt + 1} attempt{'s' if attempt else ''})"
            if attempt + 1 < cfg.round_attempts:
                log.warning("round %d, attempt %d/%d: %s; re-sending", seq, attempt + 1,
                            cfg.round_attempts, reasons[-1])
                replies = [None] * len(replies)  # a restarted RX answers all of them afresh
                self.sock.reset()
                self._backoff(attempt)
                self.handshake(next_seq=seq)
        raise RoundFailed(rec.error)

    @staticmethod
    def _slot(reply, replies: list, reply_types: list[tuple[str, ...]], digests: list[bytes]) -> int | None:
        """The index of the first unanswered request ``reply`` answers (by type, and by digest when the
        reply carries one), or None (a stale reply, or one for a request this TX did not send)."""
        got = getattr(reply, "request_digest", None)
        for i, types in enumerate(reply_types):
            if replies[i] is None and reply.TYPE in types and (not got or got == digests[i]):
                return i
        if got and reply.TYPE in {t for types in reply_types for t in types}:
            log.warning("a %s for round %d does not answer a request this TX sent (digest %s); ignored",
                        reply.TYPE, reply.seq, got.hex())
        return None


class _Stopped(Exception):
    """The TX was stopped while waiting for a reply."""


class _RoundExchange(RoundIO):
    """:class:`RoundIO` for round ``seq``: sends through the node, keeps the last send/reply times."""

    def __init__(self, node: TxNode, seq: int, rec: RoundRecord):
        self.node, self.seq, self.rec = node, seq, rec
        self.session_id = node.session_id
        self.clock_offset_ns = node.clock_offset_ns
        self.sent_ns = self.replied_ns = 0

    def exchange_all(self, msgs, reply_types):
        def frames():
            for m in msgs:
                frame = encode(m)
                self.rec.payload_bytes = (self.rec.payload_bytes or 0) + len(frame)
                yield frame

        replies, self.sent_ns, self.replied_ns = self.node.exchange(self.seq, frames(), list(reply_types), self.rec)
        self.clock_offset_ns = self.node.clock_offset_ns
        return replies
