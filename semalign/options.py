"""Command-line options of the daemons, generated from the one definition of each option.

The daemon-wide options are declared here; each mode declares its own
(``Mode.rx_options`` / ``Mode.tx_options``, :class:`common.options.Option`).
``semalign rx`` / ``semalign tx`` (and ``rx-node`` / ``tx-node``) get one
``--flag`` per option, ``--config`` TOML tables are checked against the same
names, and the defaults shown in ``--help`` are the values the code applies
(read from the configuration dataclasses that use them), so help, TOML and
code cannot drift apart. A value of None means "not given".
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from common.data.datasets import DATASET_NAMES
from common.link.sidelink import SIDELINKS
from common.modes.base import DEFAULT_MODE, get_mode, mode_names
from common.net.transport import LARGE_REPLY_BYTES, MAX_REPLY_BYTES_PER_KEY
from common.options import Option
from common.wire.protocol import DecodeLimits
from rx_node.app import DEFAULT_BIND, DEFAULT_WORKERS
from tx_node.app import DEFAULT_CONNECT, DEFAULT_OUT, DEFAULT_ROUNDS
from tx_node.daemon import TxConfig

COMMON = [
    Option("mode", str, f"Alignment mode: one of {', '.join(mode_names())} (the RX takes a comma-separated "
           "list of the modes it serves)", DEFAULT_MODE),
    Option("artifacts", Path, "Artifacts directory (codec + model; meta.json names their kinds)",
           "artifacts/<dataset>-d<d_pre>"),
    Option("dataset", str, f"Dataset: one of {', '.join(DATASET_NAMES)}", "mnist"),
    Option("seed", int, "Random seed", 0),
    Option("insecure", bool, "Run plain TCP without CURVE (no authentication, no encryption); "
           "needed when no keys are given"),
]

RX_DAEMON = [
    Option("bind", str, "ZeroMQ address to bind, e.g. tcp://0.0.0.0:5555", DEFAULT_BIND),
    Option("link", str, f"Sidelink backend: {', '.join(sorted(SIDELINKS))}", "loopback"),
    Option("trace", str, "Channel trace for loopback: demo, paper, fading, stress, or a CSV path", "demo"),
    Option("trace_rounds", int, "Rounds the trace spans before it repeats", 9),
    Option("link_rate_bps", float, "Nominal link rate for the ip backend, bit/s"),
    Option("max_payload_bytes", int, "Largest message accepted, bytes", DecodeLimits.max_message_bytes),
    Option("threads", int, "CPU threads for training and inference; small MLPs run best on 1", 1),
    Option("max_rounds", int, "Exit after answering this many rounds (default: serve until SIGTERM)"),
    Option("workers", int, "Worker processes serving the sessions: 1 serves in this process; W > 1 runs a "
           "front end (socket, CURVE, allow-list) and W workers, each TX key (plain TCP: connection) pinned to "
           "one; with --worker-bind, W local workers plus those that join from other hosts (W = 0: only those)",
           DEFAULT_WORKERS),
    Option("curve_secret", Path, "CURVE: the RX's secret certificate NAME.key_secret (from `semalign keygen`)"),
    Option("curve_allow", Path, "CURVE: directory of the TX public certificates (*.key) admitted; "
           "others are refused and logged"),
    Option("worker_bind", str, "ZeroMQ address where RX workers on other hosts join this RX's front end "
           "(`semalign rx-worker --connect`), e.g. tcp://0.0.0.0:5556; CURVE with the RX's own key; runs the "
           "front end even with --workers 1 (none by default)"),
    Option("worker_allow", Path, "CURVE: directory of the public certificates (*.key) of the RX workers "
           "allowed to join at --worker-bind (a list apart from the TXs')"),
    Option("max_vectors", int, "Hard limit: vectors per payload", DecodeLimits.max_vectors),
    Option("max_alpha", int, "Hard limit: alpha per payload", DecodeLimits.max_alpha),
    Option("max_str_len", int, "Hard limit: msgpack string length, bytes", DecodeLimits.max_str_len),
    Option("max_container_len", int, "Hard limit: msgpack array/map length", DecodeLimits.max_container_len),
    Option("max_objects", int, "Hard limit: msgpack objects in one message (values, keys, containers)",
           DecodeLimits.max_objects),
    Option("max_reply_bytes_per_key", int, f"Hard limit: bytes of large replies (from {LARGE_REPLY_BYTES} B, e.g. "
           "slf decoder downloads) queued for one TX key (plain TCP: connection) and not yet taken by its "
           "connections; the next is answered ERROR replies_unread (one is always sent when none is queued)",
           MAX_REPLY_BYTES_PER_KEY),
]

TX_DAEMON = [
    Option("connect", str, "ZeroMQ address of the RX, e.g. tcp://10.0.0.2:5555", DEFAULT_CONNECT),
    Option("rounds", int, "Rounds to run", DEFAULT_ROUNDS),
    Option("out", Path, "Directory for results.json and results.jsonl", DEFAULT_OUT),
    Option("data_dir", str, "Directory with the dataset's files (IDX, mnist.npz, TSV); else the packaged copy"),
    Option("result_timeout_s", float, "How long to wait for a round's reply, s", TxConfig.result_timeout_s),
    Option("hello_timeout_s", float, "How long to wait for each HELLO reply, s", TxConfig.hello_timeout_s),
    Option("connect_timeout_s", float, "Give up on reaching the RX after this long, s (at the start, and "
           "after a lost connection); raise it to ride out long RX restarts", TxConfig.connect_timeout_s),
    Option("hello_attempts", int, "HELLO attempts before giving up on the RX (or --connect-timeout-s, "
           "whichever comes first)", TxConfig.hello_attempts),
    Option("round_attempts", int, "Sends of a round's request when its reply is lost (timeout, RX restart)",
           TxConfig.round_attempts),
    Option("backoff_s", float, "First back-off before a reconnect, s; doubles per attempt", TxConfig.backoff_s),
    Option("backoff_max_s", float, "Longest back-off between reconnects, s", TxConfig.backoff_max_s),
    Option("stop_grace_s", float, "On SIGTERM/SIGINT, wait this long for the round in flight, s",
           TxConfig.stop_grace_s),
    Option("curve_secret", Path, "CURVE: the TX's secret certificate NAME.key_secret (from `semalign keygen`)"),
    Option("curve_server_public", Path, "CURVE: the RX's public certificate (its NAME.key)"),
    Option("resume", bool, "Continue the campaign in --out: skip rounds recorded as ok/failed in results.jsonl"),
]


def _with_modes(daemon: list[Option], side: str) -> list[Option]:
    """Daemon options, then each mode's (its name before the help); names are unique.

    A name two modes declare must mean the same in both (type, default and help), else ValueError at
    start-up: a mode cannot quietly take over another's option. A mode option that repeats a daemon
    option is a ValueError too.
    """
    out = list(COMMON) + list(daemon)
    daemon_names = {o.name for o in out}
    owners = option_modes(side)
    declared: dict[str, Option] = {}
    for name in mode_names():
        for o in getattr(get_mode(name), f"{side}_options"):
            if o.name in daemon_names:
                raise ValueError(f"mode {name} redeclares the daemon option {o.name!r}")
            first = declared.setdefault(o.name, o)
            if first != o:
                raise ValueError(f"mode {name} declares --{o.name.replace('_', '-')} unlike "
                                 f"{', '.join(owners[o.name])}: one name, one meaning")
    for o in declared.values():
        out.append(Option(o.name, o.type, f"{', '.join(owners[o.name])}: {o.help}", o.default))
    return out


def option_modes(side: str) -> dict[str, list[str]]:
    """Mode option name -> the modes (sorted) whose ``side`` (``rx``/``tx``) half declares it."""
    owners: dict[str, list[str]] = {}
    for name in mode_names():
        for o in getattr(get_mode(name), f"{side}_options"):
            owners.setdefault(o.name, []).append(name)
    return owners


def check_modes(opts: dict, side: str) -> None:
    """An option given for a mode this command does not run is a ValueError naming the option, its
    modes and the modes run (``opts['mode']``: the RX's comma-separated list, the TX's one mode)."""
    run = {m.strip() for m in str(opts.get("mode") or DEFAULT_MODE).split(",")}
    for option, modes in option_modes(side).items():
        if opts.get(option) is not None and not run.intersection(modes):
            flag = f"--{option.replace('_', '-')}"
            raise ValueError(f"{flag} is an option of mode {' and '.join(modes)}, and this {side.upper()} "
                             f"runs --mode {','.join(sorted(run))}: drop {flag} or run its mode")


def rx_options() -> list[Option]:
    return _with_modes(RX_DAEMON, "rx")


def tx_options() -> list[Option]:
    return _with_modes(TX_DAEMON, "tx")


def by_name(options: list[Option]) -> dict[str, Option]:
    return {o.name: o for o in options}


def parameter(option: Option) -> inspect.Parameter:
    """The typer parameter of ``option`` (None when not given, so a TOML value can apply)."""
    info = typer.Option(None, f"--{option.name.replace('_', '-')}", help=option.help_text)
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                             annotation=Optional[option.type])


def command(name: str, options: list[Option], run: Callable[[dict, Any], None], doc: str) -> Callable:
    """A typer command ``name`` taking ``options`` (+ ``--config``, ``--log-level``) that calls ``run(cli, config)``.

    ``cli``: option name -> value given on the command line (None when not
    given) plus ``log_level``; ``config``: the path of the TOML file or None.
    """
    params = [parameter(o) for o in options] + [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                          default=typer.Option(None, "--config", help="TOML file with options (command line wins)")),
        inspect.Parameter("log_level", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                          default=typer.Option("INFO", help="Log level: DEBUG, INFO, WARNING, ERROR")),
    ]

    def cmd(**kwargs):
        config = kwargs.pop("config")
        run(kwargs, config)

    cmd.__signature__ = inspect.Signature(params)
    cmd.__annotations__ = {p.name: p.annotation for p in params}
    cmd.__doc__ = doc
    cmd.__name__ = cmd.__qualname__ = name
    return cmd


# ---------------------------------------------------------------- validation


def _choose(option: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"--{option.replace('_', '-')} {value}: not one semalign knows; choose one of "
                         f"{', '.join(choices)}")


def check_choices(opts: dict, side: str) -> None:
    """Values that must come from a fixed list: ``dataset``, ``mode`` (the RX: a comma-separated list of
    them) and the RX's ``link``; ValueError names the option, the value and the choices.

    Ranges and the other checks of single values belong to the configuration dataclasses that use
    them (``TxConfig``, ``DecodeLimits``, each mode's config); their ValueErrors reach the user as
    one ``error:`` line too.
    """
    if opts.get("dataset") is not None:
        _choose("dataset", opts["dataset"], DATASET_NAMES)
    if opts.get("mode") is not None:
        modes = [m.strip() for m in str(opts["mode"]).split(",")] if side == "rx" else [opts["mode"]]
        if not all(modes):
            raise ValueError(f"--mode {opts['mode']!r}: an empty mode name; give one of {', '.join(mode_names())}"
                             + (" or a comma-separated list of them" if side == "rx" else ""))
        for m in modes:
            _choose("mode", m, mode_names())
    if side == "rx" and opts.get("link") is not None:
        _choose("link", opts["link"], sorted(SIDELINKS))


# options whose range no configuration dataclass checks: name -> (lowest allowed, what it means)
_LOWEST = {"rounds": (0, "rounds to run"), "max_rounds": (0, "rounds to answer before exiting"),
           "threads": (1, "CPU threads"), "workers": (0, "RX worker processes (0: all on other hosts)"), "trace_rounds": (1, "rounds the trace spans"),
           "max_reply_bytes_per_key": (1, "bytes of large replies queued per key")}


def check_ranges(opts: dict) -> None:
    """The daemon-level numbers no configuration dataclass checks (the rest are checked where they are
    used): ValueError naming the option and the allowed range."""
    for name, (lowest, what) in _LOWEST.items():
        value = opts.get(name)
        if value is not None and value < lowest:
            raise ValueError(f"--{name.replace('_', '-')} {value}: {what} must be >= {lowest}")
    rate = opts.get("link_rate_bps")
    if rate is not None and not rate > 0:
        raise ValueError(f"--link-rate-bps {rate}: the nominal link rate must be > 0 bit/s")
