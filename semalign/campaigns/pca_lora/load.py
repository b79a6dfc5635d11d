"""Load campaign (``semalign load``): one RX with W workers against N TX processes, in deep fade.

For every ``(N, W)`` pair (the N values outermost, so the machine's other
load falls alike on each W of one N) an RX daemon starts with
``--workers W`` on a constant-MCS channel trace (``deep``: 64-QAM MCS 1,
about 9.4 Mb/s at 40 MHz: every round carries training vectors and the RX
fine-tunes), then N ``semalign tx`` processes run ``rounds`` rounds each,
all at once. Throughput counts the rounds that started while all N TXs were
running (their process start-ups left out) over that window; latency is each
ok round's round trip at the TX (``latency_ms.rtt``). The host's load
average (``os.getloadavg``) is read before and after each pair, since other
work on the machine changes the figures. Output: ``load.json`` and
``load.csv`` in ``out``, one row per pair, and each pair's logs and results
under ``out/N<n>-W<w>/``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from common.files import read_jsonl
from semalign.campaigns.processes import free_port, launch, stop_process
from semalign.campaigns.pca_lora.runner import ensure_artifacts

log = logging.getLogger("semalign.load")

DEEP_FADE_CSV = "time_s,mcs,mcs_table,bler\n0,1,qam64,0\n"  # one row, replayed every round
CSV_FIELDS = ["n_tx", "workers", "rounds_ok", "rounds_failed", "window_s", "rounds_per_s", "p50_ms", "p90_ms",
              "p99_ms", "load1_before", "load1_after", "load5_after"]


def _percentile(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _summarize(n_tx: int, workers: int, per_tx: list[list[dict]]) -> dict:
    rows = [r for rows in per_tx for r in rows]
    ok = [r for r in rows if r["status"] == "ok"]
    starts = [[r["started_at"] for r in rows] for rows in per_tx if rows]
    ends = [[r["started_at"] + r["latency_ms"].get("rtt", 0) / 1e3 for r in rows if r["status"] == "ok"]
            for rows in per_tx]
    t0 = max(s[0] for s in starts) if len(starts) == n_tx else None  # every TX has started
    t1 = min(max(e) for e in ends) if all(ends) else None  # ... and none has finished yet
    if t0 is None or t1 is None or t1 <= t0:  # too short to overlap: the whole span
        t0 = min(min(s) for s in starts) if starts else 0.0
        t1 = max(max(e) for e in ends if e) if any(ends) else t0
    in_window = [r for r in ok if t0 <= r["started_at"] <= t1]
    rtt = [r["latency_ms"]["rtt"] for r in ok if "rtt" in r["latency_ms"]]
    window = t1 - t0
    return {"n_tx": n_tx, "workers": workers, "rounds_ok": len(ok), "rounds_failed": len(rows) - len(ok),
            "window_s": window, "rounds_per_s": len(in_window) / window if window > 0 else None,
            "p50_ms": _percentile(rtt, 50), "p90_ms": _percentile(rtt, 90), "p99_ms": _percentile(rtt, 99)}


def run_pair(out: Path, n_tx: int, workers: int, artifacts: Path, dataset: str, rounds: int, trace: Path,
             rx_extra: dict | None = None, timeout_s: float = 600.0) -> dict:
    """One RX with ``workers`` workers and ``n_tx`` TX processes of ``rounds`` rounds; the pair's row."""
    out.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {"OMP_NUM_THREADS": "1"}
    load_before = os.getloadavg()
    rx = launch("rx", {"bind": address, "artifacts": artifacts, "dataset": dataset, "trace": str(trace),
                       "workers": workers, "insecure": True, **(rx_extra or {})}, out / "rx.log", env=env)
    txs = []
    try:
        for i in range(n_tx):
            txs.append(launch("tx", {"connect": address, "artifacts": artifacts, "dataset": dataset,
                                     "rounds": rounds, "out": out / f"tx{i}", "insecure": True, "seed": i,
                                     "connect_timeout_s": 300, "hello_attempts": 600},
                              out / f"tx{i}.log", env=env))
        deadline = time.monotonic() + timeout_s
        for tx in txs:
            try:
                tx.wait(max(1.0, deadline - time.monotonic()))
            except Exception:
                tx.kill()
                tx.wait()
    finally:
        for tx in txs:
            if tx.poll() is None:
                tx.kill()
        stop_process(rx)
    load_after = os.getloadavg()
    per_tx = []
    for i in range(n_tx):
        path = out / f"tx{i}" / "results.jsonl"
        per_tx.append(read_jsonl(path) if path.exists() else [])
    row = _summarize(n_tx, workers, per_tx)
    row.update(load1_before=load_before[0], load1_after=load_after[0], load5_after=load_after[1])
    log.info("N=%d W=%d: %s rounds/s, p50 %s ms, p90 %s ms (load %.2f)", n_tx, workers,
             f"{row['rounds_per_s']:.1f}" if row["rounds_per_s"] else "-",
             f"{row['p50_ms']:.0f}" if row["p50_ms"] is not None else "-",
             f"{row['p90_ms']:.0f}" if row["p90_ms"] is not None else "-", load_after[0])
    return row


def run_load(out: Path, workers: list[int], txs: list[int], rounds: int = 30, dataset: str = "digits",
             artifacts: Path | None = None, trace: str = "deep", rx_extra: dict | None = None) -> dict:
    """Every ``(N, W)`` pair of ``txs`` x ``workers``; writes ``load.json`` and ``load.csv``; the summary."""
    if not workers or not txs or min(workers) < 1 or min(txs) < 1 or rounds < 1:
        raise ValueError(f"need workers >= 1, TXs >= 1 and rounds >= 1, got {workers=} {txs=} {rounds=}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts = ensure_artifacts(dataset, artifacts)
    if trace == "deep":
        path = out / "deep-fade.csv"
        path.write_text(DEEP_FADE_CSV)
    else:
        path = Path(trace)
    rows = []
    for n in txs:
        for w in workers:
            rows.append(run_pair(out / f"N{n}-W{w}", n, w, artifacts, dataset, rounds, path, rx_extra))
    summary = {"rows": rows, "settings": {"dataset": dataset, "rounds_per_tx": rounds, "trace": trace,
                                          "cpus": os.cpu_count(), "python": sys.version.split()[0],
                                          "rx_extra": rx_extra or {}},
               "uptime": _uptime()}
    (out / "load.json").write_text(json.dumps(summary, indent=1))
    with open(out / "load.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return summary


def _uptime() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return ""


def table(rows: list[dict]) -> str:
    """The rows side by side: one line per N, a column group per W."""
    ws = sorted({r["workers"] for r in rows})
    head = "| N TX | " + " | ".join(f"W={w} rounds/s | W={w} p50/p90/p99 ms" for w in ws) + " | load 1 min |"
    lines = [head, "|" + "---|" * (2 + 2 * len(ws))]
    for n in sorted({r["n_tx"] for r in rows}):
        cells, loads = [], []
        for w in ws:
            r = next((x for x in rows if x["n_tx"] == n and x["workers"] == w), None)
            if r is None:
                cells += ["-", "-"]
                continue
            f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
            cells += ["-" if r["rounds_per_s"] is None else f"{r['rounds_per_s']:.1f}",
                      f"{f(r['p50_ms'])} / {f(r['p90_ms'])} / {f(r['p99_ms'])}"]
            loads.append(f"{r['load1_after']:.1f}")
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {', '.join(loads)} |")
    return "\n".join(lines)
