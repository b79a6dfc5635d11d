"""Replaying load generator: N pca-lora sessions from one process, each sending PAYLOAD frames encoded
before the run, so that the generator's own CPU (PCA encoding, one Python process per TX) does not
dominate what is measured.

Each session is one DEALER connection speaking the protocol as a TX does: HELLO (the real TX half's
parameters and fingerprint, a random credential), then per round one PAYLOAD, its RESULT (or ERROR) and
the CHANNEL of the next round, which releases the next PAYLOAD. The frames are the ones the real TX half
(:class:`~common.modes.pca_lora.tx.PcaLoraTx`) builds for the channel state the RX announced for round 0
(a constant trace, e.g. the load campaign's deep fade, keeps it right for every round), one per
``(session, seq)``, all encoded before the first is sent. Nothing waits for more than the poll: the
sessions run concurrently, as N vehicles would.

A row per round, as the TX's ``results.jsonl`` rows the load campaign summarises: ``round``,
``status`` (``ok``, ``failed`` with the ERROR's code, or ``lost``: no reply within the run's timeout),
``error``, ``started_at`` (wall clock of the send, s) and ``latency_ms.rtt`` (send to RESULT, ms).
"""

from __future__ import annotations

import os
import time

import zmq

from common.modes.base import RoundFailed, RoundIO
from common.results.log import RoundRecord
from common.wire.protocol import Channel, Error, Hello, Result, decode, encode

HELLO_RESEND_S = 1.0  # a HELLO the RX has not answered (front end with no ready worker) is sent again


class _Capture(RoundIO):
    """A RoundIO that keeps the round's messages instead of sending them (raises :class:`_Captured`)."""

    def __init__(self, session_id: int):
        self.session_id, self.clock_offset_ns = session_id, 0

    def exchange_all(self, msgs, reply_types):
        raise _Captured([encode(m) for m in msgs])


class _Captured(Exception):
    def __init__(self, frames: list[bytes]):
        super().__init__("captured")
        self.frames = frames


def round_frames(half, session_id: int, seq: int, channel) -> list[bytes]:
    """The frames ``half`` (a pca-lora TX half) sends for round ``seq`` of ``session_id`` on ``channel``."""
    try:
        half.run_round(seq, channel, RoundRecord(seq), _Capture(session_id))
    except _Captured as c:
        return c.frames
    except RoundFailed as e:
        raise ValueError(f"the TX half builds no round on this channel: {e}") from e
    raise ValueError("the TX half sent nothing")


class _Session:
    def __init__(self, ctx: zmq.Context, address: str, session_id: int):
        self.id = session_id
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.credential = os.urandom(32)
        self.opened = False
        self.channel = None  # the CHANNEL of round 0
        self.frames: list[list[bytes]] = []
        self.sent_at: dict[int, float] = {}
        self.rows: dict[int, dict] = {}
        self.hello_sent = 0.0

    def send_round(self, seq: int) -> None:
        self.sent_at[seq] = time.time()
        for frame in self.frames[seq]:
            self.sock.send(frame, copy=False)


def replay(address: str, half, n_sessions: int, rounds: int, timeout_s: float = 600.0,
           first_session_id: int = 1_000) -> list[list[dict]]:
    """Open ``n_sessions`` sessions at ``address`` with ``half``'s HELLO, encode ``rounds`` rounds for each,
    then replay them all at once; the rows of each session (see the module docstring)."""
    if n_sessions < 1 or rounds < 1:
        raise ValueError(f"need sessions >= 1 and rounds >= 1, got {n_sessions=} {rounds=}")
    ctx = zmq.Context.instance()
    sessions = [_Session(ctx, address, first_session_id + i) for i in range(n_sessions)]
    poller = zmq.Poller()
    for s in sessions:
        poller.register(s.sock, zmq.POLLIN)
    by_sock = {s.sock: s for s in sessions}
    deadline = time.monotonic() + timeout_s
    try:
        while not all(s.channel is not None for s in sessions) and time.monotonic() < deadline:  # HELLO
            for s in sessions:
                if not s.opened and time.monotonic() - s.hello_sent > HELLO_RESEND_S:
                    s.hello_sent = time.monotonic()
                    s.sock.send(encode(Hello("tx", s.id, half.mode, half.fingerprint, half.hello_params(), 0, 0,
                                             os.getpid(), time.time_ns(), credential=s.credential)))
            for sock, _ in poller.poll(100):
                s, msg = by_sock[sock], decode(sock.recv())
                if isinstance(msg, Hello):
                    s.opened = True
                elif isinstance(msg, Channel) and msg.seq == 0:
                    s.channel = msg
                elif isinstance(msg, Error):
                    raise RuntimeError(f"the RX refused session {s.id}: {msg.code}: {msg.message}")
        if not all(s.channel is not None for s in sessions):
            raise RuntimeError(f"{sum(s.channel is None for s in sessions)} of {n_sessions} sessions not opened "
                               f"within {timeout_s:.0f} s")
        for s in sessions:
            s.frames = [round_frames(half, s.id, seq, s.channel) for seq in range(rounds)]
        for s in sessions:
            s.send_round(0)
        while any(len(s.rows) < rounds for s in sessions) and time.monotonic() < deadline:
            for sock, _ in poller.poll(100):
                s, msg = by_sock[sock], decode(sock.recv())
                now = time.time()
                if isinstance(msg, (Result, Error)) and msg.seq in s.sent_at and msg.seq not in s.rows:
                    ok = isinstance(msg, Result)
                    s.rows[msg.seq] = {"round": msg.seq, "status": "ok" if ok else "failed",
                                       "error": None if ok else f"{msg.code}: {msg.message}",
                                       "started_at": s.sent_at[msg.seq],
                                       "latency_ms": {"rtt": (now - s.sent_at[msg.seq]) * 1e3}}
                elif isinstance(msg, Channel) and 0 < msg.seq < rounds and msg.seq not in s.sent_at:
                    s.send_round(msg.seq)
    finally:
        for s in sessions:
            s.sock.close(0)
    out = []
    for s in sessions:
        rows = [s.rows.get(k) or {"round": k, "status": "lost", "error": "no reply within the run's timeout",
                                  "started_at": s.sent_at.get(k, 0.0), "latency_ms": {}} for k in range(rounds)]
        out.append(rows)
    return out
