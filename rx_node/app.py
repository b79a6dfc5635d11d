"""Builds and runs the RX daemon from an options dictionary (CLI + TOML)."""

from __future__ import annotations

import threading

from common.learn.process_tuning import keep_freed_memory
from common.link.sidelink import create_sidelink
from common.modes.base import DEFAULT_MODE, get_mode
from common.net.security import RxSecurity, worker_security
from common.net.transport import MAX_REPLY_BYTES_PER_KEY, RxSocket
from common.wire.protocol import DecodeLimits
from rx_node.daemon import RxNode
from rx_node.serving import serve
from rx_node.sessions import RxStats

DEFAULT_BIND = "tcp://127.0.0.1:5555"


def link_options(opts: dict, link_table: dict) -> tuple[str, dict]:
    """Backend name and its constructor options from the CLI and the ``[link]`` table."""
    options = dict(link_table)
    backend = opts.get("link") or options.pop("backend", "loopback")
    options.pop("backend", None)
    if backend == "loopback":
        for key, opt in (("trace", "trace"), ("rounds", "trace_rounds"), ("seed", "seed")):
            if opts.get(opt) is not None:
                options[key] = opts[opt]
    elif opts.get("link_rate_bps") is not None:
        options["rate_bps"] = opts["link_rate_bps"]
    return backend, options


def rx_limits(opts: dict) -> DecodeLimits:
    """Hard input limits from ``max_payload_bytes, max_vectors, max_alpha, max_str_len, max_container_len,
    max_objects``."""
    given = {k: int(opts[o]) for k, o in (("max_message_bytes", "max_payload_bytes"),
                                          ("max_vectors", "max_vectors"), ("max_alpha", "max_alpha"),
                                          ("max_str_len", "max_str_len"),
                                          ("max_container_len", "max_container_len"),
                                          ("max_objects", "max_objects"))
             if opts.get(o) is not None}
    return DecodeLimits(**given)


def rx_modes(opts: dict) -> list[str]:
    """The modes to serve: ``opts['mode']``, a name or a comma-separated list [default: :data:`DEFAULT_MODE`]."""
    given = opts.get("mode") or DEFAULT_MODE
    names = given if isinstance(given, list) else [m.strip() for m in str(given).split(",") if m.strip()]
    return names


def build_node(opts: dict, link_table: dict, shared_dir=None) -> RxNode:
    """The modes' RX halves, the link and the limits as one :class:`RxNode` (no socket).

    ``shared_dir``: where the halves keep the state that spans sessions, shared
    by the RX's worker processes (:meth:`~common.modes.base.RxHalf.share_state`).
    """
    halves = {name: get_mode(name).build_rx(opts) for name in rx_modes(opts)}
    if shared_dir is not None:
        for half in halves.values():
            half.share_state(shared_dir)
    limits = rx_limits(opts)
    backend, options = link_options(opts, link_table)
    link = create_sidelink(backend, **options)
    return RxNode(halves, link, limits)


def rx_socket(opts: dict, limits: DecodeLimits, security: RxSecurity) -> RxSocket:
    """The RX's public socket (W = 1: the daemon's; W > 1: the front end's) at ``opts['bind']``."""
    per_key = opts.get("max_reply_bytes_per_key")
    return RxSocket(opts.get("bind") or DEFAULT_BIND, limits.max_message_bytes, security=security,
                    max_reply_bytes_per_key=MAX_REPLY_BYTES_PER_KEY if per_key is None else int(per_key))


def build_rx(opts: dict, link_table: dict, security: RxSecurity) -> tuple[RxNode, RxSocket]:
    node = build_node(opts, link_table)
    return node, rx_socket(opts, node.limits, security)


DEFAULT_WORKERS = 1


def run_rx(opts: dict, link_table: dict, security: RxSecurity, stop: threading.Event,
           worker_argv: list[str] | None = None) -> RxStats:
    """Serve until ``stop``: in this process (``opts['workers']`` 1, the default), or with a front end
    and that many worker processes (:mod:`rx_node.workers`; ``worker_argv`` starts one)."""
    workers = int(DEFAULT_WORKERS if opts.get("workers") is None else opts["workers"])
    if workers < (0 if opts.get("worker_bind") else 1):
        raise ValueError(f"--workers {workers}: an RX needs at least 1 worker (0 only with --worker-bind: "
                         "a front end whose workers all run on other hosts)")
    if opts.get("worker_allow") and not opts.get("worker_bind"):
        raise ValueError("--worker-allow without --worker-bind: give the address workers on other hosts join")
    if workers > 1 or opts.get("worker_bind"):
        return _run_front_end(opts, link_table, security, stop, workers, worker_argv)
    import torch  # here, not at the top: `semalign rx --help` must not load it

    torch.set_num_threads(int(opts.get("threads") or 1))
    keep_freed_memory()  # fewer page faults in the fine-tuning loop (common/learn/process_tuning.py)
    node, sock = build_rx(opts, link_table, security)
    try:
        return serve(node, sock, stop, opts.get("max_rounds"))
    finally:
        sock.close()
        node.close()


def _run_front_end(opts: dict, link_table: dict, security: RxSecurity, stop: threading.Event, workers: int,
                   worker_argv: list[str] | None) -> RxStats:
    from rx_node.workers import FrontEnd

    modes = rx_modes(opts)
    classes = [get_mode(m) for m in modes]
    one_owner = {c.name for c in classes if c.rx_one_owner}
    one_writer = {o for c in classes for o in c.rx_one_writer_options}
    limits = rx_limits(opts)
    remote = worker_security(security, opts.get("worker_allow")) if opts.get("worker_bind") else None
    sock = rx_socket(opts, limits, security)
    front = None
    try:
        front = FrontEnd(opts, link_table, sock, workers, worker_argv, modes, one_owner, one_writer, limits,
                         opts.get("worker_bind"), remote)
        front.start()
        return front.serve(stop, opts.get("max_rounds"))
    finally:
        if front is not None:
            front.close()
        sock.close()
