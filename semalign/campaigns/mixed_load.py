"""Mixed-mode load (``semalign load --mix``); the interference measurement (``--interference``) is in
:mod:`semalign.campaigns.interference`.

Both run one RX with ``--mode pca-lora,slf,fed-lora`` (the modes asked for) and ``--workers W``.

**Mixed load** (:func:`run_mixed`): at once, on that one RX,

- ``pca_sessions`` pca-lora sessions from the replaying generator of this process
  (:mod:`semalign.campaigns.pca_lora.replay_load`: the real TX half's PAYLOADs, encoded before the run);
- ``slf_sessions`` ``semalign tx --mode slf`` processes whose every round is an alignment (decoder
  download, fine-tuning at the TX with ``--n-frozen`` layers frozen, upload of the changed layers);
- a fed-lora federation of ``fed_devices`` ``semalign tx --mode fed-lora`` processes (the base station
  on worker 0: every fed-lora session is pinned there).

The replayed pca-lora sessions start once every slf and fed-lora process has ended its first round, so
that the modes' rounds overlap. Per mode: rounds ok / failed / lost (a round a TX never recorded, or one the replay got no reply to),
rounds/s over that mode's own span (first round's start to last round's end), p50/p90/p99 of the round's
latency at the TX (pca-lora: PAYLOAD to RESULT; slf: its alignment's wall time, download + fine-tuning +
upload; fed-lora: a round's start to the next's, the device's own training included: the last round of a
device has no such figure; the first round of each slf or fed-lora process, its cold start (torch's first
calls, the federation's joining), is counted but left out of the latencies and of rounds/s), and the RX's RSS at the end (front end, workers summed: shared by the modes).

The set-up shared with the interference measurement is in :mod:`semalign.campaigns.mixed_rx`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from semalign.campaigns.machine import loadavg_line
from semalign.campaigns.mixed_rx import (MODES, fed_device, pca_half, result_rows, slf_artifacts, slf_tx, start_rx,
                                         wait_rows)
from semalign.campaigns.pca_lora.load import _percentile, rx_memory
from semalign.campaigns.pca_lora.replay_load import replay
from semalign.campaigns.pca_lora.runner import ensure_artifacts
from semalign.campaigns.processes import kill_all, stop_process, wait_all
from semalign.campaigns.tables import fmt, markdown_lines, write_csv

log = logging.getLogger("semalign.load")

MIXED_CSV_FIELDS = ["mode", "sessions", "rounds_expected", "rounds_ok", "rounds_failed", "rounds_lost", "span_s",
                    "rounds_per_s", "p50_ms", "p90_ms", "p99_ms", "rss_rx_mib", "rss_workers_mib", "workers",
                    "load1_before", "load1_after"]


def _round_ms(mode: str, rows: list[dict]) -> list[float]:
    """Each ok round's latency at the TX, ms (the module docstring says which)."""
    out = []
    for i, r in enumerate(rows):
        if r.get("status") != "ok":
            continue
        lat = r.get("latency_ms") or {}
        if mode == "slf" and "recovery" in lat:
            out.append(lat["recovery"])
        elif "rtt" in lat:
            out.append(lat["rtt"])
        elif i + 1 < len(rows) and rows[i + 1].get("started_at") and r.get("started_at"):
            out.append((rows[i + 1]["started_at"] - r["started_at"]) * 1e3)
    return out


def _mode_row(mode: str, per_session: list[list[dict]], rounds: int) -> dict:
    rows = [r for s in per_session for r in s]
    ok = [r for r in rows if r.get("status") == "ok"]
    expected = rounds * len(per_session)
    if mode != "pca-lora":  # a process's first round is its cold start: counted, not timed (see the docstring)
        per_session = [s[1:] for s in per_session]
    lat = [x for s in per_session for x in _round_ms(mode, s)]
    starts = [r["started_at"] for s in per_session for r in s if r.get("started_at")]
    ends = []
    for s in per_session:
        ms = _round_ms(mode, s)
        ok_s = [r for r in s if r.get("status") == "ok" and r.get("started_at")]
        if ok_s:
            ends.append(ok_s[-1]["started_at"] + (ms[-1] / 1e3 if ms and mode != "fed-lora" else 0.0))
        if s and s[-1].get("started_at") and mode == "fed-lora":
            ends.append(s[-1]["started_at"])
    span = (max(ends) - min(starts)) if starts and ends else None
    return {"mode": mode, "sessions": len(per_session), "rounds_expected": expected, "rounds_ok": len(ok),
            "rounds_failed": len(rows) - len(ok) - sum(r.get("status") == "lost" for r in rows),
            "rounds_lost": expected - len(rows) + sum(r.get("status") == "lost" for r in rows),
            "span_s": span, "rounds_per_s": sum(r.get("status") == "ok" for s in per_session for r in s) / span
            if span else None,
            "p50_ms": _percentile(lat, 50), "p90_ms": _percentile(lat, 90), "p99_ms": _percentile(lat, 99)}



