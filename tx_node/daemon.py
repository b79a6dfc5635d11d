"""The TX daemon: channel feedback -> alpha policy -> encode -> pack -> send -> result.

Every wait has a timeout. A round that fails (budget too small, RX error,
lost reply) is recorded with its reason and the campaign goes on; after a
lost reply the socket is rebuilt and the session re-opened (lazy pirate).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass

import numpy as np

from common.modes.pca_lora.budget import BudgetError, PayloadLayout, budget_bytes, n_train_max
from common.codecs.pca import Codec
from common.data.datasets import Dataset
from common.wire.protocol import (
    Channel,
    Error,
    Hello,
    Payload,
    ProtocolError,
    Result,
    decode,
    encode,
)
from common.results.log import ResultsLog, RoundRecord
from common.net.transport import TxSocket
from common.modes.pca_lora.policy import AlphaPolicy, BudgetView, largest_fitting

log = logging.getLogger("semalign.tx")


class HandshakeFailed(RuntimeError):
    """The RX did not accept the session (refused it, or never answered)."""


class RoundFailed(RuntimeError):
    """A round cannot go on; the message is recorded as the round's error."""


@dataclass(frozen=True)
class TxConfig:
    """Per-round payload and timing settings (times in s, sizes in vectors)."""

    n_test: int = 500
    n_min_train: int = 2000
    max_train: int = 0
    value_dtype: str = "float16"
    deadline_s: float = 0.05
    result_timeout_s: float = 30.0
    hello_timeout_s: float = 2.0
    hello_attempts: int = 30
    clock_samples: int = 4
    seed: int = 0
    round_attempts: int = 3
    backoff_s: float = 0.2
    backoff_max_s: float = 5.0
    stop_grace_s: float = 5.0

    def __post_init__(self):
        if self.n_test < 1:
            raise ValueError(f"n_test must be >= 1, got {self.n_test}")
        if self.n_min_train < 0 or self.max_train < 0:
            raise ValueError(f"n_min_train={self.n_min_train} and max_train={self.max_train} must be >= 0")
        for name in ("deadline_s", "result_timeout_s", "hello_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.hello_attempts < 1 or self.clock_samples < 1 or self.round_attempts < 1:
            raise ValueError("hello_attempts, clock_samples and round_attempts must be >= 1")
        if not 0 < self.backoff_s <= self.backoff_max_s or self.stop_grace_s < 0:
            raise ValueError(f"need 0 < backoff_s={self.backoff_s} <= backoff_max_s={self.backoff_max_s} "
                             f"and stop_grace_s={self.stop_grace_s} >= 0")
        PayloadLayout.for_dtype(self.value_dtype)


class TxNode:
    """Owns the data and the codec; talks to one RX through ``sock``."""

    def __init__(self, codec: Codec, data: Dataset, sock: TxSocket, config: TxConfig = TxConfig(),
                 policy: AlphaPolicy = largest_fitting, stop: threading.Event | None = None,
                 session_id: int | None = None):
        self.codec = codec
        self.data = data
        self.sock = sock
        self.config = config
        self.policy = policy
        self.layout = PayloadLayout.for_dtype(config.value_dtype)
        self.stop = stop or threading.Event()
        self.session_id = session_id if session_id is not None else random.SystemRandom().getrandbits(63)
        self.clock_offset_ns = 0
        self.rx_pid: int | None = None
        self._channels: dict[int, Channel] = {}
        self.pid = os.getpid()

    # ------------------------------------------------------------ messaging

    def _backoff(self, attempt: int) -> None:
        """Sleep ``backoff_s * 2**attempt`` (at most ``backoff_max_s``, jittered 50-100 %); stop wakes it."""
        delay = min(self.config.backoff_max_s, self.config.backoff_s * 2 ** min(attempt, 30))
        self.stop.wait(delay * (0.5 + random.random() / 2))

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
        """Open the session; estimate the RX clock offset from ``clock_samples`` exchanges."""
        samples = []
        for attempt in range(self.config.hello_attempts):
            if self.stop.is_set():
                raise HandshakeFailed("stopped")
            t0 = time.time_ns()
            self.sock.send(encode(Hello("tx", self.session_id, self.codec.name, self.codec.fingerprint,
                                        self.codec.d_raw, self.codec.d_max, self.config.value_dtype,
                                        next_seq, 0, self.pid, t0)))
            reply = self._recv_until(lambda m: isinstance(m, (Hello, Error)), self.config.hello_timeout_s)
            t3 = time.time_ns()
            if isinstance(reply, Error):
                raise HandshakeFailed(f"RX refused the session: {reply.code}: {reply.message}")
            if reply is None:
                if self.sock.auth_failures:
                    raise HandshakeFailed(f"the RX at {self.sock.address} refused the CURVE handshake: "
                                          "this TX's public key is not in its allow-list, or "
                                          "--curve-server-public is not the RX's key")
                log.info("no HELLO from %s (attempt %d/%d); reconnecting", self.sock.address,
                         attempt + 1, self.config.hello_attempts)
                self.sock.reset()
                self._backoff(attempt)
                continue
            self.rx_pid = reply.pid
            delay = (t3 - t0) - (reply.t_transmit_ns - reply.t_receive_ns)
            offset = ((reply.t_receive_ns - t0) + (reply.t_transmit_ns - t3)) // 2
            samples.append((delay, offset))
            if len(samples) >= self.config.clock_samples:
                self.clock_offset_ns = min(samples)[1]
                log.info("session %d open with RX pid %d; clock offset %.3f ms", self.session_id,
                         self.rx_pid, self.clock_offset_ns / 1e6)
                return
        raise HandshakeFailed(f"no HELLO from the RX at {self.sock.address} after "
                              f"{self.config.hello_attempts} attempts of {self.config.hello_timeout_s} s")

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
        cfg = self.config
        rec = RoundRecord(seq, session_id=self.session_id, deadline_s=cfg.deadline_s, n_test=cfg.n_test,
                          bytes_per_value=self.layout.bytes_per_value, header_bytes=self.layout.header_bytes,
                          vector_header_bytes=self.layout.vector_header_bytes, tx_pid=self.pid,
                          started_at=time.time())
        try:
            channel = self._channel_for(seq)
        except HandshakeFailed as e:
            rec.error = f"session lost: {e}"
            rec.status = "aborted" if self.stop.is_set() else rec.status
            return rec
        except RoundFailed as e:
            rec.error = str(e)
            return rec
        rec.modulation, rec.mcs, rec.mcs_table = channel.modulation, channel.mcs, channel.mcs_table
        rec.sinr_db, rec.rate_bps = channel.sinr_db, channel.rate_bps
        try:
            rec.b_max_bytes = budget_bytes(channel.rate_bps, cfg.deadline_s)
            rec.alpha = self.policy(BudgetView(rec.b_max_bytes, self.codec.d_max, cfg.n_test,
                                               cfg.n_min_train, self.layout))
            rec.n_train_max = n_train_max(rec.b_max_bytes, rec.alpha, cfg.n_test, self.layout)
        except (BudgetError, ValueError) as e:
            rec.error = f"budget: {e}"
            return rec
        rec.n_train = self._n_train(rec.n_train_max)
        frame, t = self._build_payload(seq, rec.alpha, rec.n_train)
        rec.payload_bytes = len(frame)
        try:
            reply = self._exchange(seq, frame, t, rec)
        except HandshakeFailed as e:
            rec.error = f"{rec.error}; then session lost: {e}"
            rec.status = "aborted" if self.stop.is_set() else rec.status
            return rec
        t_reply = time.time_ns()
        if reply is None:
            return rec
        if isinstance(reply, Error):
            rec.error = f"RX error {reply.code}: {reply.message}"
            return rec
        self._fill_result(rec, reply, t, t_reply)
        return rec

    def _exchange(self, seq: int, frame: bytes, t: dict, rec: RoundRecord) -> Result | Error | None:
        """Send round ``seq`` and wait for its RESULT/ERROR; re-send (same seq) when the reply is lost.

        A reply is lost when none comes within ``result_timeout_s``, when the
        connection drops (the RX died), or when the RX answers ``no_session``
        (it was restarted). Then the socket is rebuilt, the session re-opened
        at ``seq`` after a back-off, and the identical frame sent again, at most
        ``round_attempts`` times in all; an RX that still has the round answers
        from its record. None (with ``rec.error`` set) when every attempt failed
        or the TX is stopping. Raises :class:`HandshakeFailed` if the RX stays away.
        """
        cfg = self.config
        reasons = []
        for attempt in range(cfg.round_attempts):
            rec.attempts = attempt + 1
            self.sock.poll_events()
            drops = self.sock.disconnects
            t["sent"] = time.time_ns()
            self.sock.send(frame)
            reply = self._recv_until(lambda m: isinstance(m, (Result, Error)) and m.seq == seq
                                     and m.session_id == self.session_id, cfg.result_timeout_s,
                                     disconnects=drops, grace_s=cfg.stop_grace_s)
            if isinstance(reply, Result) or (isinstance(reply, Error) and reply.code != "no_session"):
                return reply
            if self.stop.is_set():
                rec.status = "aborted"
                rec.error = "stopped while waiting for the RESULT"
                return None
            if isinstance(reply, Error):
                reasons.append("the RX has no session (restarted?)")
            elif self.sock.disconnects > drops:
                reasons.append("connection to the RX dropped")
            else:
                reasons.append(f"no RESULT for round {seq} within {cfg.result_timeout_s} s")
            rec.error = "; ".join(reasons) + f" ({attempt + 1} attempt{'s' if attempt else ''})"
            if attempt + 1 < cfg.round_attempts:
                log.warning("round %d, attempt %d/%d: %s; re-sending", seq, attempt + 1,
                            cfg.round_attempts, reasons[-1])
                self.sock.reset()
                self._backoff(attempt)
                self.handshake(next_seq=seq)
        return None

    def _n_train(self, n_max: int) -> int:
        """``n_max`` capped by the training set size and by ``max_train`` (0 = no cap)."""
        cap = len(self.data.y_train)
        if self.config.max_train:
            cap = min(cap, self.config.max_train)
        return min(n_max, cap)

    def _build_payload(self, seq: int, alpha: int, n_train: int) -> tuple[bytes, dict]:
        """Sample, encode and pack; returns the frame and TX timestamps (ns)."""
        t = {"start": time.time_ns()}
        rng = np.random.default_rng([self.config.seed, seq])
        test_idx = rng.choice(len(self.data.y_test), self.config.n_test, replace=False)
        train_idx = rng.choice(len(self.data.y_train), n_train, replace=False)
        x = np.concatenate([self.data.x_test[test_idx], self.data.x_train[train_idx]])
        z = self.codec.encode(x, alpha)
        t["encoded"] = time.time_ns()
        labels = np.concatenate([self.data.y_test[test_idx], self.data.y_train[train_idx]])
        ids = np.concatenate([test_idx, train_idx]).astype(np.uint32)
        frame = encode(Payload.build(self.session_id, seq, self.codec.fingerprint, self.config.value_dtype,
                                     z, ids, labels, self.config.n_test))
        t["sent"] = time.time_ns()
        return frame, t

    def _fill_result(self, rec: RoundRecord, r: Result, t: dict, t_reply_ns: int) -> None:
        off = self.clock_offset_ns
        rec.status = "ok"
        rec.rx_pid = r.rx_pid
        rec.acc_pretrained, rec.acc_adapted = r.acc_pretrained, r.acc_adapted
        rec.adapt = r.adapt
        rec.airtime_ms = r.timings_ms.get("airtime")
        lat = {
            "encode": (t["encoded"] - t["start"]) / 1e6,
            "pack": (t["sent"] - t["encoded"]) / 1e6,
            "transfer": (r.t_delivered_ns - off - t["sent"]) / 1e6,
            "reconstruct": r.timings_ms["reconstruct"],
            "finetune": r.timings_ms["finetune"],
            "classify": r.timings_ms["classify"],
        }
        lat["communication"] = (r.t_reconstructed_ns - off - t["start"]) / 1e6
        lat["fine_tuning"] = lat["communication"] + lat["finetune"]
        lat["classification"] = lat["fine_tuning"] + lat["classify"]
        lat["rtt"] = (t_reply_ns - t["sent"]) / 1e6
        rec.latency_ms = lat
