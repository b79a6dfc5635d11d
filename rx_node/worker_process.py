"""One RX worker's life (the other side of :mod:`rx_node.workers`): build the node, say READY to the front end,
serve the frames it forwards, heartbeat, stop on ``S`` or when the front end goes silent.

:func:`run_worker` is a worker the front end started (``semalign rx-worker --spec``, local, over
``ipc://``); :func:`run_remote_worker` one on another host (``semalign rx-worker --connect``) that joins
the front end's ``--worker-bind`` over CURVE with ``JOIN`` and gets its spec as ``SPEC``. The frames are
listed in :mod:`rx_node.workers`.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import zmq

from common.net.security import TxSecurity, apply_client
from common.net.transport import check_endpoint, endpoint_error
from rx_node.worker_wire import (
    BACKEND_HWM,
    FRONTEND_SILENT_S,
    HEARTBEAT_S,
    READY_TIMEOUT_S,
    U64,
    from_json,
    read_spec,
)

log = logging.getLogger("semalign.rx")


def _dealer(identity: bytes, security: TxSecurity | None = None) -> zmq.Socket:
    """A worker's DEALER to its front end (a CURVE client of the front end's key with ``security``)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, BACKEND_HWM)
    sock.setsockopt(zmq.RCVHWM, BACKEND_HWM)
    if security is not None:
        apply_client(sock, security)
    return sock


def run_worker(spec_path: Path, generation: int = 0) -> int:
    """A local worker's life (started by the front end): build the node from the spec file, announce
    READY, serve what the front end forwards."""
    spec = read_spec(spec_path)
    sock = _dealer(f"w{spec['index']}g{generation}".encode())
    sock.connect(spec["frontend"])
    return _serve(spec, sock)


def run_remote_worker(connect: str, security: TxSecurity, join_timeout_s: float = READY_TIMEOUT_S) -> int:
    """A worker on another host (``semalign rx-worker --connect``): join the front end at ``connect``,
    build the node from the spec it sends (the same options as its local workers: the artifacts must be at
    the same paths on this host), serve until the front end stops it or goes silent. Returns 1 when the
    front end never answered (or the spec could not be used), else 0."""
    check_endpoint(connect, "connect")
    sock = _dealer(f"r{os.urandom(6).hex()}".encode(), security)
    try:
        sock.connect(connect)
    except zmq.ZMQError as e:
        sock.close(0)
        raise endpoint_error(connect, "connect", e) from e
    deadline = time.monotonic() + join_timeout_s
    while time.monotonic() < deadline:  # JOIN until the front end answers (it may start after us)
        if sock.poll(0, zmq.POLLOUT):
            sock.send_multipart([b"JOIN"], flags=zmq.NOBLOCK)
        if sock.poll(int(HEARTBEAT_S * 1000), zmq.POLLIN):
            kind, *rest = sock.recv_multipart()
            if kind == b"SPEC" and rest:
                spec = from_json(json.loads(rest[0]))
                log.info("RX worker %d: joined the front end at %s", spec["index"], connect)
                spec["shared_dir"] = tempfile.mkdtemp(prefix="semalign-rx-worker-")
                try:
                    return _serve(spec, sock)
                finally:
                    shutil.rmtree(spec["shared_dir"], ignore_errors=True)
    log.error("RX worker: no answer from the front end at %s within %.0f s; check --connect, that the RX runs "
              "with --worker-bind there, and that this worker's public key is in its --worker-allow directory",
              connect, join_timeout_s)
    sock.close(0)
    return 1


def _serve(spec: dict, sock: zmq.Socket) -> int:
    """Build the node from ``spec``, announce READY on ``sock`` (connected to the front end), serve what
    the front end forwards until it says stop (``S``) or goes silent; the last message is ``BYE``."""
    import torch

    from common.learn.process_tuning import keep_freed_memory, release_freed_memory
    from rx_node.app import build_node
    from rx_node.daemon import RELEASE_AFTER_BYTES

    index = spec["index"]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C reaches the front end, which stops us
    opts = spec["opts"]
    torch.set_num_threads(int(opts.get("threads") or 1))
    keep_freed_memory()
    node = build_node(opts, spec["link_table"], shared_dir=Path(spec["shared_dir"]))
    front_pid = spec["front_pid"]  # a local worker's parent; None for a remote one

    def send(parts: list) -> None:
        try:
            sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("RX worker %d: the front end takes nothing (queue full); a reply is dropped", index)

    def counters() -> bytes:
        s = node.stats
        return msgpack.packb({"ok": s.ok, "failed": s.failed, "replayed": s.replayed,
                              "errors_by_code": s.errors_by_code})

    try:
        node.warm_up()
        send([b"READY", str(os.getpid()).encode()])
        log.info("RX worker %d (pid %d) serving %s", index, os.getpid(), ", ".join(sorted(node.halves)))
        held: list = []  # (due ns, order, reqid, peer, counts, replies), a heap
        order = itertools.count()
        heard = time.monotonic()
        next_beat = 0.0
        stopping = False
        while not (stopping and not held):
            if stop.is_set():
                stopping = True
            wait_ms = 100 if not held else max(0, min(100, (held[0][0] - time.time_ns()) // 1_000_000))
            if not stopping and sock.poll(wait_ms, zmq.POLLIN):
                kind, *rest = sock.recv_multipart(copy=False)
                heard = time.monotonic()
                kind = kind.bytes
                if kind == b"M":
                    reqid, peer, owner, rx_ns, n_frames, *frames = rest
                    before = (node.stats.ok, node.stats.failed)
                    size = sum(len(f) for f in frames)
                    replies, hold_ns = node.handle_timed(peer.bytes, [f.buffer for f in frames],
                                                         U64.unpack(rx_ns.bytes)[0], owner.bytes.decode() or None,
                                                         U64.unpack(n_frames.bytes)[0])
                    counts = msgpack.packb([node.stats.ok - before[0], node.stats.failed - before[1]])
                    heapq.heappush(held, (hold_ns, next(order), reqid, peer, counts, replies))
                    rest = frames = None  # ZeroMQ's buffer of the frame is freed before the memory goes back
                    if size > RELEASE_AFTER_BYTES:
                        release_freed_memory()
                elif kind == b"G":
                    node.drop_peer(rest[0].bytes)
                elif kind == b"S":
                    stopping = True
            elif stopping and held:
                time.sleep(max(0, held[0][0] - time.time_ns()) / 1e9)
            while held and held[0][0] <= time.time_ns():
                _, _, reqid, peer, counts, replies = heapq.heappop(held)
                send([b"R", reqid, peer, counts, *replies])
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + HEARTBEAT_S
                send([b"H", counters()])
            if not stopping and (now - heard > FRONTEND_SILENT_S or (front_pid and os.getppid() != front_pid)):
                log.error("RX worker %d: the front end is gone (silent for %.0f s); exiting", index, now - heard)
                held.clear()
                break
        send([b"BYE", counters()])
    finally:
        sock.close(linger=200)
        node.close()
    return 0
