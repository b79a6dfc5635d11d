"""``semalign bench``'s figures from live daemons: peak RSS (MiB) of an RX and a TX process
(:func:`daemon_rss`), the round latency at alpha = d_pre (:func:`round_latency_d_pre`) and the time to
classification with the training vectors in parts (:func:`train_parts_rounds`), in ms."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


class _PeakRss:
    """Polls ``VmHWM`` (the post-exec peak RSS) of a process in ``/proc`` until it exits.

    ``ru_maxrss`` from ``wait4`` is not used: Linux carries the forking
    parent's RSS into the child's figure across exec.
    """

    def __init__(self, pid: int, period_s: float = 0.02):
        self.pid, self.period_s, self.peak_kib = pid, period_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        path = Path(f"/proc/{self.pid}/status")
        while not self._stop.is_set():
            try:
                for line in path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            except (OSError, ValueError, IndexError):
                return
            self._stop.wait(self.period_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def daemon_rss(artifacts: Path, dataset: str, out: Path, data_dir: str | None) -> dict:
    """Peak RSS (MiB) of an RX and a TX process during a 9-round loopback run of the demo trace (``VmHWM``)."""
    from semalign.campaigns.processes import free_port, launch, stop_process

    if not Path("/proc/self/status").exists():
        return {"rx_peak_rss_mib": None, "tx_peak_rss_mib": None, "note": "no /proc on this system"}
    address = f"tcp://127.0.0.1:{free_port()}"
    common = {"artifacts": artifacts, "dataset": dataset, "insecure": True}
    out.mkdir(parents=True, exist_ok=True)
    rx = launch("rx", {"bind": address, "link": "loopback", "trace": "demo", "trace_rounds": 9, **common},
                out / "rx.log")
    rx_peak = _PeakRss(rx.pid)
    try:
        tx = launch("tx", {"connect": address, "rounds": 9, "out": out / "run", "data_dir": data_dir, **common},
                    out / "tx.log")
        tx_peak = _PeakRss(tx.pid)
        tx.wait(timeout=600)
        tx_mib = tx_peak.stop()
    finally:
        rx_mib = rx_peak.stop()
        stop_process(rx)
    if tx.returncode != 0:
        raise RuntimeError(f"bench TX exited with {tx.returncode}; see {out / 'tx.log'}")
    return {"rx_peak_rss_mib": rx_mib, "tx_peak_rss_mib": tx_mib, "rounds_dir": str(out / "run")}


def round_latency_d_pre(run_dir: Path) -> dict | None:
    """Round latency of the run's rounds at alpha = d_pre (TX starts encoding -> RESULT back, ms)
    against the payload's air time plus the RX's inference, medians (round 0, the warm-up, left out)."""
    from common.results.log import load_results

    try:
        rounds = [r for r in load_results(run_dir)["rounds"] if r.get("status") == "ok"]
    except (OSError, ValueError, KeyError):
        return None
    lean = [r for r in rounds if r.get("nothing_to_align") == "d_pre" and r["round"] > 0]  # 0: warm-up
    if not lean:
        return None
    lat = [r["latency_ms"]["encode"] + r["latency_ms"]["pack"] + r["latency_ms"]["rtt"] for r in lean]
    floor = [r["airtime_ms"] + r["latency_ms"]["classify"] for r in lean]
    return {"rounds": len(lean), "n_train": [r["n_train"] for r in lean], "payload_rule": lean[0].get("payload_rule"),
            "round_ms": float(np.median(lat)), "airtime_plus_inference_ms": float(np.median(floor)),
            "airtime_ms": float(np.median([r["airtime_ms"] for r in lean])),
            "ratio": float(np.median(lat) / np.median(floor))}


def train_parts_rounds(artifacts: Path, dataset: str, out: Path, data_dir: str | None,
                       parts: tuple[int, ...] = (0, 1, 2, 4, 8), rounds: int = 6, passes: int = 3) -> dict:
    """Live rounds at alpha 20 on a constant ~170 Mb/s link for each ``train_parts`` value (one RX; per
    pass one TX run per value, the values interleaved so that other load on the machine falls on all of
    them alike; the same seeds, so all carry the same vectors): medians (ms) over every pass's rounds of
    the time to classification and of its parts, the first round of each run left out (warm-up)."""
    from common.results.log import load_results
    from semalign.campaigns.processes import free_port, launch, stop_process

    out.mkdir(parents=True, exist_ok=True)
    trace = out / "constant_qam64_top.csv"
    trace.write_text("time_s,mcs,mcs_table,bler\n0,28,qam64,0\n")
    address = f"tcp://127.0.0.1:{free_port()}"
    common = {"artifacts": artifacts, "dataset": dataset, "insecure": True}
    rx = launch("rx", {"bind": address, "link": "loopback", "trace": str(trace), "trace_rounds": 1, **common},
                out / "rx.log")
    res, by_k = {}, {k: [] for k in parts}
    try:
        for p, k in ((p, k) for p in range(passes) for k in parts):
            log, run = out / f"tx-parts{k}-pass{p}.log", out / f"parts{k}-pass{p}"
            tx = launch("tx", {"connect": address, "rounds": rounds, "out": run, "data_dir": data_dir,
                               "policy": "fixed:20", "train_parts": k, **common}, log)
            if tx.wait(timeout=600) != 0:
                raise RuntimeError(f"bench TX (train_parts {k}) exited with {tx.returncode}; see {log}")
            by_k[k] += [r for r in load_results(run)["rounds"] if r.get("status") == "ok"][1:]
        for k, ok in by_k.items():
            if not ok:
                raise RuntimeError(f"bench TX (train_parts {k}): no successful rounds; see {out}")

            def med(get):
                return float(np.median([get(r) for r in ok]))

            lat = lambda r: r["latency_ms"]  # noqa: E731
            res[str(k)] = {
                "rounds": len(ok), "alpha": ok[0]["alpha"], "n_train": med(lambda r: r["n_train"]),
                "payload_bytes": med(lambda r: r["payload_bytes"]), "airtime_ms": med(lambda r: r["airtime_ms"]),
                "encode_ms": med(lambda r: lat(r)["encode"]), "finetune_ms": med(lambda r: lat(r)["finetune"]),
                "to_classification_ms": med(lambda r: lat(r)["classification"]),
                "acc_adapted": med(lambda r: r["acc_adapted"]),
                "sum_ms": med(lambda r: lat(r)["encode"] + r["airtime_ms"] + lat(r)["finetune"]),
                "max_ms": med(lambda r: max(lat(r)["encode"], r["airtime_ms"], lat(r)["finetune"])),
            }
    finally:
        stop_process(rx)
    return res
