"""``semalign sweep --live``: the pretrained and default-recipe rows through real daemons (an RX process
per seed and a TX process per alpha, on loopback with a fixed 64-QAM channel)."""

from __future__ import annotations

import logging
from pathlib import Path

from common.link.channel.nr import max_mcs
from semalign.campaigns.pca_lora.sweep_config import DEFAULT_METHOD, SweepConfig

log = logging.getLogger("semalign.sweep")


def live_rounds(artifacts: Path, dataset: str, out: Path, data_dir: str | None = None,
                rx_options: dict | None = None):
    """A ``live_runner`` for :func:`run_sweep`: one RX process per seed, one TX process per alpha."""
    from semalign.campaigns.processes import free_port, launch, stop_process

    def runner(dims: list[int], cfg: SweepConfig) -> dict:
        live_dir = out / "live"
        live_dir.mkdir(parents=True, exist_ok=True)
        trace = live_dir / "trace-64qam.csv"
        trace.write_text(f"time_s,mcs,mcs_table\n0,{max_mcs('qam64')},qam64\n")
        deadline_s = cfg.budget * 8 / cfg.rate
        rows: dict = {}
        for seed in range(cfg.seeds):
            address = f"tcp://127.0.0.1:{free_port()}"
            common = {"artifacts": artifacts, "dataset": dataset, "insecure": True}
            rx = launch("rx", {"bind": address, "link": "loopback", "trace": trace, "trace_rounds": 1, "threads": 1,
                               **common, **(rx_options or {})}, live_dir / f"rx-s{seed}.log")
            try:
                for alpha in dims:
                    run_dir = live_dir / f"s{seed}-a{alpha}"
                    tx = launch("tx", {"connect": address, "rounds": 1, "out": run_dir, "policy": f"fixed:{alpha}",
                                       "seed": seed, "deadline_s": repr(deadline_s), "n_test": cfg.n_test,
                                       "value_dtype": cfg.value_dtype, "data_dir": data_dir, **common},
                                run_dir.with_suffix(".log"))
                    tx.wait(timeout=600)
                    rows[(seed, alpha)] = _live_rows(run_dir, seed, alpha)
            finally:
                stop_process(rx)
        return rows

    return runner


def _live_rows(run_dir: Path, seed: int, alpha: int) -> list[dict]:
    from common.results.log import load_results

    try:
        rounds = load_results(run_dir)["rounds"]
    except (OSError, ValueError, KeyError):
        return []
    out = []
    for r in rounds:
        if r.get("status") != "ok":
            log.warning("live round alpha=%d seed=%d failed: %s", alpha, seed, r.get("error"))
            continue
        lat = r.get("latency_ms") or {}
        base = {"mode": "live", "alpha": alpha, "seed": seed, "n_train": r["n_train"], "eval_n": r["n_test"],
                "payload_bytes": r["payload_bytes"], "b_max_bytes": r["b_max_bytes"],
                "communication_ms": lat.get("communication"), "airtime_ms": r.get("airtime_ms"),
                "encode_ms": lat.get("encode"), "pack_ms": lat.get("pack"),
                "reconstruct_ms": lat.get("reconstruct"), "classify_ms": lat.get("classify")}
        adapt = r.get("adapt") or {}
        out.append({**base, "method": "pretrained", "accuracy": r["acc_pretrained"], "adapt_ms": 0.0})
        out.append({**base, "method": DEFAULT_METHOD, "accuracy": r["acc_adapted"], "adapt_ms": lat.get("finetune"),
                    "steps": adapt.get("steps"), "complete": adapt.get("complete"), "kept": adapt.get("kept"),
                    "warm_start": adapt.get("warm_start"), "warm_from_alpha": adapt.get("warm_from_alpha"),
                    "steps_by": adapt.get("steps_by"), "cut_by_cap": adapt.get("cut_by_cap"),
                    "precision": adapt.get("precision"), "default": True})
    return out
