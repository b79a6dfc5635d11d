"""The multi-process RX (``semalign rx --workers W``, W > 1): a front end and W worker processes.

The ZeroMQ guide's load-balancing broker, with sticky sessions and Paranoid
Pirate heartbeats:

- The **front end** (:class:`FrontEnd`, the ``semalign rx`` process) owns the
  public ROUTER (:class:`~common.net.transport.RxSocket`: CURVE, the ZAP
  allow-list, the connection monitor, ``MAXMSGSIZE``) and a second ROUTER
  bound at ``ipc://DIR/workers`` (``DIR`` a fresh 0700 directory). It never
  runs mode code and never decodes a request, except to read a small HELLO's
  mode when a served mode keeps one owner (below) and, on a worker's loss, the
  ``session_id``/``seq`` of the requests that worker held (to answer them).
- **Workers** (:func:`rx_node.worker_process.run_worker`, ``semalign rx-worker``) are processes the
  front end starts; each builds the modes' RX halves, the link and an
  :class:`~rx_node.daemon.RxNode` (sessions, replay record, held replies) as
  the single-process RX does, connects a DEALER to the front end and
  announces ``READY`` once warmed up.
- **Pinning** (:mod:`rx_node.worker_pins`): a TX's frames go to the worker pinned to its key (CURVE) or
  connection and HELLO session ids (plain), so a session's rounds, replay record and state stay together;
  a one-owner mode's sessions (``Mode.rx_one_owner``) all go to worker 0.
- Frames are forwarded as ZeroMQ frames (``copy=False``): a payload is not
  copied in Python on its way through the front end.
- **Heartbeats** and **workers on other hosts** (:mod:`rx_node.worker_pool`): a worker silent for
  ``LIVENESS`` heartbeats, or whose process exits, is replaced; what it held is answered ERROR
  ``no_session`` (the TX re-opens its session and re-sends the round).
- The front end never blocks on a worker: its sends to workers are
  ``NOBLOCK`` with ``ROUTER_MANDATORY`` (a worker that does not take a
  request gets it refused at once with ``no_session``), and its sends to TXs
  are the RxSocket's (``NOBLOCK``; a TX that stops reading loses its replies; large replies within the
  TX key's byte budget, else ERROR ``replies_unread`` in their place: :func:`rx_node.serving.send_replies`).

The frames between the front end and its workers, the heartbeat constants and a worker's spec file are
in :mod:`rx_node.worker_wire`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time

import msgpack
import zmq

from common.net.security import RxSecurity
from common.net.transport import RxSocket
from common.wire.protocol import DecodeLimits, Error, encode, request_ids
from rx_node.serving import release_sent_replies, send_replies
from rx_node.sessions import RxStats
from rx_node.worker_pins import PinTable
from rx_node.worker_pool import WorkerPool, WorkerSlot
from rx_node.worker_wire import HEARTBEAT_S, U64

log = logging.getLogger("semalign.rx")


class FrontEnd(WorkerPool):
    """Serves the public socket with ``workers`` worker processes; see the module docstring.

    ``opts``/``link_table``: the RX's options, handed to every worker (less
    the one-writer options for workers 1..W-1). ``worker_argv``: the command
    that starts a worker. ``limits``: the workers' decode limits (the front
    end reads a HELLO's or a lost request's envelope under them). :attr:`stats` sums the workers' counters
    (:class:`~rx_node.sessions.RxStats`), the lost ones' included;
    :attr:`losses` lists ``(index, reason)`` of every worker lost.
    """

    def __init__(self, opts: dict, link_table: dict, sock: RxSocket, workers: int,
                 worker_argv: list[str] | None = None, modes: list[str] | None = None,
                 one_owner: set[str] = frozenset(), one_writer_options: set[str] = frozenset(),
                 limits: DecodeLimits = DecodeLimits(), remote_bind: str | None = None,
                 remote_security: RxSecurity | None = None):
        super().__init__(opts, link_table, workers, worker_argv, one_writer_options, remote_bind, remote_security)
        self.sock = sock
        self.modes = list(modes or [])
        self.limits = limits
        self.stats = RxStats()
        self._reqids = itertools.count(1)
        self.routes = PinTable(one_owner, limits)

    def _abandon(self, w: WorkerSlot, why: str) -> None:
        """:meth:`WorkerPool._abandon`: every request ``w`` had not answered gets ERROR ``no_session``;
        its pins are dropped."""
        for peer, ids, _ in w.inflight.values():
            self._refuse(peer, ids, f"RX worker {w.index} {why} while serving this request; the session "
                                       "is gone: re-open it")
        w.inflight.clear()
        self.routes.forget_worker(w.index)

    def _from_tx(self) -> None:
        peer, frames, owner = self.sock.recv_frames()  # no frame of a message of several (they are refused)
        w = self.routes.pick(self._workers, peer, frames, owner)
        # what a refusal needs, kept instead of the frames (a payload is not held here while a worker works)
        ids = request_ids(frames[0].buffer if isinstance(frames[0], zmq.Frame) else frames[0]) \
            if len(frames) == 1 else None
        if w is None:
            self._refuse(peer, ids, "no RX worker is ready to serve it (restarting)")
            return
        reqid = U64.pack(next(self._reqids))
        parts = [b"M", reqid, peer, (owner or "").encode(), U64.pack(time.time_ns()),
                 U64.pack(self.sock.last_frames), *frames]
        if self._to_worker(w, parts):
            w.inflight[reqid] = (peer, ids, owner)
        else:
            self._refuse(peer, ids, f"RX worker {w.index} is not taking requests (busy or hung)")

    def _refuse(self, peer: bytes, ids: tuple[str, int, int] | None, why: str) -> None:
        """ERROR ``no_session`` for a request no worker will answer (:func:`request_ids`: its type, session
        and seq; a HELLO, or a request whose ids cannot be read, is dropped: the TX re-sends it)."""
        if ids is None:  # also every HELLO: it carries no seq
            return
        _, sid, seq = ids
        log.warning("ERROR no_session (session %d, seq %d): %s", sid, seq, why)
        self.stats.errors_by_code["no_session"] = self.stats.errors_by_code.get("no_session", 0) + 1
        self._send_tx(peer, [encode(Error(sid, seq, "no_session", why))])

    def _send_tx(self, peer: bytes, replies: list, w: WorkerSlot | None = None, key: str | None = None) -> None:
        """Queue ``replies`` for ``peer`` (:func:`~rx_node.serving.send_replies`: large ones within the
        sender ``key``'s budget); a connection that left or stopped reading is unpinned, and its worker told."""
        gone = send_replies(self.sock, peer, key, replies, self.stats.replies_dropped)
        if gone is not None:  # the peer left or stopped reading: never block the others
            log.warning("%s; detaching the connection from its sessions", gone)
            self.routes.unpin(peer)  # a plain connection's pin (a key's pin stays: its other connections)
            if w is not None and w.ready:
                self._to_worker(w, [b"G", peer])

    def _from_worker(self, sock: zmq.Socket) -> None:
        ident, kind, *rest = sock.recv_multipart(copy=False)
        ident, kind = ident.bytes, kind.bytes
        w = next((x for x in self._workers if x is not None and x.live and x.sock is sock and x.ident == ident),
                 None)
        if w is None:
            if kind == b"JOIN" and sock is self.remote:
                self._join(ident)
            return  # else a worker already replaced: what it held was answered
        w.last_seen = time.monotonic()
        if kind == b"R":
            reqid, peer, counts, *replies = rest
            request = w.inflight.pop(reqid.bytes, None)
            if request is None:
                return
            ok, failed = msgpack.unpackb(counts.bytes)
            self.stats.ok += ok
            self.stats.failed += failed
            self._send_tx(peer.bytes, replies, w, request[2])
        elif kind in (b"H", b"BYE"):
            w.counters = msgpack.unpackb(rest[0].bytes, raw=False) if rest else {}
            if kind == b"BYE" and w.remote_ident is not None:  # a remote worker that stopped
                self._retire(w)
                w.ready, w.remote_ident = False, None
        elif kind == b"READY":
            w.ready = True
            w.pid = int(rest[0].bytes) if rest else None
            if w.index < self.n_workers:
                self._failures[w.index] = 0
            log.info("RX worker %d ready (%s)", w.index, w.where)

    def _summed(self) -> None:
        self.stats.replayed = self._retired.replayed + sum(w.counters.get("replayed", 0) for w in self._workers)
        codes = dict(self._retired.errors_by_code)
        for w in self._workers:
            for k, v in w.counters.get("errors_by_code", {}).items():
                codes[k] = codes.get(k, 0) + v
        for k, v in self.stats.errors_by_code.items():
            if k == "no_session":
                codes[k] = codes.get(k, 0) + v
        self._codes = codes

    def serve(self, stop: threading.Event, max_rounds: int | None = None):
        """Forward until ``stop`` is set or ``max_rounds`` rounds were answered; then stop the workers."""
        poller = zmq.Poller()
        poller.register(self.sock.sock, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        backends = [self.backend] + ([self.remote] if self.remote is not None else [])
        if self.remote is not None:
            poller.register(self.remote, zmq.POLLIN)
        next_check = 0.0
        log.info("RX pid %d serving %s on %s with %d workers", os.getpid(), ", ".join(sorted(self.modes)),
                 self.sock.address, self.n_workers)
        while not stop.is_set() and (max_rounds is None or self.stats.rounds < max_rounds):
            events = dict(poller.poll(100))
            for backend in backends:
                for _ in range(256):  # replies first: they free the TXs
                    if not backend.poll(0, zmq.POLLIN):
                        break
                    self._from_worker(backend)
            if self.sock.sock in events:
                for _ in range(256):
                    if not self.sock.sock.poll(0, zmq.POLLIN):
                        break
                    self._from_tx()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + HEARTBEAT_S / 4
                self.sock.flush_logs()
                self._check_workers()
            release_sent_replies(self.sock)
        self.stop_workers()
        return self.final_stats()

    def final_stats(self):
        self._summed()
        out = dataclasses.replace(self.stats, errors_by_code=self._codes)
        return out
