"""No peer can stall the RX's sends, and libzmq drops oversized messages.

Real sockets throughout: a raw DEALER that floods and never reads against a
serving loop on :class:`RxSocket`, and raw ZMTP (no ZeroMQ on the attacker's
side) against an RX socket in its own process, whose RSS is read from /proc.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from common.net.security import generate_keypair
from common.net.transport import (
    MAXMSGSIZE_SLACK,
    PeerGone,
    PeerNotReading,
    ReplyDropped,
    RxSocket,
    max_wire_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
HELLO_SIZED = b"h" * 120  # a HELLO is ~100-150 bytes of msgpack
REPLY = b"r" * 8192       # stands for HELLO + CHANNEL / RESULT replies


def _dealer(ctx, address, **opts):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    for k, v in opts.items():
        s.setsockopt(getattr(zmq, k), v)
    s.connect(address)
    return s


class _ServingLoop:
    """A small stand-in for rx_node.serving.serve: one reply per message; dropped replies are recorded."""

    def __init__(self, rx: RxSocket):
        self.rx = rx
        self.stop = threading.Event()
        self.dropped: list[str] = []
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            got = self.rx.recv(20)
            if got is None:
                continue
            peer, _ = got
            try:
                self.rx.send(peer, REPLY)
                self.sent += 1
            except ReplyDropped as e:
                self.dropped.append(e.reason)

    def join(self, timeout=5.0) -> bool:
        self.stop.set()
        self.thread.join(timeout)
        return not self.thread.is_alive()


def test_send_to_unknown_peer_raises_peer_gone():
    rx = RxSocket("tcp://127.0.0.1:0", 1 << 20, zmq.Context.instance())
    try:
        with pytest.raises(PeerGone) as e:
            rx.send(b"\x00nobody", b"reply")
        assert e.value.reason == "peer_gone" and not isinstance(e.value, PeerNotReading)
        assert e.value.peer == b"\x00nobody"
        assert rx.dropped == {"peer_gone": 1}
    finally:
        rx.close()


def test_socket_options_bound_every_peer():
    rx = RxSocket("tcp://127.0.0.1:0", 1 << 20, zmq.Context.instance(), send_hwm=8, recv_hwm=4)
    try:
        assert rx.sock.getsockopt(zmq.MAXMSGSIZE) == (1 << 20) + MAXMSGSIZE_SLACK == max_wire_bytes(1 << 20)
        assert rx.sock.getsockopt(zmq.SNDHWM) == 8 and rx.sock.getsockopt(zmq.RCVHWM) == 4
        assert rx.sock.getsockopt(zmq.LINGER) == 0 and rx.sock.getsockopt(zmq.SNDTIMEO) == 0
    finally:
        rx.close()
        rx.close()  # idempotent
    with pytest.raises(ValueError, match="send_hwm"):
        RxSocket("tcp://127.0.0.1:0", 1 << 20, zmq.Context.instance(), send_hwm=0)


def test_a_peer_that_never_reads_does_not_stall_the_others():
    """Today's blocking send: the loop hangs at the flooder's HWM and the good peer gets 0/20 replies."""
    ctx = zmq.Context.instance()
    rx = RxSocket("tcp://127.0.0.1:0", 1 << 20, ctx)
    loop = _ServingLoop(rx)
    # the attacker: reads nothing, and its side buffers as little as ZeroMQ and the kernel allow
    bad = _dealer(ctx, rx.address, RCVHWM=1, RCVBUF=4096)
    good = _dealer(ctx, rx.address)
    try:
        for _ in range(5000):
            bad.send(HELLO_SIZED)
        deadline = time.monotonic() + 20
        while "peer_not_reading" not in loop.dropped and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "peer_not_reading" in loop.dropped, f"flooder never hit the HWM ({loop.sent} sent)"

        answered, worst = 0, 0.0
        for i in range(20):
            bad.send(HELLO_SIZED)  # keeps flooding between the good peer's requests
            t0 = time.monotonic()
            good.send(b"hello %d" % i)
            if good.poll(3000):
                good.recv()
                answered += 1
                worst = max(worst, time.monotonic() - t0)
        assert answered == 20, f"well-behaved peer got {answered}/20 replies"
        assert worst < 2.0
        assert rx.dropped["peer_not_reading"] == loop.dropped.count("peer_not_reading") > 0
        # the flooder's queue is bounded by SNDHWM (+ kernel buffers), not by what it sent
        assert loop.sent < 5000

        bad.close()  # the flooder leaves: its unanswered messages now meet PeerGone, the loop goes on
        good.send(b"still there?")
        assert good.poll(3000)
    finally:
        alive_before_close = loop.join()
        t0 = time.monotonic()
        rx.close()
        close_s = time.monotonic() - t0
        good.close()
    assert alive_before_close, "serving loop did not stop: a send blocked"
    assert close_s < 1.0, f"close() took {close_s:.2f} s"


# ---------------------------------------------------------------- MAXMSGSIZE, raw ZMTP, separate process

_SERVER = r"""
import sys, zmq
from common.net.transport import RxSocket
from common.net.security import generate_keypair, rx_security
max_bytes, keydir = int(sys.argv[1]), sys.argv[2]
sec = None
if keydir != "-":
    sec = rx_security(**{"curve_secret": keydir + "/rx.key_secret", "curve_allow": keydir + "/allow"})
