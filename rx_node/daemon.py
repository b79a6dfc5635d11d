"""The RX daemon: receive -> reconstruct -> align (LoRA) -> classify -> report.

:meth:`RxNode.handle` turns one incoming frame into reply frames without
touching a socket (tests drive it directly); :func:`serve` is the socket loop.
Every PAYLOAD ends in a RESULT or an ERROR naming the problem, followed by the
CHANNEL feedback for the next round; the daemon keeps serving either way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from common.modes.pca_lora.alignment import AlignmentStrategy
from common.codecs.pca import Codec
from common.learn.models import accuracy, predict
from common.wire.protocol import (
    NO_LABEL,
    Channel,
    DecodeLimits,
    Error,
    Hello,
    Payload,
    ProtocolError,
    Result,
    decode,
    encode,
)
from common.link.sidelink import PayloadLost, Sidelink
from common.net.transport import PeerGone, RxSocket
from rx_node.replay import ReplayCache

log = logging.getLogger("semalign.rx")


@dataclass
class _Session:
    session_id: int
    value_dtype: str
    rounds: int = 0
    announced: dict = field(default_factory=dict)  # seq -> ChannelState sent in CHANNEL


@dataclass
class RxStats:
    """Counters since start: payload rounds answered with RESULT / with ERROR."""

    ok: int = 0
    failed: int = 0
    errors_by_code: dict = field(default_factory=dict)
    replayed: int = 0  # repeated PAYLOADs answered from the record (not counted in rounds)

    @property
    def rounds(self) -> int:
        return self.ok + self.failed


class RxNode:
    """Holds the codec, the frozen classifier, the alignment strategy and the sidelink."""

    def __init__(self, codec: Codec, model: nn.Sequential, strategy: AlignmentStrategy,
                 link: Sidelink, limits: DecodeLimits = DecodeLimits(), n_classes: int = 10):
        self.codec = codec
        self.model = model
        self.strategy = strategy
        self.link = link
        self.limits = limits
        self.n_classes = n_classes
        self.sessions: dict[bytes, _Session] = {}
        self.stats = RxStats()
        self.pid = os.getpid()
        self.replay = ReplayCache()
        self.max_sessions = 1024
        self.close_hooks: list = []  # called by close(), e.g. to flush an adapter bank

    def close(self) -> None:
        """Flush what the node holds (``close_hooks``, in order) and release the link; idempotent."""
        hooks, self.close_hooks = self.close_hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.error("close hook %r failed:\n%s", hook, traceback.format_exc())
        self.link.close()

    def warm_up(self) -> None:
        """One tiny adaptation and inference so the first real round pays no start-up cost."""
        z = np.zeros((8, self.codec.d_max), np.float32)
        adapted, _ = self.strategy.adapt(self.model, z, np.zeros(8, np.uint8), self.codec)
        predict(adapted, self.codec.decode(z))

    # ------------------------------------------------------------ dispatch

    def handle(self, peer: bytes, frames: list[bytes], received_ns: int | None = None) -> list[bytes]:
        """Reply frames for one incoming message from ``peer``; never raises (last resort: ERROR internal)."""
        try:
            return self._handle(peer, frames, received_ns)
        except Exception as e:  # a bug must not take the daemon down; the sender learns what happened
            log.error("unhandled error on a message from %s:\n%s", peer.hex(), traceback.format_exc())
            session = self.sessions.get(peer)
            return [encode(Error(session.session_id if session else 0, -1, "internal",
                                 f"{type(e).__name__}: {e}"))]

    def _handle(self, peer: bytes, frames: list[bytes], received_ns: int | None) -> list[bytes]:
        received_ns = received_ns or time.time_ns()
        session = self.sessions.get(peer)
        sid = session.session_id if session else 0
        if len(frames) != 1:
            return [self._error(sid, -1, "bad_message", f"expected 1 frame, got {len(frames)}")]
        try:
            msg = decode(frames[0], self.limits)
        except ProtocolError as e:
            return [self._error(sid, -1, e.code, str(e))]
        if isinstance(msg, Hello):
            return self._on_hello(peer, msg, received_ns)
        if isinstance(msg, Payload):
            replies = [self._answer_payload(peer, msg, len(frames[0]), received_ns)]
            if peer in self.sessions:
                replies.append(self._channel(self.sessions[peer], msg.seq + 1))
            return replies
        return [self._error(sid, -1, "unexpected", f"the RX does not accept {msg.TYPE} messages")]

    def _answer_payload(self, peer: bytes, p: Payload, nbytes: int, received_ns: int) -> bytes:
        """A repeated ``(session, seq)`` gets the recorded reply; a new one is processed and recorded."""
        session = self.sessions.get(peer)
        if session is None or session.session_id != p.session_id:
            return self._on_payload(peer, p, nbytes, received_ns)
        cached = self.replay.get(p.session_id, p.seq)
        if cached is not None:
            self.stats.replayed += 1
            log.info("seq %d of session %d repeated: answering from the record", p.seq, p.session_id)
            return cached
        reply = self._on_payload(peer, p, nbytes, received_ns)
        self.replay.put(p.session_id, p.seq, reply)
        return reply

    def _error(self, sid: int, seq: int, code: str, message: str) -> bytes:
        log.warning("ERROR %s (session %d, seq %d): %s", code, sid, seq, message)
        if seq >= 0:
            self.stats.failed += 1
            self.stats.errors_by_code[code] = self.stats.errors_by_code.get(code, 0) + 1
        return encode(Error(sid, seq, code, message))

    def _channel(self, session: _Session, seq: int) -> bytes:
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

    def _on_hello(self, peer: bytes, msg: Hello, received_ns: int) -> list[bytes]:
        problem = None
        if msg.role != "tx":
            problem = ("bad_message", f"HELLO role {msg.role!r}; the RX accepts role 'tx'")
        elif msg.fingerprint != self.codec.fingerprint:
            problem = ("fingerprint", f"basis fingerprint {msg.fingerprint[:12]}... does not match "
                                      f"the RX's {self.codec.fingerprint[:12]}...; both nodes must "
                                      "load the same artifacts")
        elif msg.codec != self.codec.name or msg.d_raw != self.codec.d_raw:
            problem = ("codec", f"codec {msg.codec}/d_raw={msg.d_raw} != RX "
                                f"{self.codec.name}/d_raw={self.codec.d_raw}")
        if problem:
            return [self._error(msg.session_id, -1, *problem)]
        # one peer per session (a TX that rebuilt its socket comes back as a new peer), bounded count
        for other in [k for k, s in self.sessions.items() if s.session_id == msg.session_id or k == peer]:
            del self.sessions[other]
        while len(self.sessions) >= self.max_sessions:
            del self.sessions[next(iter(self.sessions))]
        session = self.sessions[peer] = _Session(msg.session_id, msg.value_dtype)
        log.info("session %d opened by TX pid %d (next seq %d)", msg.session_id, msg.pid, msg.next_seq)
        reply = Hello("rx", msg.session_id, self.codec.name, self.codec.fingerprint, self.codec.d_raw,
                      self.codec.d_max, msg.value_dtype, msg.next_seq, self.limits.max_message_bytes,
                      self.pid, msg.t_origin_ns, received_ns, time.time_ns())
        return [encode(reply), self._channel(session, msg.next_seq)]

    # ------------------------------------------------------------ PAYLOAD

    def _on_payload(self, peer: bytes, p: Payload, nbytes: int, received_ns: int) -> bytes:
        session = self.sessions.get(peer)
        if session is None or session.session_id != p.session_id:
            return self._error(p.session_id, p.seq, "no_session",
                               f"no open session {p.session_id} for this peer; send HELLO first")
        problem = self._check_payload(p)
        if problem:
            return self._error(p.session_id, p.seq, *problem)
        try:
            state = session.announced.get(p.seq) or self.link.channel_state(p.seq)
            result = self._process(p, state, nbytes, received_ns)
        except PayloadLost as e:
            return self._error(p.session_id, p.seq, "lost", str(e))
        except ProtocolError as e:
            return self._error(p.session_id, p.seq, e.code, str(e))
        except Exception as e:  # the daemon must keep serving; the round is recorded as failed
            log.error("round %d failed:\n%s", p.seq, traceback.format_exc())
            return self._error(p.session_id, p.seq, "internal", f"{type(e).__name__}: {e}")
        session.rounds += 1
        self.stats.ok += 1
        return encode(result)

    def _check_payload(self, p: Payload) -> tuple[str, str] | None:
        if p.fingerprint.hex() != self.codec.fingerprint:
            return "fingerprint", (f"payload basis fingerprint {p.fingerprint.hex()[:12]}... does not "
                                   f"match the RX's {self.codec.fingerprint[:12]}...")
        if p.alpha > self.codec.d_max:
            return "alpha", f"alpha={p.alpha} exceeds d_pre={self.codec.d_max} of the RX's basis"
        train_labels = p.labels[p.n_test:]
        if np.any(train_labels >= self.n_classes):
            bad = int(train_labels[train_labels >= self.n_classes][0])
            return "bad_label", f"training label {bad} outside [0, {self.n_classes})"
        return None

    def _process(self, p: Payload, state, nbytes: int, received_ns: int) -> Result:
        delivery = self.link.deliver(nbytes, state, received_ns)
        t_delivered = time.time_ns()

        t0 = time.perf_counter()
        z = p.features()
        if not np.isfinite(z).all():
            raise _NonFinite(int((~np.isfinite(z)).sum()))
        x_test = self.codec.decode(z[: p.n_test])
        t_reconstructed = time.time_ns()
        t1 = time.perf_counter()

        if p.n_train:
            adapted, report = self.strategy.adapt(self.model, z[p.n_test:], p.labels[p.n_test:], self.codec)
            adapt_info = report.to_dict()
        else:
            adapted, adapt_info = self.model, {"strategy": "none", "steps": 0, "complete": True}
        t2 = time.perf_counter()
        pred = predict(adapted, x_test)
        t3 = time.perf_counter()

        y_test = p.labels[: p.n_test]
        labelled = y_test != NO_LABEL
        acc_pre = accuracy(predict(self.model, x_test[labelled]), y_test[labelled])
        acc_ada = accuracy(pred[labelled], y_test[labelled])
        log.info("seq %d: alpha=%d n_train=%d acc %.3f -> %.3f (finetune %.0f ms)", p.seq, p.alpha,
                 p.n_train, acc_pre, acc_ada, (t2 - t1) * 1e3)
        timings = {"deliver": (t_delivered - received_ns) / 1e6, "reconstruct": (t1 - t0) * 1e3,
                   "finetune": (t2 - t1) * 1e3, "classify": (t3 - t2) * 1e3,
                   "airtime": delivery.airtime_s * 1e3}
        adapt_info["transmissions"] = delivery.transmissions
        return Result(p.session_id, p.seq, p.alpha, p.n_test, p.n_train, pred.tobytes(), acc_pre,
                      acc_ada, timings, adapt_info, self.pid, received_ns, t_delivered,
                      t_reconstructed, time.time_ns())


class _NonFinite(ProtocolError):
    def __init__(self, count: int):
        super().__init__("non_finite", f"payload holds {count} NaN/Inf feature values")


def serve(node: RxNode, sock: RxSocket, stop: threading.Event, max_rounds: int | None = None,
          poll_ms: int = 100) -> RxStats:
    """Answer messages until ``stop`` is set or ``max_rounds`` payload rounds were answered."""
    node.warm_up()
    log.info("RX pid %d serving on %s", node.pid, sock.address)
    while not stop.is_set() and (max_rounds is None or node.stats.rounds < max_rounds):
        got = sock.recv(poll_ms)
        if got is None:
            continue
        peer, frames = got
        for reply in node.handle(peer, frames, time.time_ns()):
            try:
                sock.send(peer, reply)
            except PeerGone as e:
                log.warning("%s; dropping its session", e)
                node.sessions.pop(peer, None)
                break
    return node.stats
