"""Builds and runs the TX daemon from an options dictionary (CLI + TOML)."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from common.modes.base import DEFAULT_MODE, get_mode
from common.net.security import TxSecurity
from common.net.transport import TxSocket
from common.results.log import ResultsLog, load_results
from tx_node.daemon import TxConfig, TxNode

TX_CONFIG_KEYS = tuple(TxConfig.__dataclass_fields__)
DEFAULT_CONNECT = "tcp://127.0.0.1:5555"
DEFAULT_OUT = "runs/latest"
DEFAULT_ROUNDS = 9

log = logging.getLogger("semalign.tx")


def previous_campaign(out: Path, mode: str, fingerprint: str) -> dict:
    """The config of the campaign in ``out`` to resume ({} if none); refuses another mode or artifacts."""
    if not (out / "results.json").exists():
        return {}
    try:
        config = load_results(out).get("config", {})
    except ValueError as e:
        raise ValueError(f"--resume: {out / 'results.json'} unreadable ({e})") from e
    if config.get("mode") not in (None, mode):
        raise ValueError(f"--resume: the campaign in {out} ran mode {config['mode']}, not {mode}")
    if config.get("fingerprint") not in (None, fingerprint):
        raise ValueError(f"--resume: the campaign in {out} used artifacts {str(config['fingerprint'])[:12]}..., "
                         f"these are {fingerprint[:12]}...")
    return config


RESULT_FILES = ("results.json", "results.jsonl", "results.jsonl.corrupt", "session.credential")
CREDENTIAL_FILE = "session.credential"


def session_credential(out: Path, resume: bool) -> bytes | None:
    """The session credential of the campaign in ``out`` (``--resume``), else a fresh one kept there (0600).

    On a plain socket the RX binds a session to the credential its HELLO
    carried, so a resumed campaign (same session id) presents the same one.
    None when ``out`` cannot hold it (the node then draws its own).
    """
    path = out / CREDENTIAL_FILE
    if resume:
        try:
            got = path.read_bytes()
            if 16 <= len(got) <= 64:
                return got
        except FileNotFoundError:
            pass
    cred = os.urandom(16)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cred)
    except OSError as e:
        log.warning("cannot keep the session credential in %s (%s); a resumed campaign on a plain socket "
                    "will need a new session", path, e)
    return cred


def set_aside(out: Path, names: tuple[str, ...] = RESULT_FILES) -> Path | None:
    """Move the earlier campaign's files ``names`` in ``out`` to ``out/previous-YYYYmmdd-HHMMSS/``.

    Nothing is moved (None) unless ``out/results.jsonl`` records at least one
    round: a new campaign never empties earlier results. Returns the folder.
    """
    jsonl = out / "results.jsonl"
    try:
        if not jsonl.read_bytes().strip():
            return None
    except FileNotFoundError:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = out / f"previous-{stamp}", 1
    while dest.exists():
        n += 1
        dest = out / f"previous-{stamp}-{n}"
    dest.mkdir(parents=True)
    for name in names:
        if (out / name).exists():
            os.replace(out / name, dest / name)
    return dest


def run_tx(opts: dict, security: TxSecurity, stop: threading.Event, on_round=None):
    """Run a campaign; writes ``results.json``/``results.jsonl`` to ``opts['out']``.

    ``opts['resume']``: continue the campaign in ``out`` (same session id, so an
    RX that still holds a round answers it from its record), running only the
    rounds of ``0 .. rounds-1`` without a final record.
    """
    mode = opts.get("mode") or DEFAULT_MODE
    half = get_mode(mode).build_tx(opts)
    config = TxConfig(**{k: opts[k] for k in TX_CONFIG_KEYS if opts.get(k) is not None})
    out = Path(opts.get("out") or DEFAULT_OUT)
    resume = bool(opts.get("resume"))
    previous = previous_campaign(out, mode, half.fingerprint) if resume else {}
    if not resume:
        moved = set_aside(out)
        if moved is not None:
            log.warning("--out %s holds an earlier campaign's results; moved them to %s (pass --resume to "
                        "continue a campaign instead, or choose another --out)", out, moved)
    sock = TxSocket(opts.get("connect") or DEFAULT_CONNECT, security=security)
    node = TxNode(half, sock, config, stop, session_id=previous.get("session_id"),
                  credential=session_credential(out, resume))
    record = {"mode": mode, "connect": sock.address, "session_id": node.session_id, "curve": security.curve,
              **half.config_record(), **{k: getattr(config, k) for k in TX_CONFIG_KEYS}}
    results = ResultsLog(out, record, resume=resume)
    rounds = DEFAULT_ROUNDS if opts.get("rounds") is None else int(opts["rounds"])
    try:
        return node.run(rounds, results, on_round=on_round, skip=results.finished())
    finally:
        sock.close()
