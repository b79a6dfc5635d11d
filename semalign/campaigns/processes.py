"""The one daemon launcher: every command that starts RX/TX processes (demo, bench, sweep --live, soak,
the tests) builds their command lines and stops them here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.files import free_port  # noqa: F401  (re-exported: the launcher's callers pick ports with it)
from common.net.security import generate_keypair


def daemon_argv(role: str, options: dict) -> list[str]:
    """``python -m semalign ROLE --name value ...`` for ``options`` (``_`` becomes ``-``).

    True gives a bare flag (``--insecure``); None and False leave the option out.
    """
    if role not in ("rx", "tx"):
        raise ValueError(f"role must be 'rx' or 'tx', got {role!r}")
    argv = [sys.executable, "-m", "semalign", role]
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def launch(role: str, options: dict, log_path: str | Path, env: dict | None = None) -> subprocess.Popen:
    """Start a daemon (``role`` rx or tx) with ``options``; stdout and stderr go to ``log_path``.

    ``env``: extra environment variables (e.g. ``OMP_NUM_THREADS``).
    """
    with open(log_path, "w") as log:
        return subprocess.Popen(daemon_argv(role, options), stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


def stop_process(proc: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """SIGTERM (the daemons finish their round and exit 0), SIGKILL after ``timeout_s``; exit status."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wait_all(procs: list[subprocess.Popen], timeout_s: float) -> None:
    """Wait for every process to exit within ``timeout_s`` s together (at least 1 s each); kill the late."""
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def kill_all(procs: list[subprocess.Popen]) -> None:
    """Kill (SIGKILL) and reap every process of ``procs`` still running (a campaign's clean-up)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def throwaway_keys(key_dir: str | Path, tx_name: str = "tx") -> tuple[dict, dict]:
    """CURVE keys for a one-machine run, as RX and TX options (kept in ``key_dir`` if already there).

    Writes ``key_dir/rx.key[_secret]``, ``key_dir/allow/TX_NAME.key`` and ``key_dir/TX_NAME.key_secret``.
    """
    d = Path(key_dir)
    if not (d / "rx.key_secret").exists():
        generate_keypair(d, "rx")
    if not (d / f"{tx_name}.key_secret").exists():
        public, _ = generate_keypair(d, tx_name)
        (d / "allow").mkdir(exist_ok=True)
        os.replace(public, d / "allow" / public.name)
    rx = {"curve_secret": d / "rx.key_secret", "curve_allow": d / "allow"}
    tx = {"curve_secret": d / f"{tx_name}.key_secret", "curve_server_public": d / "rx.key"}
    return rx, tx