rx = RxSocket("tcp://127.0.0.1:0", max_bytes, zmq.Context.instance(), sec)
print(rx.address, flush=True)
while True:
    got = rx.recv(100)
    if got is not None:
        try:
            rx.send(got[0], b"pong %d" % len(got[1][0]))
        except Exception as e:
            print("dropped:", e, flush=True)
"""


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _raw_zmtp(host: str, port: int, mechanism: bytes) -> socket.socket:
    """A TCP connection that speaks just enough ZMTP 3.0 to reach the RX's message decoder."""
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\0") + b"\x00" + b"\0" * 31)
    if mechanism == b"NULL":  # READY, then we are a DEALER; under CURVE the next frame is the (huge) 'HELLO'
        body = b"\x05READY" + bytes([11]) + b"Socket-Type" + struct.pack(">I", 6) + b"DEALER"
        s.sendall(b"\x04" + bytes([len(body)]) + body)
    return s


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
@pytest.mark.parametrize("mechanism", [b"NULL", b"CURVE"])
def test_oversized_half_sent_message_is_not_buffered(tmp_path, mechanism):
    """Today's MAXMSGSIZE (2 x the limit) let a 56 MiB frame through: 48 MiB sent and held = +48 MiB RSS."""
    limit = 32 << 20
    keydir = "-"
    if mechanism == b"CURVE":
        generate_keypair(tmp_path, "rx")
        (tmp_path / "allow").mkdir()
        keydir = str(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(limit), keydir], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ctx = zmq.Context.instance()
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("tcp://"), address
        host, port = address[len("tcp://"):].rsplit(":", 1)
        time.sleep(0.3)
        before = _rss_mib(proc.pid)

        attack = _raw_zmtp(host, int(port), mechanism)
        flags = b"\x02" if mechanism == b"NULL" else b"\x06"  # long message / long command frame
        declared, pushed = limit + limit * 3 // 4, 0       # 56 MiB announced, below the old 2x cap
        try:
            attack.sendall(flags + struct.pack(">Q", declared))
            chunk = b"x" * (1 << 20)
            for _ in range(48):
                attack.sendall(chunk)
                pushed += len(chunk)
        except OSError:
            pass  # the RX dropped the connection on the frame header: what we want
        time.sleep(1.0)
        grown = _rss_mib(proc.pid) - before
        assert proc.poll() is None
        assert grown < 8, f"RX RSS grew {grown:.1f} MiB after {pushed >> 20} MiB of a half-sent message"
        assert pushed < declared

        if mechanism == b"NULL":  # the RX keeps serving a well-behaved peer (plain TCP here)
            good = _dealer(ctx, address)
            try:
                good.send(b"ping")
                assert good.poll(5000), "RX stopped serving after the oversized message"
                assert good.recv() == b"pong 4"
            finally:
                good.close()
        attack.close()
    finally:
        proc.kill()
        proc.wait()
