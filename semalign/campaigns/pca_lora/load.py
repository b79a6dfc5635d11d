"""Load campaign (``semalign load``): one RX with W workers against N sessions, in deep fade.

For every ``(N, W)`` pair (the N values outermost, so the machine's other
load falls alike on each W of one N) an RX daemon starts with
``--workers W`` on a constant-MCS channel trace (``deep``: 64-QAM MCS 1,
about 9.4 Mb/s at 40 MHz: every round carries training vectors and the RX
fine-tunes), then N sessions run ``rounds`` rounds each, all at once: with
the ``replay`` generator (the default) N connections from this process that
replay PAYLOAD frames encoded before the run (:mod:`.replay_load`), with
``tx`` N ``semalign tx`` processes (which PCA-encode each round themselves:
their CPU competes with the RX's). Throughput counts the rounds that started
while all N sessions were running (start-ups left out) over that window;
latency is each ok round's round trip at the sender (``latency_ms.rtt``).
Rounds not answered ok are counted (``rounds_failed``, ``rounds_lost``: no
reply at all). The RSS of the RX's processes is read at the end of the run
(front end, or the one process at W = 1, and the sum over its workers; the
peak ``VmHWM`` too). The host's load average (``os.getloadavg``) is read
before and after each pair, since other work on the machine changes the
figures. Output: ``load.json``, ``load.csv`` and ``load.png`` (rounds/s and
p50/p90 latency against N, one line per W) in ``out``, one row per pair, and
each pair's logs under ``out/N<n>-W<w>/``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from common.files import read_jsonl
from semalign.campaigns.processes import free_port, kill_all, launch, stop_process, wait_all
from semalign.campaigns.pca_lora.replay_load import replay
from semalign.campaigns.pca_lora.runner import ensure_artifacts
from semalign.campaigns.machine import loadavg_line
from semalign.campaigns.tables import markdown_lines, write_csv

log = logging.getLogger("semalign.load")

DEEP_FADE_CSV = "time_s,mcs,mcs_table,bler\n0,1,qam64,0\n"  # one row, replayed every round
GENERATORS = ("replay", "tx")
CSV_FIELDS = ["n_tx", "workers", "generator", "rounds_ok", "rounds_failed", "rounds_lost", "window_s",
              "rounds_per_s", "p50_ms", "p90_ms", "p99_ms", "rss_rx_mib", "hwm_rx_mib", "rss_workers_mib",
              "load1_before", "load1_after", "load5_after"]


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
            "rounds_lost": sum(r["status"] == "lost" for r in rows),
            "window_s": window, "rounds_per_s": len(in_window) / window if window > 0 else None,
            "p50_ms": _percentile(rtt, 50), "p90_ms": _percentile(rtt, 90), "p99_ms": _percentile(rtt, 99)}


def _mib(pid: int, field: str) -> float | None:
    """``field`` (VmRSS, VmHWM) of process ``pid`` in MiB, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rx_memory(pid: int) -> dict:
    """RSS now and peak of the RX process ``pid`` (the front end when it has workers), and its workers' RSS
    summed (None without workers), MiB."""
    workers = [m for m in (_mib(c, "VmRSS") for c in _children(pid)) if m is not None]
    return {"rss_rx_mib": _mib(pid, "VmRSS"), "hwm_rx_mib": _mib(pid, "VmHWM"),
            "rss_workers_mib": sum(workers) if workers else None}


def run_pair(out: Path, n_tx: int, workers: int, artifacts: Path, dataset: str, rounds: int, trace: Path,
             rx_extra: dict | None = None, timeout_s: float = 600.0, generator: str = "replay") -> dict:
    """One RX with ``workers`` workers and ``n_tx`` sessions of ``rounds`` rounds from ``generator``; the
    pair's row."""
    out.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {"OMP_NUM_THREADS": "1"}
    load_before = os.getloadavg()
    rx = launch("rx", {"bind": address, "artifacts": artifacts, "dataset": dataset, "trace": str(trace),
                       "workers": workers, "insecure": True, **(rx_extra or {})}, out / "rx.log", env=env)
    if generator == "replay":
        try:
            per_tx = replay(address, _replay_half(artifacts, dataset), n_tx, rounds, timeout_s)
            memory = rx_memory(rx.pid)
        finally:
            stop_process(rx)
        return _row(n_tx, workers, per_tx, memory, load_before, generator)
    txs = []
    try:
        for i in range(n_tx):
            txs.append(launch("tx", {"connect": address, "artifacts": artifacts, "dataset": dataset,
                                     "rounds": rounds, "out": out / f"tx{i}", "insecure": True, "seed": i,
                                     "connect_timeout_s": 300, "hello_attempts": 600},
                              out / f"tx{i}.log", env=env))
        wait_all(txs, timeout_s)
        memory = rx_memory(rx.pid)
    finally:
        kill_all(txs)
        stop_process(rx)
    per_tx = []
    for i in range(n_tx):
        path = out / f"tx{i}" / "results.jsonl"
        per_tx.append(read_jsonl(path) if path.exists() else [])
    return _row(n_tx, workers, per_tx, memory, load_before, generator)


