"""The loopback demo: RX and TX as two separate OS processes over ZeroMQ on 127.0.0.1."""

from __future__ import annotations

import logging
from pathlib import Path

from common.results.log import load_results
from semalign.processes import free_port, launch, stop_process, throwaway_keys
from semalign.runner import ensure_artifacts

log = logging.getLogger("semalign.demo")


def run_demo(rounds: int, out: Path, dataset: str, trace: str, artifacts: Path | None,
             data_dir: str | None, tx_options: dict, rx_options: dict,
             timeout_s: float = 1800.0) -> dict:
    """Start the RX, run the TX to completion, stop the RX; returns ``results.json``.

    ``tx_options``/``rx_options``: extra daemon options (name -> value).
    Daemon logs go to ``out/rx.log`` and ``out/tx.log``.
    """
    artifacts = ensure_artifacts(dataset, artifacts, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    common = {"artifacts": artifacts, "dataset": dataset}
    # throwaway CURVE keys in out/keys: the demo runs the same authenticated, encrypted path as a lab
    rx_curve, tx_curve = throwaway_keys(out / "keys")
    rx = launch("rx", {"bind": address, "link": "loopback", "trace": trace, "trace_rounds": rounds, **common,
                       **rx_curve, **rx_options}, out / "rx.log")
    log.info("RX pid %d on %s; TX starting (logs in %s)", rx.pid, address, out)
    try:
        tx = launch("tx", {"connect": address, "rounds": rounds, "out": out, "data_dir": data_dir, **common,
                           **tx_curve, **tx_options}, out / "tx.log")
        status = tx.wait(timeout=timeout_s)
    finally:
        stop_process(rx)
    if status != 0:
        raise RuntimeError(f"the TX exited with status {status}; see {out / 'tx.log'}")
    return load_results(out)
