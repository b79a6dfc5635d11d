"""``semalign fading``: alpha policies and the adapter bank over a fading channel trace.

In-process rounds (the same payload composition as the TX, the same adaptation
as the RX): for every round of the trace the budget is ``rate x deadline``,
the policy picks alpha, eq. (2) gives ``N``, the RX adapts, and the adapted
model is scored on the whole test set. Four runs: policy ``largest`` (the
paper's) and ``lookahead`` (from the sweep's table), each without and with an
adapter bank. A round whose budget cannot carry the test vectors scores 0.
As the TX: a round with nothing to align (alpha = d_pre, or an alpha the
bank holds an adapter for) carries no training vectors unless
``fill_payload`` (the paper's rule), and the RX then skips adaptation.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from common.modes.pca_lora.adapter_bank import SHARED, AdapterBank, model_digest
from common.modes.pca_lora.banked_alignment import BankedAlignment
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.budget import BudgetError, PayloadLayout, budget_bytes
from common.link.channel import build_trace
from common.learn.models import accuracy, predict
from semalign.campaigns.machine import machine_info
from semalign.campaigns.pca_lora.runner import build_round, campaign_inputs, quantized_test
from common.modes.pca_lora.tx import PcaLoraTxConfig
from common.learn import process_tuning
from common.modes.pca_lora.policy import AccuracyTable, BudgetView, get_policy, lean_n_train


def run_fading(artifacts: Path, dataset: str, out: Path, table: Path, trace: str, rounds: int,
               threshold: float, n_test: int, deadline_s: float, seed: int, data_dir: str | None = None,
               value_dtype: str = "float16", fill_payload: bool = False) -> dict:
    inputs = campaign_inputs(artifacts, dataset, out, data_dir)
    process_tuning.match_blas_threads()
    accuracy_table = AccuracyTable.load(table)
    codec, model, data = inputs.codec, inputs.model, inputs.data
    layout = PayloadLayout.for_dtype(value_dtype)
    n_test = min(n_test, len(data.y_test))
    states = build_trace(trace, rounds, seed)
    n_min = min(PcaLoraTxConfig().n_min_train, len(data.y_train))
    eval_cache: dict[int, np.ndarray] = {}
    runs = []
    for policy_name in ("largest", "lookahead"):
        policy = get_policy(policy_name, table)
        for use_bank in (False, True):
            strategy = LoraAlignment()
            if use_bank:
                bank = AdapterBank(16, codec.fingerprint, model_digest(model)).owner(SHARED)  # one TX: one owner
                strategy = BankedAlignment(strategy, bank)
            records = []
            for k, state in enumerate(states):
                b_max = budget_bytes(state.rate_bps, deadline_s)
                rec = {"round": k, "mcs": state.mcs, "modulation": state.modulation,
                       "rate_bps": state.rate_bps, "b_max_bytes": b_max}
                try:
                    alpha = policy(BudgetView(b_max, codec.d_max, n_test, n_min, layout))
                    nothing = "d_pre" if alpha == codec.d_max else (
                        "bank" if alpha in strategy.aligned_alphas() else None)
                    b_round = b_max
                    if nothing and not fill_payload:  # a lean payload: the training vectors that still pay
                        n_full = (b_max - layout.payload_bytes(alpha, n_test)) // layout.vector_bytes(alpha)
                        n_lean = lean_n_train(accuracy_table if nothing == "d_pre" else None, alpha, n_full)
                        b_round = layout.payload_bytes(alpha, n_test + n_lean)
                    rd = build_round(codec, data, alpha, seed * 100003 + k, layout, n_test=n_test,
                                     b_max_bytes=b_round, rate_bps=state.rate_bps)
                except (BudgetError, ValueError) as e:
                    rec.update(status="failed", error=str(e), accuracy=0.0)
                    records.append(rec)
                    continue
                if alpha not in eval_cache:
                    eval_cache[alpha] = quantized_test(codec, data, alpha, value_dtype)
                t0 = time.perf_counter()
                if rd.n_train:
                    adapted, rep = strategy.adapt(model, rd.z_train, rd.y_train, codec)
                    info = rep.to_dict()
                else:
                    adapted, info = strategy.without_training(model, alpha, codec)
                adapt_ms = (time.perf_counter() - t0) * 1e3
                rec.update(status="ok", alpha=alpha, n_train=rd.n_train, payload_bytes=rd.payload_bytes,
                           nothing_to_align=nothing, accuracy=accuracy(predict(adapted, eval_cache[alpha]), data.y_test),
                           acc_pretrained=accuracy(predict(model, eval_cache[alpha]), data.y_test),
                           adapt_ms=adapt_ms, communication_ms=rd.timings["communication_ms"], adapt=info)
                records.append(rec)
            acc = np.array([r["accuracy"] for r in records])
            adapt = [r["adapt_ms"] for r in records if r["status"] == "ok"]
            runs.append({"policy": policy_name, "bank": use_bank, "rounds": records,
                         "mean_accuracy": float(acc.mean()), "rounds_below_threshold": int((acc < threshold).sum()),
                         "failed_rounds": sum(r["status"] != "ok" for r in records),
                         "adapt_ms_median": float(np.median(adapt)) if adapt else None,
                         "adapt_ms_total": float(np.sum(adapt)) if adapt else 0.0,
                         "warm_starts": sum(bool((r.get("adapt") or {}).get("warm_start")) for r in records),
                         "lean_rounds": sum(r.get("status") == "ok" and r["n_train"] == 0 for r in records),
                         "payload_bytes_total": int(sum(r.get("payload_bytes") or 0 for r in records)),
                         "airtime_ms_total": float(sum((r.get("payload_bytes") or 0) * 8 / r["rate_bps"] * 1e3
                                                       for r in records if r.get("status") == "ok"))})
    result = {"trace": trace, "rounds": rounds, "seed": seed, "threshold": threshold, "deadline_s": deadline_s,
              "n_test": n_test, "n_min_train": n_min, "policy_table": str(table), "dataset": dataset,
              "fill_payload": fill_payload,
              "mode": "in-process", "machine": machine_info(), "loadavg_end": list(os.getloadavg()),
              "runs": runs}
    (out / "fading.json").write_text(json.dumps(result, indent=1))
    return result


def print_fading(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"semalign fading: trace {result['trace']}, {result['rounds']} rounds, "
                    f"threshold {result['threshold']:.2f} ({result['mode']})", header_style="bold")
    for name in ("policy", "bank", "mean acc %", "rounds < thr", "failed", "adapt ms (median)",
                 "adapt ms (total)", "warm starts", "lean rounds", "air ms (total)", "alphas used"):
        t.add_column(name, justify="right")
    for run in result["runs"]:
        alphas = sorted({r["alpha"] for r in run["rounds"] if r.get("alpha")})
        med = run["adapt_ms_median"]
        t.add_row(run["policy"], "yes" if run["bank"] else "no", f"{100 * run['mean_accuracy']:.2f}",
                  str(run["rounds_below_threshold"]), str(run["failed_rounds"]),
                  "-" if med is None else f"{med:.0f}", f"{run['adapt_ms_total']:.0f}", str(run["warm_starts"]),
                  str(run.get("lean_rounds", 0)), f"{run.get('airtime_ms_total', 0):.0f}", ",".join(map(str, alphas)))
    Console(width=200).print(t)
