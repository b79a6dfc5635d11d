"""The loopback demo: RX and TX as two separate OS processes over ZeroMQ on 127.0.0.1."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from common.results.log import load_results
from common.net.security import curve_args
from semalign.processes import free_port, stop_process
from semalign.runner import ensure_artifacts

log = logging.getLogger("semalign.demo")


def run_demo(rounds: int, out: Path, dataset: str, trace: str, artifacts: Path | None,
             data_dir: str | None, tx_args: list[str], rx_args: list[str],
             timeout_s: float = 1800.0) -> dict:
    """Start the RX, run the TX to completion, stop the RX; returns ``results.json``.

    ``tx_args``/``rx_args``: extra command-line options for each daemon.
    Daemon logs go to ``out/rx.log`` and ``out/tx.log``.
    """
    artifacts = ensure_artifacts(dataset, artifacts, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    common = ["--artifacts", str(artifacts), "--dataset", dataset]
    # throwaway CURVE keys in out/keys: the demo runs the same authenticated, encrypted path as a lab
    rx_curve, tx_curve = curve_args(out / "keys")
    rx_cmd = [sys.executable, "-m", "semalign", "rx", "--bind", address, "--link", "loopback",
              "--trace", trace, "--trace-rounds", str(rounds), *common, *rx_curve, *rx_args]
    tx_cmd = [sys.executable, "-m", "semalign", "tx", "--connect", address, "--rounds", str(rounds),
              "--out", str(out), *common, *tx_curve, *tx_args]
    if data_dir:
        tx_cmd += ["--data-dir", data_dir]
    with open(out / "rx.log", "w") as rx_log, open(out / "tx.log", "w") as tx_log:
        rx = subprocess.Popen(rx_cmd, stdout=rx_log, stderr=subprocess.STDOUT)
        log.info("RX pid %d on %s; TX starting (logs in %s)", rx.pid, address, out)
        try:
            tx = subprocess.run(tx_cmd, stdout=tx_log, stderr=subprocess.STDOUT, timeout=timeout_s)
        finally:
            stop_process(rx)
    if tx.returncode != 0:
        raise RuntimeError(f"the TX exited with status {tx.returncode}; see {out / 'tx.log'}")
    return load_results(out)