def _replay_half(artifacts: Path, dataset: str):
    """The pca-lora TX half whose frames the replay generator sends (built once per process)."""
    key = (str(artifacts), dataset)
    if key not in _HALVES:
        from common.modes.base import get_mode

        _HALVES[key] = get_mode("pca-lora").build_tx({"artifacts": artifacts, "dataset": dataset})
    return _HALVES[key]


_HALVES: dict = {}


def _row(n_tx: int, workers: int, per_tx: list[list[dict]], memory: dict, load_before, generator: str) -> dict:
    load_after = os.getloadavg()
    row = _summarize(n_tx, workers, per_tx)
    row.update(memory, generator=generator, load1_before=load_before[0], load1_after=load_after[0],
               load5_after=load_after[1])
    log.info("N=%d W=%d: %s rounds/s, p50 %s ms, p90 %s ms, %d lost, RX RSS %s MiB (load %.2f)", n_tx, workers,
             f"{row['rounds_per_s']:.1f}" if row["rounds_per_s"] else "-",
             f"{row['p50_ms']:.0f}" if row["p50_ms"] is not None else "-",
             f"{row['p90_ms']:.0f}" if row["p90_ms"] is not None else "-", row["rounds_lost"],
             f"{row['rss_rx_mib']:.0f}" if row["rss_rx_mib"] is not None else "-", load_after[0])
    return row


def run_load(out: Path, workers: list[int], txs: list[int], rounds: int = 30, dataset: str = "digits",
             artifacts: Path | None = None, trace: str = "deep", rx_extra: dict | None = None,
             generator: str = "replay", progress=None) -> dict:
    """Every ``(N, W)`` pair of ``txs`` x ``workers``; writes ``load.json``, ``load.csv`` and ``load.png``;
    the summary. ``progress(done, total, row)`` is called after each pair."""
    if not workers or not txs or min(workers) < 1 or min(txs) < 1 or rounds < 1:
        raise ValueError(f"need workers >= 1, TXs >= 1 and rounds >= 1, got {workers=} {txs=} {rounds=}")
    if generator not in GENERATORS:
        raise ValueError(f"--generator {generator!r}: choose one of {', '.join(GENERATORS)}")
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
            rows.append(run_pair(out / f"N{n}-W{w}", n, w, artifacts, dataset, rounds, path, rx_extra,
                                 generator=generator))
            if progress:
                progress(len(rows), len(txs) * len(workers), rows[-1])
    summary = {"rows": rows, "settings": {"dataset": dataset, "rounds_per_tx": rounds, "trace": trace,
                                          "generator": generator,
                                          "cpus": os.cpu_count(), "python": sys.version.split()[0],
                                          "rx_extra": rx_extra or {}},
               "uptime": loadavg_line()}
    (out / "load.json").write_text(json.dumps(summary, indent=1))
    write_csv(out / "load.csv", CSV_FIELDS, rows)
    plot(rows, out / "load.png")
    return summary


def plot(rows: list[dict], path: Path) -> None:
    """Rounds/s and p50/p90 round latency against N, one line per W (log-scaled N)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(10, 4))
    for w in sorted({r["workers"] for r in rows}):
        mine = sorted((r for r in rows if r["workers"] == w), key=lambda r: r["n_tx"])
        n = [r["n_tx"] for r in mine]
        ax_t.plot(n, [r["rounds_per_s"] or 0 for r in mine], "o-", label=f"W = {w}")
        line, = ax_l.plot(n, [r["p50_ms"] or 0 for r in mine], "o-", label=f"W = {w} p50")
        ax_l.plot(n, [r["p90_ms"] or 0 for r in mine], "s--", color=line.get_color(), label=f"W = {w} p90")
    for ax, ylabel in ((ax_t, "rounds/s (steady window)"), (ax_l, "round latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N sessions")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("RX load: deep fade, every round adapts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[dict]) -> str:
    """The rows side by side: one line per N, a column group per W (rounds/s, p50/p90/p99, rounds lost,
    RX RSS: the front end's or the one process's, + the workers' summed)."""
    ws = sorted({r["workers"] for r in rows})
    head = ["N"] + [f"W={w} {c}" for w in ws for c in ("rounds/s", "p50/p90/p99 ms", "not ok", "RSS MiB")]
    table = []
    f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    for n in sorted({r["n_tx"] for r in rows}):
        cells, loads = [], []
        for w in ws:
            r = next((x for x in rows if x["n_tx"] == n and x["workers"] == w), None)
            if r is None:
                cells += ["-"] * 4
                continue
            rss = f(r.get("rss_rx_mib")) + ("" if r.get("rss_workers_mib") is None else f" + {f(r['rss_workers_mib'])}")
            cells += ["-" if r["rounds_per_s"] is None else f"{r['rounds_per_s']:.1f}",
                      f"{f(r['p50_ms'])} / {f(r['p90_ms'])} / {f(r['p99_ms'])}",
                      str(r["rounds_failed"]), rss]
            loads.append(f"{r['load1_after']:.1f}")
        table.append([str(n), *cells, ", ".join(loads)])
    return "\n".join(markdown_lines(head + ["load 1 min"], table))
