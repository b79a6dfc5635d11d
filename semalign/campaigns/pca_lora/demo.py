"""The loopback demo: RX and TX as two separate OS processes over ZeroMQ on 127.0.0.1.

The TX starts once the RX says it is serving; while it runs, an RX that exits
stops the demo at once. When a process fails, the error names it and quotes
its own error line from its log (``OUT/rx.log``, ``OUT/tx.log``), so the
cause is on screen, not in a file. A demo into an ``--out`` that holds an
earlier run's results moves them aside first (``OUT/previous-TIME/``).
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from pathlib import Path

from common.files import atomic_write_json
from common.results.log import load_results
from semalign.campaigns.machine import machine_info
from semalign.campaigns.processes import free_port, launch, stop_process, throwaway_keys
from semalign.campaigns.pca_lora.runner import ensure_artifacts
from tx_node.app import RESULT_FILES, set_aside

log = logging.getLogger("semalign.demo")

DEMO_FILES = RESULT_FILES + ("rx.log", "tx.log")
READY = "serving"  # the RX's log line when it takes sessions: "RX pid N serving MODES on ADDRESS"
_TRACEBACK_LAST = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failed|Unavailable)\b.*")


def child_error(log_path: Path) -> str | None:
    """The line of a daemon's log that says why it failed: its ``error: ...`` line, else the exception
    that ended a traceback, else its last ERROR (or CRITICAL) line, else its last line."""
    try:
        lines = [ln.strip() for ln in Path(log_path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    for pick in (lambda ln: ln.startswith("error: "), _TRACEBACK_LAST.match,
                 lambda ln: " ERROR " in ln or " CRITICAL " in ln):
        found = [ln for ln in lines if pick(ln)]
        if found:
            return found[-1]
    return lines[-1] if lines else None


def _failed(role: str, proc: subprocess.Popen, log_path: Path, what: str) -> RuntimeError:
    line = child_error(log_path) or "(its log is empty)"
    return RuntimeError(f"the {role} {what} (exit status {proc.returncode}): {line} [full log: {log_path}]")


def _wait_ready(rx: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Until the RX logs that it is serving; RuntimeError quoting its error if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if rx.poll() is not None:
            raise _failed("RX", rx, log_path, "exited before it served")
        try:
            if READY in log_path.read_text(errors="replace"):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the RX did not start serving within {timeout_s:.0f} s [full log: {log_path}]")


def run_demo(rounds: int, out: Path, dataset: str, trace: str, artifacts: Path | None,
             data_dir: str | None, tx_options: dict, rx_options: dict,
             timeout_s: float = 1800.0) -> dict:
    """Start the RX, run the TX to completion, stop the RX; returns ``results.json``.

    ``tx_options``/``rx_options``: extra daemon options (name -> value).
    Daemon logs go to ``out/rx.log`` and ``out/tx.log``.
    """
    artifacts = ensure_artifacts(dataset, artifacts, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    moved = set_aside(out, DEMO_FILES)
    if moved is not None:
        log.warning("%s held an earlier run's results: moved them to %s", out, moved)
    address = f"tcp://127.0.0.1:{free_port()}"
    common = {"artifacts": artifacts, "dataset": dataset}
    # throwaway CURVE keys in out/keys: the demo runs the same authenticated, encrypted path as a lab
    rx_curve, tx_curve = throwaway_keys(out / "keys")
    rx_log, tx_log = out / "rx.log", out / "tx.log"
    rx = launch("rx", {"bind": address, "link": "loopback", "trace": trace, "trace_rounds": rounds, **common,
                       **rx_curve, **rx_options}, rx_log)
    log.info("RX pid %d starting on %s (logs in %s)", rx.pid, address, out)
    tx = None
    try:
        _wait_ready(rx, rx_log, timeout_s)
        tx = launch("tx", {"connect": address, "rounds": rounds, "out": out, "data_dir": data_dir, **common,
                           **tx_curve, **tx_options}, tx_log)
        log.info("RX serving; TX pid %d started", tx.pid)
        deadline = time.monotonic() + timeout_s
        while tx.poll() is None:
            if rx.poll() is not None:
                stop_process(tx, timeout_s=10)
                raise _failed("RX", rx, rx_log, "exited while the TX was running")
            if time.monotonic() > deadline:
                stop_process(tx, timeout_s=10)
                raise RuntimeError(f"the TX did not finish within {timeout_s:.0f} s [full log: {tx_log}]")
            time.sleep(0.1)
        if tx.returncode != 0:
            raise _failed("TX", tx, tx_log, "failed")
    finally:
        if tx is not None and tx.poll() is None:
            stop_process(tx, timeout_s=10)
        stop_process(rx)
    return record_reproduction(out)


def record_reproduction(out: Path) -> dict:
    """Add to ``out/results.json`` what a rerun needs to compare against: the machine both daemons ran
    on (:func:`machine_info`) and each round's adaptation steps (``step_counts``: round, alpha, steps,
    steps per stage, how they were chosen, precision, whether the wall-clock cap cut them). Returns
    the updated results."""
    results = load_results(out)
    steps = []
    for r in results.get("rounds", []):
        a = r.get("adapt") or {}
        steps.append({"round": r.get("round"), "alpha": r.get("alpha"), "n_train": r.get("n_train"),
                      "steps": a.get("steps"), "stage_steps": a.get("stage_steps"), "steps_by": a.get("steps_by"),
                      "precision": a.get("precision"), "cut_by_cap": a.get("cut_by_cap")})
    results["machine"] = machine_info()
    results["step_counts"] = steps
    atomic_write_json(out / "results.json", results)
    return results


def check_demo(g: dict, config: Path | None) -> None:
    """Every option of a pca-lora demo, checked before a process starts (ValueError naming the option):
    the trace, the dataset, --data-dir, the numbers the daemons' configs check, the --config tables."""
    from common.data.datasets import check_data_dir
    from common.link.channel import build_trace
    from common.modes.pca_lora.adapt_config import AdaptConfig
    from common.modes.pca_lora.tx import PcaLoraTxConfig
    from semalign.cli_support import RX, TX
    from semalign.config import load_toml, merged_options
    from semalign.options import check_choices

    if g["rounds"] < 1:
        raise ValueError(f"--rounds {g['rounds']}: the demo needs at least one round")
    check_choices({"dataset": g["dataset"]}, "tx")
    try:
        build_trace(str(g["trace"]), g["rounds"])
    except ValueError as e:
        raise ValueError(f"--trace {g['trace']}: {e}") from e
    check_data_dir(g["data_dir"])
    if g["artifacts"] is not None and Path(g["artifacts"]).exists() and not Path(g["artifacts"]).is_dir():
        raise ValueError(f"--artifacts {g['artifacts']}: a file, not an artifacts directory")
    if Path(g["out"]).exists() and not Path(g["out"]).is_dir():
        raise ValueError(f"--out {g['out']}: a file, not a directory")
    PcaLoraTxConfig(**{k: g[k] for k in ("n_test", "deadline_s", "value_dtype") if g[k] is not None})
    if g["adapt_steps"] is not None:
        AdaptConfig(steps=g["adapt_steps"])
    cfg = load_toml(config)  # the tables the daemons will read: checked here, not after they started
    for table, specs in (("rx", RX), ("tx", TX)):
        if table in cfg:
            merged_options(cfg, table, {}, set(specs), specs, config)
            check_choices(cfg[table], table)
