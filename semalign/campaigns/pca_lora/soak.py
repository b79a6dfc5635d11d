"""Soak run: one RX process, many rounds from several TX sessions, in turn and at once.

:func:`run_soak` starts the RX daemon as its own process (CURVE with throwaway
keys unless ``insecure``), then runs TX sessions in this process: first
``sessions`` sessions one after another, then the same number at once (one
thread each). Every session writes its own ``sessions/NAME/results.jsonl``.
While it runs, the RX's resident memory (``VmRSS`` of ``/proc/PID/status``)
is sampled. The summary (``soak.json``) accounts for every round, and gives
the RSS growth after warm-up and the round-trip latency percentiles.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np

from common.modes.pca_lora.artifacts import load_codec
from common.data.datasets import load_dataset
from common.results.log import ResultsLog, read_jsonl
from common.net.security import TxSecurity, load_public, load_secret
from common.net.transport import TxSocket
from semalign.campaigns.processes import free_port, launch, stop_process, throwaway_keys
from semalign.campaigns.pca_lora.runner import ensure_artifacts
from common.modes.pca_lora.tx import PcaLoraTx, PcaLoraTxConfig
from tx_node.daemon import TxConfig, TxNode

log = logging.getLogger("semalign.soak")


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS``), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class _Progress:
    def __init__(self):
        self.lock = threading.Lock()
        self.done = 0

    def __call__(self, _record) -> None:
        with self.lock:
            self.done += 1


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "mean": float(a.mean())}


def run_soak(out: Path, rounds: int = 2000, sessions: int = 2, dataset: str = "digits",
             artifacts: Path | None = None, n_test: int = 20, max_train: int = 40,
             adapt_steps: int = 3, deadline_s: float = 0.002, trace: str = "demo",
             insecure: bool = False, warmup_frac: float = 0.1, rss_interval_s: float = 0.25) -> dict:
    """Run the soak; returns (and writes to ``out/soak.json``) the summary.

    ``rounds``: total, split evenly over ``2 * sessions`` sessions (half in
    turn, half at once). RSS growth = (highest RSS after the first
    ``warmup_frac`` of the rounds - RSS at that point) / RSS at that point.
    """
    if sessions < 1 or rounds < 2 * sessions:
        raise ValueError(f"need sessions >= 1 and rounds >= 2 * sessions, got {rounds=} {sessions=}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts = ensure_artifacts(dataset, artifacts)
    codec, _ = load_codec(artifacts)
    data = load_dataset(dataset)
    names = [f"turn{i}" for i in range(sessions)] + [f"once{i}" for i in range(sessions)]
    per_session = rounds // len(names)
    total = per_session * len(names)

    address = f"tcp://127.0.0.1:{free_port()}"
    if insecure:
        rx_sec, tx_secs = {"insecure": True}, {n: TxSecurity() for n in names}
    else:
        tx_secs = {}
        for n in names:
            rx_sec, tx_keys = throwaway_keys(out / "keys", n)
            tx_secs[n] = TxSecurity(load_secret(tx_keys["curve_secret"]), load_public(tx_keys["curve_server_public"]))
    rx = launch("rx", {"bind": address, "artifacts": artifacts, "dataset": dataset, "link": "loopback",
                       "trace": trace, "adapt_steps": adapt_steps, "adapt_batch": 0, **rx_sec},
                out / "rx.log", env={"OMP_NUM_THREADS": "1"})
    log.info("soak: RX pid %d on %s; %d sessions x %d rounds", rx.pid, address, len(names), per_session)

    progress = _Progress()
    samples: list[tuple[float, int, int]] = []  # (t, rounds done, RSS KiB)
    sampling = threading.Event()

    def sample():
        while not sampling.wait(rss_interval_s):
            kib = rss_kib(rx.pid)
            if kib is not None:
                samples.append((time.monotonic(), progress.done, kib))

    half = PcaLoraTx(codec, data, PcaLoraTxConfig(n_test=n_test, n_min_train=min(max_train, 20),
                                                   max_train=max_train, deadline_s=deadline_s))
    config = TxConfig(result_timeout_s=10.0, hello_timeout_s=1.0, hello_attempts=60)
    nodes: dict[str, TxNode] = {}
    errors: dict[str, str] = {}

    def session(name: str):
        sock = TxSocket(address, security=tx_secs[name])
        node = nodes[name] = TxNode(half, sock, config)
        results = ResultsLog(out / "sessions" / name, {"session": name, "session_id": node.session_id})
        try:
            node.run(per_session, results, on_round=progress)
        except Exception as e:  # recorded in the summary: the soak must account for it
            errors[name] = f"{type(e).__name__}: {e}"
        finally:
            sock.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    try:
        for name in names[:sessions]:  # in turn
            session(name)
        t_turn = time.monotonic() - t0
        threads = [threading.Thread(target=session, args=(n,)) for n in names[sessions:]]  # at once
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall_s = time.monotonic() - t0
    finally:
        sampling.set()
        sampler.join()
        rx_status = stop_process(rx)

    summary = _summarize(out, names, nodes, per_session, total, samples, warmup_frac)
    rx_exit_line = [ln for ln in (out / "rx.log").read_text().splitlines() if "RX exiting" in ln]
    # the RX's own count of rounds it fine-tuned: more than the TX's ok rounds = processed twice
    rx_ok = int(rx_exit_line[-1].split("RX exiting: ")[1].split()[0]) if rx_exit_line else None
    summary.update(rx_rounds_ok=rx_ok,
                   rounds_processed_twice=None if rx_ok is None else rx_ok - summary["rounds_ok"])
    summary.update(wall_s=wall_s, in_turn_wall_s=t_turn, rounds_per_s=total / wall_s, rx_pid=rx.pid,
                   rx_exit_status=rx_status, rx_exit_line=rx_exit_line[-1] if rx_exit_line else None,
                   session_errors=errors, curve=not insecure,
                   settings=dict(dataset=dataset, n_test=n_test, max_train=max_train, adapt_steps=adapt_steps,
                                 deadline_s=deadline_s, trace=trace, sessions=sessions))
    (out / "soak.json").write_text(json.dumps(summary, indent=1))
    return summary


def _summarize(out: Path, names, nodes, per_session, total, samples, warmup_frac) -> dict:
    per = {}
    lost = duplicated = ok = failed = mixed = 0
    rtt, classification, reasons = [], [], {}
    for name in names:
        path = out / "sessions" / name / "results.jsonl"
        rows = read_jsonl(path) if path.exists() else []
        seqs = [r["round"] for r in rows]
        sid = nodes[name].session_id if name in nodes else None
        missing = sorted(set(range(per_session)) - set(seqs))
        lost += len(missing)
        duplicated += len(seqs) - len(set(seqs))
        mixed += sum(r.get("session_id") != sid for r in rows)
        for r in rows:
            if r["status"] == "ok":
                ok += 1
                rtt.append(r["latency_ms"]["rtt"])
                classification.append(r["latency_ms"]["classification"])
            else:
                failed += 1
                key = (r.get("error") or "?").split(":")[0][:60]
                reasons[key] = reasons.get(key, 0) + 1
        per[name] = {"session_id": sid, "rows": len(rows), "missing": missing[:20],
                     "ok": sum(r["status"] == "ok" for r in rows),
                     "attempts_gt_1": sum(r.get("attempts", 1) > 1 for r in rows)}
    rss = {}
    if samples:
        warm = next((s for s in samples if s[1] >= warmup_frac * total), samples[-1])
        after = [s[2] for s in samples if s[0] >= warm[0]]
        rss = {"samples": len(samples), "first_kib": samples[0][2], "warm_kib": warm[2],
               "warm_after_rounds": warm[1], "max_after_warm_kib": max(after), "last_kib": samples[-1][2],
               "growth_after_warm": (max(after) - warm[2]) / warm[2]}
    return {"rounds_expected": total, "rounds_recorded": ok + failed, "rounds_ok": ok, "rounds_failed": failed,
            "failed_reasons": reasons, "rounds_lost": lost, "rounds_duplicated": duplicated,
            "rows_in_wrong_session": mixed, "sessions": per, "rss": rss,
            "latency_ms": {"rtt": _percentiles(rtt), "classification": _percentiles(classification)}}
