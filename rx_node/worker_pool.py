"""The RX front end's worker processes (:class:`WorkerPool`): start them, watch them, replace the lost
ones, admit workers on other hosts, stop them. The front end (:class:`rx_node.workers.FrontEnd`) is a pool
that also routes the TXs' frames to them.

**What a worker is given** (its spec, :func:`~rx_node.worker_wire.write_spec`): the RX's options and
link table. A mode's options that name one-writer state on disk
(``Mode.rx_one_writer_options``: pca-lora's ``adapter_bank``) are given to
worker 0 only; the others keep that state in memory. State a mode shares
between workers (slf's kept alignments) goes to ``DIR/shared``
(:meth:`~common.modes.base.RxHalf.share_state`).

**Heartbeats**: the front end sends ``H`` to each worker every
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

**Workers on other hosts** (``semalign rx --worker-bind tcp://0.0.0.0:PORT
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
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from common.net.security import AllowListAuthenticator, RxSecurity, apply_server
from common.net.transport import check_endpoint, endpoint_error
from rx_node.sessions import RxStats
from rx_node.worker_wire import BACKEND_HWM, HEARTBEAT_S, LIVENESS, READY_TIMEOUT_S, to_json, write_spec

log = logging.getLogger("semalign.rx")

RESTART_BACKOFF_MAX_S = 30.0


def default_worker_argv() -> list[str]:
    """The command that starts a worker (the front end appends ``--spec PATH``)."""
    return [sys.executable, "-m", "rx_node.worker"]


def _worker_router(sock: zmq.Socket) -> None:
    """A ROUTER to workers: unroutable sends fail at once (``ROUTER_MANDATORY``, no send timeout),
    :data:`BACKEND_HWM` messages each way, no linger."""
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, BACKEND_HWM)
    sock.setsockopt(zmq.RCVHWM, BACKEND_HWM)
    sock.setsockopt(zmq.SNDTIMEO, 0)
    sock.setsockopt(zmq.LINGER, 0)


@dataclass
class WorkerSlot:
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


class WorkerPool(ABC):
    """``workers`` local worker processes (and, with ``remote_bind``, workers on other hosts), each in a
    slot (:class:`WorkerSlot`); see the module docstring.

    ``opts``/``link_table``: the RX's options, handed to every worker (less ``one_writer_options`` for
    workers 1..W-1); ``worker_argv``: the command that starts a worker. :attr:`losses` lists
    ``(index, reason)`` of every worker lost. A subclass answers what a lost worker held
    (:meth:`_abandon`) and reads the workers' messages (:meth:`_from_worker`).
    """

    def __init__(self, opts: dict, link_table: dict, workers: int, worker_argv: list[str] | None = None,
                 one_writer_options: set[str] = frozenset(), remote_bind: str | None = None,
                 remote_security: RxSecurity | None = None):
        if workers < (0 if remote_bind else 1):
            raise ValueError(f"--workers {workers}: an RX needs at least 1 worker (0 only with workers on "
                             "other hosts, --worker-bind)")
        self.opts, self.link_table = dict(opts), dict(link_table)
        self.n_workers = workers
        self.worker_argv = list(worker_argv or default_worker_argv())
        self.one_writer_options = set(one_writer_options)
        self.losses: list[tuple[int, str]] = []
        self._retired = RxStats()  # counters of workers lost or replaced
        self._workers: list[WorkerSlot | None] = [None] * workers
        self._failures = [0] * workers  # consecutive losses before READY (restart back-off)
        self._restart_at = [0.0] * workers
        self.dir = Path(tempfile.mkdtemp(prefix="semalign-rx-"))
        os.chmod(self.dir, 0o700)
        (self.dir / "shared").mkdir(mode=0o700)
        self.endpoint = f"ipc://{self.dir}/workers"
        self._ctx = zmq.Context.instance()
        self.backend = self._ctx.socket(zmq.ROUTER)
        _worker_router(self.backend)
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
        _worker_router(self.remote)
        check_endpoint(address, "worker_bind")
        try:
            self.remote.bind(address)
        except zmq.ZMQError as e:
            raise endpoint_error(address, "worker_bind", e) from e
        self.remote_address = self.remote.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("RX front end: workers on other hosts join at %s (%s)", self.remote_address,
                 f"CURVE, keys admitted from {security.allow_dir}" if security.curve else "plain TCP, --insecure")

    @abstractmethod
    def _abandon(self, w: WorkerSlot, why: str) -> None:
        """Worker ``w`` is gone (``why``): answer the requests it held and drop its routes."""

    @abstractmethod
    def _from_worker(self, sock: zmq.Socket) -> None:
        """Take one message from a worker on ``sock`` (``READY``, ``H``, ``BYE``, ``JOIN``, a reply)."""

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

    def _start(self, index: int) -> WorkerSlot:
        old = self._workers[index]
        generation = old.generation + 1 if old else 0
        spec = self.dir / f"worker-{index}.json"
        write_spec(spec, self._spec(index))
        proc = subprocess.Popen([*self.worker_argv, "--spec", str(spec), "--generation", str(generation)],
                                stdin=subprocess.DEVNULL)
        w = WorkerSlot(index, generation, proc, time.monotonic(), self.backend)
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

    def _lost(self, w: WorkerSlot, why: str) -> None:
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
        self._abandon(w, why)  # its requests answered, its pins dropped
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

    def _retire(self, w: WorkerSlot) -> None:
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

    def _to_worker(self, w: WorkerSlot, parts: list) -> bool:
        try:
            w.sock.send_multipart([w.ident, *parts], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                return False
            raise

    def _join(self, ident: bytes) -> None:
        """A worker on another host asks to join (``JOIN``): give it a slot and its spec (``SPEC``)."""
        index = len(self._workers)
        spec = self._spec(index)
        spec.update(frontend=None, shared_dir=None, front_pid=None)  # its own host: its own shared state
        w = WorkerSlot(index, 0, None, time.monotonic(), self.remote, remote_ident=ident)
        w.last_seen = w.started
        if not self._to_worker(w, [b"SPEC", json.dumps(to_json(spec)).encode()]):
            log.warning("RX worker joining from %r: it takes no SPEC; ignored", ident)
            return
        self._workers.append(w)
        log.info("RX worker %d joined from another host (identity %s)", index, ident.decode("ascii", "replace"))

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
