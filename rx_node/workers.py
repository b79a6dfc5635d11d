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
- **Pinning**: sessions are bound to the TX's key, not to its connection
  (``docs/protocol.md``, "Sessions"), so the front end pins what survives a
  reconnect. Under CURVE it pins the **key** (the ZAP User-Id): the key's
  first frame pins it to the worker with the fewest pins active in the last
  :data:`PIN_ACTIVE_S`, and every frame of every connection of that key goes
  there, so a TX whose network path changed (new connection, same key)
  reaches the worker that holds its sessions. On a plain socket it pins the
  connection, and the **session id** of every HELLO (read from small frames):
  a HELLO for a session a worker holds re-pins its connection to that worker
  (the worker then checks the credential). Under CURVE a HELLO for a session
  id held on another worker than the key's goes to that worker (not
  re-pinned), which refuses another key's HELLO (``session_owner``), as one
  process does. A session's rounds, replay record
  and per-session state thus stay together. A mode whose RX
  state spans sessions with one owner (``Mode.rx_one_owner``: fed-lora's base
  station, one federation) has all its sessions pinned to worker 0: the front
  end reads the mode of HELLO frames (small msgpack maps) and re-pins (under
  CURVE the key: a key's sessions live on one worker). A
  mode's options that name one-writer state on disk
  (``Mode.rx_one_writer_options``: pca-lora's ``adapter_bank``) are given to
  worker 0 only; the others keep that state in memory. State a mode shares
  between workers (slf's kept alignments) goes to ``DIR/shared``
  (:meth:`~common.modes.base.RxHalf.share_state`).
- Frames are forwarded as ZeroMQ frames (``copy=False``): a payload is not
  copied in Python on its way through the front end.
- **Heartbeats**: the front end sends ``H`` to each worker every
  :data:`HEARTBEAT_S`; a worker answers with its own (carrying its counters)
  from its serving loop. A worker silent for ``LIVENESS`` intervals is hung
  (stopped, or stuck in one request): it is killed (SIGKILL) and replaced.
  A worker process that exits (``kill -9``, a crash) is seen at once
  (``Popen.poll``). Either way the front end logs it, answers every request
  that worker had not answered with ERROR ``no_session`` naming the reason
  (the TX then re-opens its session on a fresh connection, pinned to a live
  worker, and re-sends the round: the round is recorded once, with the reason
  in its ``error``), drops the worker's pins and starts a new worker in its
  place (back-off when it keeps failing before READY).
- The front end never blocks on a worker: its sends to workers are
  ``NOBLOCK`` with ``ROUTER_MANDATORY`` (a worker that does not take a
  request gets it refused at once with ``no_session``), and its sends to TXs
  are the RxSocket's (``NOBLOCK``; a TX that stops reading loses its replies; large replies within the
  TX key's byte budget, else ERROR ``replies_unread`` in their place: :func:`rx_node.serving.send_replies`).

- **Workers on other hosts** (``semalign rx --worker-bind tcp://0.0.0.0:PORT
  --worker-allow DIR`` on the front end, ``semalign rx-worker --connect
  tcp://FRONT:PORT --curve-secret W.key_secret --curve-server-public RX.key``
  on each worker host): a third ROUTER, in its own ZeroMQ context with its
  own ZAP handler, is a CURVE server with the RX's key that admits only the
  worker keys in ``DIR`` (a TX key cannot join as a worker, a worker key
  cannot speak as a TX). A remote worker sends ``JOIN`` until the front end
  answers ``SPEC`` (the same options as a local worker other than worker 0:
  the artifacts must be at the same paths on its host), then is a worker
  like the others: pinned sessions, heartbeats, the same frames. The front
  end cannot restart it: when it dies or hangs its slot is closed (its
  requests answered ``no_session``, its pins dropped), and its host's
  supervisor restarts it (``deploy/systemd``), when it joins again in a new
  slot. State shared between workers through ``DIR/shared`` (slf's kept
  alignments) stays per host.

The frames between the front end and its workers, the heartbeat constants and a worker's spec file are
in :mod:`rx_node.worker_wire`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import zmq

from common.net.security import AllowListAuthenticator, RxSecurity, apply_server
from common.net.transport import RxSocket, check_endpoint, endpoint_error
from common.wire.protocol import DecodeLimits, Error, ProtocolError, encode, request_ids, unpack
from rx_node.serving import release_sent_replies, send_replies
from rx_node.sessions import RxStats
from rx_node.worker_wire import BACKEND_HWM, HEARTBEAT_S, LIVENESS, READY_TIMEOUT_S, U64, to_json, write_spec

log = logging.getLogger("semalign.rx")

MAX_PINS = 65536  # pinned TX keys / connections / session ids remembered (least recently active forgotten first)
PIN_ACTIVE_S = 60.0  # a pinned connection counts towards its worker's load this long after its last frame
HELLO_PEEK_BYTES = 8192  # frames up to this size are read for a HELLO's mode (one-owner modes only)
RESTART_BACKOFF_MAX_S = 30.0


def default_worker_argv() -> list[str]:
    """The command that starts a worker (the front end appends ``--spec PATH``)."""
    return [sys.executable, "-m", "rx_node.worker"]


def peek(frame, limits: DecodeLimits = DecodeLimits()) -> dict | None:
    """The envelope of a request frame (bytes or a buffer) as a dict (``type``, ``session_id``, ``seq``...),
    or None; decoded under ``limits`` as the workers decode it (:func:`~common.wire.protocol.unpack`)."""
    try:
        body = unpack(frame, limits, strict_map_key=False)
    except ProtocolError:
        return None
    return body if isinstance(body, dict) else None


# ---------------------------------------------------------------- front end


@dataclass
class _Worker:
    """A worker slot: a local process (``proc``; None while it waits for its restart) or, with
    ``remote_ident``, a worker on another host that joined over ``--worker-bind`` (no process here)."""

    index: int
    generation: int
    proc: subprocess.Popen | None
    started: float
    sock: zmq.Socket
    remote_ident: bytes | None = None
    ready: bool = False
    last_seen: float = 0.0
    inflight: dict = field(default_factory=dict)  # reqid -> (peer, request_ids or None, key) not yet answered
    beat_sent: float = 0.0
    counters: dict = field(default_factory=dict)  # its RxStats as last reported
    pid: int | None = None  # as announced in READY (a remote worker's is on its own host)

    @property
    def ident(self) -> bytes:
        return self.remote_ident or f"w{self.index}g{self.generation}".encode()

    @property
    def live(self) -> bool:
        """A process here, or a remote worker still counted."""
        return self.proc is not None or self.remote_ident is not None

    @property
    def where(self) -> str:
        return f"pid {self.pid or (self.proc.pid if self.proc else '?')}" + (" remote" if self.remote_ident else "")


class FrontEnd:
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
        if workers < (0 if remote_bind else 1):
            raise ValueError(f"--workers {workers}: an RX needs at least 1 worker (0 only with workers on "
                             "other hosts, --worker-bind)")
        self.opts, self.link_table, self.sock = dict(opts), dict(link_table), sock
        self.n_workers = workers
        self.worker_argv = list(worker_argv or default_worker_argv())
        self.modes = list(modes or [])
        self.one_owner = set(one_owner)
        self.one_writer_options = set(one_writer_options)
        self.limits = limits
        self.stats = RxStats()
        self.losses: list[tuple[int, str]] = []
        self._retired = RxStats()  # counters of workers lost or replaced
        self._reqids = itertools.count(1)
        # route -> (worker, last seen): a CURVE key (str), or on a plain socket a TX connection (bytes)
        self._pins: OrderedDict[str | bytes, tuple[int, float]] = OrderedDict()
        self._session_at: OrderedDict[int, int] = OrderedDict()  # plain socket: HELLO's session id -> worker
        self._workers: list[_Worker | None] = [None] * workers
        self._failures = [0] * workers  # consecutive losses before READY (restart back-off)
        self._restart_at = [0.0] * workers
        self.dir = Path(tempfile.mkdtemp(prefix="semalign-rx-"))
        os.chmod(self.dir, 0o700)
        (self.dir / "shared").mkdir(mode=0o700)
        self.endpoint = f"ipc://{self.dir}/workers"
        self._ctx = zmq.Context.instance()
        self.backend = self._ctx.socket(zmq.ROUTER)
        self.backend.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.backend.setsockopt(zmq.SNDHWM, BACKEND_HWM)
        self.backend.setsockopt(zmq.RCVHWM, BACKEND_HWM)
        self.backend.setsockopt(zmq.SNDTIMEO, 0)
        self.backend.setsockopt(zmq.LINGER, 0)
        self.backend.bind(self.endpoint)
        self.remote, self.remote_address, self._remote_ctx, self._remote_auth = None, None, None, None
        if remote_bind:
            self._bind_remote(remote_bind, remote_security or RxSecurity())

    def _bind_remote(self, address: str, security: RxSecurity) -> None:
        """The ROUTER that workers on other hosts join (``semalign rx-worker --connect``): CURVE with the
        RX's own key, its own ZAP handler admitting the keys in ``security.allow_dir`` (never the TXs')."""
        self._remote_ctx = zmq.Context()
        if security.curve:
            self._remote_auth = AllowListAuthenticator(self._remote_ctx, security.allow_dir, role="RX worker")
            self._remote_auth.start()
        self.remote = self._remote_ctx.socket(zmq.ROUTER)
        apply_server(self.remote, security)
        self.remote.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.remote.setsockopt(zmq.SNDHWM, BACKEND_HWM)
        self.remote.setsockopt(zmq.RCVHWM, BACKEND_HWM)
        self.remote.setsockopt(zmq.SNDTIMEO, 0)
        self.remote.setsockopt(zmq.LINGER, 0)
        check_endpoint(address, "worker_bind")
        try:
            self.remote.bind(address)
        except zmq.ZMQError as e:
            raise endpoint_error(address, "worker_bind", e) from e
        self.remote_address = self.remote.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("RX front end: workers on other hosts join at %s (%s)", self.remote_address,
                 f"CURVE, keys admitted from {security.allow_dir}" if security.curve else "plain TCP, --insecure")

    # ------------------------------------------------------------ workers

    def _spec(self, index: int) -> dict:
        """What worker ``index`` is built from: the RX's options (one-writer options for worker 0 only),
        the link table, where to find the front end and the shared state."""
        opts = dict(self.opts)
        if index > 0:
            for name in self.one_writer_options:
                opts.pop(name, None)
        return {"opts": opts, "link_table": self.link_table, "index": index, "frontend": self.endpoint,
                "shared_dir": str(self.dir / "shared"), "front_pid": os.getpid(),
                "log_level": logging.getLevelName(log.getEffectiveLevel())}

    def _start(self, index: int) -> _Worker:
        old = self._workers[index]
        generation = old.generation + 1 if old else 0
        spec = self.dir / f"worker-{index}.json"
        write_spec(spec, self._spec(index))
        proc = subprocess.Popen([*self.worker_argv, "--spec", str(spec), "--generation", str(generation)],
                                stdin=subprocess.DEVNULL)
        w = _Worker(index, generation, proc, time.monotonic(), self.backend)
        w.last_seen = w.started
        self._workers[index] = w
        log.info("RX worker %d started (pid %d, generation %d)", index, proc.pid, generation)
        return w

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start every worker and wait until all announced READY; RuntimeError if one cannot start."""
        for i in range(self.n_workers):
            self._start(i)
        deadline = time.monotonic() + timeout_s
        while not all(w.ready for w in self._workers[:self.n_workers]):
            for w in self._workers[:self.n_workers]:
                code = w.proc.poll()
                if code is not None:
                    raise RuntimeError(f"RX worker {w.index} exited with status {code} while starting "
                                       f"(its log lines above say why)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"RX workers not ready within {timeout_s:.0f} s")
            if self.backend.poll(100, zmq.POLLIN):
                self._from_worker(self.backend)

    def _lost(self, w: _Worker, why: str) -> None:
        """Worker ``w`` is gone (``why``): answer what it held, drop its pins, restart it (with back-off);
        a remote worker's slot is closed instead (its host restarts it, and it joins again)."""
        log.error("RX worker %d (%s) %s; %d request%s it held answered no_session, %s", w.index, w.where, why,
                  len(w.inflight), "" if len(w.inflight) == 1 else "s",
                  "closing its slot" if w.remote_ident else "restarting it")
        self.losses.append((w.index, why))
        if w.remote_ident is not None:
            self._to_worker(w, [b"S"])  # a hung remote worker that wakes up stops instead of serving stale sessions
        elif w.proc.poll() is None:
            w.proc.kill()
        if w.proc is not None:
            try:
                w.proc.wait(5)
            except subprocess.TimeoutExpired:
                log.error("RX worker %d (pid %d) did not exit after SIGKILL", w.index, w.proc.pid)
        for peer, ids, _ in w.inflight.values():
            self._refuse(peer, ids, f"RX worker {w.index} {why} while serving this request; the session "
                                       "is gone: re-open it")
        w.inflight.clear()
        for route in [p for p, (i, _) in self._pins.items() if i == w.index]:
            del self._pins[route]
        for sid in [k for k, i in self._session_at.items() if i == w.index]:
            del self._session_at[sid]
        self._retire(w)
        if w.remote_ident is not None:
            w.ready, w.remote_ident = False, None  # the slot stays (its index is in the losses), never reused
            return
        self._failures[w.index] = self._failures[w.index] + 1 if not w.ready else 0
        delay = min(RESTART_BACKOFF_MAX_S, 0.5 * 2 ** self._failures[w.index]) if self._failures[w.index] else 0.0
        self._restart_at[w.index] = time.monotonic() + delay
        w.ready = False
        w.proc = None  # marks it as waiting for its restart
        if not delay:
            self._start(w.index)

    def _retire(self, w: _Worker) -> None:
        c = w.counters
        self._retired.replayed += c.get("replayed", 0)
        for k, v in c.get("errors_by_code", {}).items():
            self._retired.errors_by_code[k] = self._retired.errors_by_code.get(k, 0) + v
        w.counters = {}

    def _check_workers(self) -> None:
        now = time.monotonic()
        for i, w in enumerate(self._workers):
            if not w.live:
                if i < self.n_workers and now >= self._restart_at[i]:
                    self._start(i)
                continue
            code = w.proc.poll() if w.proc is not None else None
            if code is not None:
                self._lost(w, f"exited with status {code}" + (f" (signal {-code})" if code < 0 else ""))
            elif w.ready and now - w.last_seen > LIVENESS * HEARTBEAT_S:
                self._lost(w, f"is hung: no heartbeat for {now - w.last_seen:.1f} s")
            elif not w.ready and now - w.started > READY_TIMEOUT_S:
                self._lost(w, f"not ready within {READY_TIMEOUT_S:.0f} s")
            elif w.ready and now - w.beat_sent >= HEARTBEAT_S:
                w.beat_sent = now
                self._to_worker(w, [b"H"])

    def _to_worker(self, w: _Worker, parts: list) -> bool:
        try:
            w.sock.send_multipart([w.ident, *parts], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                return False
            raise

    # ------------------------------------------------------------ TX -> worker

    def _active_pins(self) -> list[int]:
        """Per worker, the pinned TX connections active within :data:`PIN_ACTIVE_S` (a connection a TX
        dropped stays pinned, idle, until forgotten: it must not count against its worker)."""
        counts, cutoff = [0] * len(self._workers), time.monotonic() - PIN_ACTIVE_S
        for peer in reversed(self._pins):  # most recently active last
            index, seen = self._pins[peer]
            if seen < cutoff:
                break
            counts[index] += 1
        return counts

    def _pick(self, peer: bytes, frames: list, owner: str | None = None) -> _Worker | None:
        """The worker for a TX's frame: under CURVE the one its key is pinned to, on a plain socket the one
        its connection (or its HELLO's session id) is pinned to; a new route goes to the least loaded."""
        target, sid = None, None
        hello = None
        if len(frames) == 1 and len(frames[0]) <= HELLO_PEEK_BYTES:
            body = peek(frames[0].buffer if isinstance(frames[0], zmq.Frame) else frames[0], self.limits)
            if body and body.get("type") == "HELLO":
                hello = body
        if hello is not None and hello.get("mode") in self.one_owner:
            target = 0
        elif hello is not None and isinstance(hello.get("session_id"), int):
            sid = hello["session_id"]
            held = self._session_at.get(sid)  # a worker holds this session id: it decides who may have it
            if held is not None and not (self._workers[held] and self._workers[held].ready):
                held = None
            if owner is None:
                target = held  # plain socket: the connection follows its session (the worker checks the credential)
            elif held is not None and held != (self._pins.get(owner) or (None,))[0]:
                return self._workers[held]  # another key's session id: that worker refuses it (session_owner)
        route = owner if owner is not None else peer
        pinned = self._pins.get(route)
        index = pinned[0] if target is None and pinned else target
        w = self._workers[index] if index is not None else None
        if w is None or not w.ready:
            ready = [x for x in self._workers if x.ready]
            if target is not None or not ready:  # a one-owner mode's worker 0 is not ready
                return None
            active = self._active_pins()
            # fewest active pins; on a tie not worker 0 when it carries a one-owner mode (the federation)
            w = min(ready, key=lambda x: (active[x.index], x.index == 0 and bool(self.one_owner), x.index))
        self._pins.pop(route, None)
        self._pins[route] = (w.index, time.monotonic())  # most recently active last
        while len(self._pins) > MAX_PINS:
            self._pins.popitem(last=False)
        if sid is not None:
            self._session_at.pop(sid, None)
            self._session_at[sid] = w.index
            while len(self._session_at) > MAX_PINS:
                self._session_at.popitem(last=False)
        return w

    def _from_tx(self) -> None:
        peer, frames, owner = self.sock.recv_frames()  # no frame of a message of several (they are refused)
        w = self._pick(peer, frames, owner)
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

    def _send_tx(self, peer: bytes, replies: list, w: _Worker | None = None, key: str | None = None) -> None:
        """Queue ``replies`` for ``peer`` (:func:`~rx_node.serving.send_replies`: large ones within the
        sender ``key``'s budget); a connection that left or stopped reading is unpinned, and its worker told."""
        gone = send_replies(self.sock, peer, key, replies, self.stats.replies_dropped)
        if gone is not None:  # the peer left or stopped reading: never block the others
            log.warning("%s; detaching the connection from its sessions", gone)
            self._pins.pop(peer, None)  # a plain connection's pin (a key's pin stays: its other connections)
            if w is not None and w.ready:
                self._to_worker(w, [b"G", peer])

    # ------------------------------------------------------------ worker -> TX

    def _join(self, ident: bytes) -> None:
        """A worker on another host asks to join (``JOIN``): give it a slot and its spec (``SPEC``)."""
        index = len(self._workers)
        spec = self._spec(index)
        spec.update(frontend=None, shared_dir=None, front_pid=None)  # its own host: its own shared state
        w = _Worker(index, 0, None, time.monotonic(), self.remote, remote_ident=ident)
        w.last_seen = w.started
        if not self._to_worker(w, [b"SPEC", json.dumps(to_json(spec)).encode()]):
            log.warning("RX worker joining from %r: it takes no SPEC; ignored", ident)
            return
        self._workers.append(w)
        log.info("RX worker %d joined from another host (identity %s)", index, ident.decode("ascii", "replace"))

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

    # ------------------------------------------------------------ loop

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

    def stop_workers(self, timeout_s: float = 15.0) -> None:
        """Ask every worker to stop (its held replies still go out), forward what they send, then close.
        A remote worker counts as stopped when its ``BYE`` arrives (or at ``timeout_s``)."""
        live = [w for w in self._workers if w is not None and w.proc is not None]
        remote = [w for w in self._workers if w is not None and w.remote_ident is not None]
        for w in live + remote:
            if not self._to_worker(w, [b"S"]) and w.proc is not None:
                w.proc.terminate()
        backends = [self.backend] + ([self.remote] if self.remote is not None else [])
        deadline = time.monotonic() + timeout_s

        def pending() -> bool:
            return any(w.proc.poll() is None for w in live) or any(w.remote_ident for w in remote)

        while pending() and time.monotonic() < deadline:
            for backend in backends:
                if backend.poll(25, zmq.POLLIN):
                    self._from_worker(backend)
        for backend in backends:
            while backend.poll(0, zmq.POLLIN):
                self._from_worker(backend)
        for w in live:
            if w.proc.poll() is None:
                log.warning("RX worker %d (pid %d) did not stop within %.0f s; killing it", w.index, w.proc.pid,
                            timeout_s)
                w.proc.kill()
                w.proc.wait()

    def worker_pids(self) -> list[int | None]:
        """The local workers' pids (None: waiting for a restart); remote workers' are on their hosts."""
        return [w.proc.pid if w is not None and w.proc is not None else None for w in self._workers[:self.n_workers]]

    def close(self) -> None:
        for w in self._workers:
            if w is not None and w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
        self.backend.close(linger=0)
        if self.remote is not None:
            self.remote.close(linger=0)
            if self._remote_auth is not None:
                self._remote_auth.stop()
            self._remote_ctx.term()
        shutil.rmtree(self.dir, ignore_errors=True)