def run_mixed(out: Path, modes: list[str], workers: int = 2, pca_sessions: int = 4, slf_sessions: int = 1,
              fed_devices: int = 2, rounds: int = 10, slf_rounds: int | None = None, fed_rounds: int | None = None,
              dataset: str = "digits", artifacts: Path | None = None, slf_dir: Path | None = None,
              slf_finetune_images: int = 256, slf_finetune_epochs: float = 1.0, slf_n_frozen: int = 2,
              rx_extra: dict | None = None, timeout_s: float = 1800.0) -> dict:
    """The mixed load (module docstring); writes ``mixed.json``, ``mixed.csv``, ``mixed.png`` in ``out``."""
    modes = [m for m in MODES if m in modes]
    if not modes or workers < 1 or rounds < 1:
        raise ValueError(f"need a mode, workers >= 1 and rounds >= 1, got {modes=} {workers=} {rounds=}")
    counts = {"pca-lora": pca_sessions, "slf": slf_sessions, "fed-lora": fed_devices}
    if any(counts[m] < 1 for m in modes):
        raise ValueError(f"every mode of --mix needs >= 1 session, got {counts}")
    slf_rounds, fed_rounds = slf_rounds or rounds, fed_rounds or rounds
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts = ensure_artifacts(dataset, artifacts)
    if "slf" in modes:
        slf_dir = Path(slf_dir) if slf_dir else slf_artifacts(out / "slf-artifacts")
    load_before = os.getloadavg()
    rx, address = start_rx(out, modes, workers, artifacts, dataset, slf_dir, fed_devices, rx_extra)
    procs, per_mode = [], {}
    try:
        if "fed-lora" in modes:
            procs += [fed_device(out, address, k, fed_devices, fed_rounds) for k in range(fed_devices)]
        if "slf" in modes:
            procs += [slf_tx(out, address, i, slf_dir, slf_rounds, slf_finetune_images, slf_finetune_epochs,
                              slf_n_frozen) for i in range(slf_sessions)]
        # the replayed sessions start once every background process has ended its first round (their
        # start-ups, torch's import and first calls, would otherwise overlap no pca-lora round)
        started = [(p, out / f"slf{i}" / "results.jsonl") for i, p in
                   enumerate(procs[len(procs) - slf_sessions:] if "slf" in modes else [])]
        started += [(p, out / f"fed{k}" / "results.jsonl") for k, p in
                    enumerate(procs[:fed_devices] if "fed-lora" in modes else [])]
        for p, path in started:
            wait_rows(lambda path=path: len(result_rows(path)), 1, timeout_s, p)
        if "pca-lora" in modes:
            half = pca_half(artifacts, dataset)
            per_mode["pca-lora"] = replay(address, half, pca_sessions, rounds, timeout_s)
        wait_all(procs, timeout_s)
        memory = rx_memory(rx.pid)
    finally:
        kill_all(procs)
        stop_process(rx)
    if "slf" in modes:
        per_mode["slf"] = [result_rows(out / f"slf{i}" / "results.jsonl") for i in range(slf_sessions)]
    if "fed-lora" in modes:
        per_mode["fed-lora"] = [result_rows(out / f"fed{k}" / "results.jsonl") for k in range(fed_devices)]
    load_after = os.getloadavg()
    n_rounds = {"pca-lora": rounds, "slf": slf_rounds, "fed-lora": fed_rounds}
    rows = []
    for m in modes:
        row = _mode_row(m, per_mode[m], n_rounds[m])
        row.update(memory, workers=workers, load1_before=load_before[0], load1_after=load_after[0])
        rows.append(row)
        log.info("%s: %d/%d ok, %d lost, %s rounds/s, p50 %s ms", m, row["rounds_ok"], row["rounds_expected"],
                 row["rounds_lost"], fmt(row["rounds_per_s"], ".1f"), fmt(row["p50_ms"], ".0f"))
    summary = {"rows": rows, "settings": {"modes": modes, "workers": workers, "dataset": dataset,
                                          "sessions": {m: counts[m] for m in modes}, "rounds": n_rounds,
                                          "slf_finetune_images": slf_finetune_images,
                                          "slf_finetune_epochs": slf_finetune_epochs, "slf_n_frozen": slf_n_frozen,
                                          "cpus": os.cpu_count(), "rx_extra": rx_extra or {}},
               "loadavg_before": list(load_before), "uptime": loadavg_line()}
    (out / "mixed.json").write_text(json.dumps(summary, indent=1))
    write_csv(out / "mixed.csv", MIXED_CSV_FIELDS, rows)
    plot_mixed(rows, out / "mixed.png")
    return summary



def mixed_table(rows: list[dict]) -> str:
    head = ["mode", "sessions", "rounds ok / expected", "failed", "lost", "rounds/s", "p50 / p90 / p99 ms",
            "RX RSS MiB (front end + workers)"]
    body = [[r["mode"], str(r["sessions"]), f"{r['rounds_ok']} / {r['rounds_expected']}", str(r["rounds_failed"]),
             str(r["rounds_lost"]), fmt(r["rounds_per_s"], ".1f"),
             f"{fmt(r['p50_ms'], '.0f')} / {fmt(r['p90_ms'], '.0f')} / {fmt(r['p99_ms'], '.0f')}",
             fmt(r.get("rss_rx_mib"), ".0f")
             + ("" if r.get("rss_workers_mib") is None else f" + {fmt(r['rss_workers_mib'], '.0f')}")]
            for r in rows]
    return "\n".join(markdown_lines(head, body))


def plot_mixed(rows: list[dict], path: Path) -> None:
    """Rounds/s and p50/p90/p99 round latency per mode (the load plot's two panels, one bar group per mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["mode"] for r in rows]
    x = np.arange(len(rows))
    ax_t.bar(x, [r["rounds_per_s"] or 0 for r in rows])
    for j, q in enumerate(("p50_ms", "p90_ms", "p99_ms")):
        ax_l.bar(x + (j - 1) * 0.27, [r[q] or 0 for r in rows], 0.27, label=q.split("_")[0])
    for ax, ylabel in ((ax_t, "rounds/s (the mode's span)"), (ax_l, "round latency, ms")):
        ax.set_xticks(x, names)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    ax_l.set_yscale("log")
    ax_l.legend()
    fig.suptitle(f"RX load, mixed modes on one RX (W = {rows[0]['workers'] if rows else '?'})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
