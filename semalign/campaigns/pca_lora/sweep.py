"""``semalign sweep``: accuracy and latency against the transmitted dimension (the paper's Figs. 5, 6).

For every alpha and seed the payload is the one the TX would send: ``N`` from
eq. (2) with the real header sizes for a reference budget ``B_max`` (default:
the top 64-QAM rate of the 40 MHz link x the TX deadline), the same value
dtype and ``n_test`` test vectors. Methods, all evaluated on the whole test
set reconstructed from the quantized alpha-dim features:

- ``pretrained``: the frozen RX model;
- ``lora`` / ``first_layer`` / ``staged``: the RX's adaptation recipes
  (``--adapt-recipe``, a cold start each, deterministic step counts calibrated
  to the RX's time budget on this machine, or with ``--steps-from`` exactly
  those a previous sweep recorded, uncapped: :mod:`.replay`); the RX default
  is marked in the ``default`` column;
- ``lora_nobudget``: the paper's LoRA without the time budget (150 steps,
  400 below alpha = d_pre/10, epoch cap only): what it reaches when time is no object;
- ``lora_bank``: the RX's default recipe with an adapter bank that persists
  across the sweep (alphas from large to small, seeds in turn: a new alpha
  warm-starts from the nearest stored one, a returning alpha reuses its own
  when the hold-out check accepts it);
- ``full_ft`` / ``last_layer``: Adam on all weights / the last layer, same vectors;
- ``end_to_end``: the same MLP trained from scratch on the whole training set
  reconstructed from alpha components, early stopping on a validation split;
  cached per (alpha, seed, settings) so reruns are cheap (``cached`` says so).

``--live`` runs the pretrained and default-recipe rows through real daemons (an
RX process and one TX process per alpha, on loopback with a fixed 64-QAM
channel); their accuracy is then over the payload's ``n_test`` test vectors
(:mod:`.sweep_live`).

Here: the sweep, its summary and its files; the settings in
:mod:`.sweep_config`, the baselines in :mod:`.sweep_baselines`, the plots in
:mod:`.sweep_plots`, the printed tables in :mod:`.sweep_report`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from torch import nn

from common.files import json_safe
from common.learn.models import accuracy, predict
from common.modes.pca_lora.adapter_bank import (
    SHARED,
    AdapterBank,
    model_digest,
)
from common.learn import process_tuning
from common.modes.pca_lora.adapt_config import DEFAULT_RECIPE, AdaptConfig
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.banked_alignment import BankedAlignment
from common.modes.pca_lora.budget import PayloadLayout
from semalign.campaigns.machine import machine_info
from semalign.campaigns.pca_lora.replay import Replay, StepsFrom, step_counts
from semalign.campaigns.pca_lora.runner import (
    RoundData,
    build_round,
    campaign_inputs,
    quantized_test,
)
from semalign.campaigns.pca_lora.sweep_baselines import cached_end_to_end, finetune, quantized_train
from semalign.campaigns.pca_lora.sweep_config import DEFAULT_METHOD, METHODS, RECIPE_METHODS, SweepConfig
from semalign.campaigns.pca_lora.sweep_plots import plot_accuracy, plot_latency
from semalign.progress import progress_bar

log = logging.getLogger("semalign.sweep")

CSV_FIELDS = ("mode", "method", "alpha", "seed", "n_train", "accuracy", "eval_n", "adapt_ms", "train_ms",
              "classify_ms", "communication_ms", "airtime_ms", "encode_ms", "pack_ms", "unpack_ms",
              "reconstruct_ms", "payload_bytes", "b_max_bytes", "steps", "complete", "kept",
              "warm_start", "warm_from_alpha", "epochs", "cached", "default", "steps_by", "stage_steps",
              "stage_plan", "cut_by_cap", "precision", "reused")


def _classify_ms(model: nn.Module, x: np.ndarray, repeats: int = 3) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(model, x)
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))



def _row(mode: str, method: str, rd: RoundData, seed: int, acc: float, eval_n: int, b_max: int, **extra) -> dict:
    row = {"mode": mode, "method": method, "alpha": rd.alpha, "seed": seed, "n_train": rd.n_train,
           "accuracy": acc, "eval_n": eval_n, "payload_bytes": rd.payload_bytes, "b_max_bytes": b_max,
           **{k: round(v, 4) for k, v in rd.timings.items()}}
    row.update(extra)
    return row


def run_sweep(artifacts: Path, dataset: str, cfg: SweepConfig, out: Path, cache_dir: Path | None = None,
              data_dir: str | None = None, progress: bool = True, live_runner=None) -> dict:
    """Run the sweep; writes sweep.csv, sweep.json, policy_table.json and the plots to ``out``."""
    inputs = campaign_inputs(artifacts, dataset, out, data_dir)
    codec, meta, model, data = inputs.codec, inputs.meta, inputs.model, inputs.data
    cache_dir = cache_dir or out / "cache"
    layout = PayloadLayout.for_dtype(cfg.value_dtype)
    dims = sorted({min(a, codec.d_max) for a in cfg.dims}, reverse=True)
    b_max = cfg.budget
    mode = "live" if cfg.live else "in-process"  # of the run; rows computed here are "in-process"
    process_tuning.match_blas_threads()  # as the RX daemon: numpy's BLAS threads must not take the trainer's core
    machine = machine_info()
    replay = None
    if cfg.steps_from:
        replay = StepsFrom(Path(cfg.steps_from), {"dataset": dataset, "fingerprint": codec.fingerprint,
                                                  "b_max_bytes": b_max, "n_test": cfg.n_test,
                                                  "value_dtype": cfg.value_dtype})
        replay.check_covers([m for m in METHODS if m in cfg.methods], dims, cfg.seeds)
    kind = Replay if replay else LoraAlignment
    strategies = {m: kind(adapt=AdaptConfig(recipe=r)) for m, r in RECIPE_METHODS.items()}
    strategies["lora_nobudget"] = kind(adapt=AdaptConfig(recipe="lora", steps=150, deep_steps=400,
                                                         budget_ms=None, deep_budget_ms=None))
    bank = AdapterBank(64, codec.fingerprint, model_digest(model)).owner(SHARED)  # one TX: one owner
    strategies["lora_bank"] = BankedAlignment(kind(), bank)
    subset = kind()  # the default recipe on fractions of the payload
    # calibrated once, before any row is timed (as the RX daemon does at start-up)
    calibration = {m: strategies[m].calibrate(model, codec) for m in strategies if m in cfg.methods}
    x_train_cache: dict[int, np.ndarray] = {}
    rows: list[dict] = []
    methods = [m for m in METHODS if m in cfg.methods]
    live_rows = live_runner(dims, cfg) if (cfg.live and live_runner) else {}
    total = cfg.seeds * len(dims) * len(methods)
    log.info("sweep (%s): dims %s, %d seeds, B_max %d B, methods %s", mode, dims, cfg.seeds, b_max, methods)
    with progress_bar(f"sweep {dataset} ({mode})", total, progress) as advance:
        for seed in range(cfg.seeds):
            for alpha in dims:
                rd = build_round(codec, data, alpha, seed, layout, n_test=cfg.n_test, b_max_bytes=cfg.budget,
                                 rate_bps=cfg.rate)
                x_eval = quantized_test(codec, data, alpha, cfg.value_dtype)
                n_eval = len(x_eval)
                x_fit = codec.decode(rd.z_train)
                for method in methods:
                    status = ""
                    if method == "pretrained":
                        acc = accuracy(predict(model, x_eval), data.y_test)
                        row = _row("in-process", method, rd, seed, acc, n_eval, b_max, adapt_ms=0.0,
                                   classify_ms=_classify_ms(model, rd.x_test_round))
                    elif method in strategies:
                        if replay:
                            target = strategies[method]
                            getattr(target, "inner", target).set(replay.plan(method, alpha, seed, rd.n_train))
                        adapted, rep = strategies[method].adapt(model, rd.z_train, rd.y_train, codec)
                        acc = accuracy(predict(adapted, x_eval), data.y_test)
                        row = _row("in-process", method, rd, seed, acc, n_eval, b_max, adapt_ms=rep.duration_ms,
                                   classify_ms=_classify_ms(adapted, rd.x_test_round), **_report_fields(rep))
                        status = f"{rep.duration_ms:.0f} ms"
                        if method == DEFAULT_METHOD:
                            rows.extend(_subset_rows("in-process", model, codec, rd, seed, cfg, x_eval, data, b_max,
                                                     subset, replay))
                    elif method in ("full_ft", "last_layer"):
                        net, ms, done = finetune(model, x_fit, rd.y_train, "full" if method == "full_ft" else "last",
                                                 cfg.ft_steps, seed)
                        acc = accuracy(predict(net, x_eval), data.y_test)
                        row = _row("in-process", method, rd, seed, acc, n_eval, b_max, adapt_ms=ms,
                                   classify_ms=_classify_ms(net, rd.x_test_round), steps=done, complete=True)
                    else:  # end_to_end
                        if alpha not in x_train_cache:
                            x_train_cache.clear()
                            x_train_cache[alpha] = quantized_train(codec, data, alpha, cfg.value_dtype)
                        tag = f"e2e-{dataset}-{codec.fingerprint[:12]}-a{alpha}-s{seed}-{cfg.e2e.key()}"
                        net, info = cached_end_to_end(cache_dir, tag, x_train_cache[alpha], data.y_train,
                                                      meta.n_classes, tuple(meta.hidden), cfg.e2e, seed)
                        acc = accuracy(predict(net, x_eval), data.y_test)
                        row = _row("in-process", method, rd, seed, acc, n_eval, b_max, train_ms=info["train_ms"],
                                   classify_ms=_classify_ms(net, rd.x_test_round), epochs=info["epochs"],
                                   cached=info["cached"], n_train=len(data.y_train))
                        status = f"E2E {info['train_ms'] / 1e3:.1f} s" + (" (cached)" if info["cached"] else "")
                    row["default"] = method == DEFAULT_METHOD
                    rows.append(row)
                    advance(1, f"seed {seed} alpha {alpha} {method} {row['accuracy']:.4f} {status}")
                for lr_row in live_rows.get((seed, alpha), []):
                    rows.append(lr_row)
    result = {"mode": mode, "dataset": dataset, "artifacts": str(artifacts), "fingerprint": codec.fingerprint,
              "d_pre": codec.d_max, "b_max_bytes": b_max, "rate_bps": cfg.rate, "deadline_s": cfg.deadline_s,
              "n_test": cfg.n_test, "value_dtype": cfg.value_dtype, "header_bytes": layout.header_bytes,
              "vector_header_bytes": layout.vector_header_bytes, "machine": machine,
              "loadavg_end": list(os.getloadavg()), "config": json_safe(asdict(cfg)),
              "adapt_defaults": json_safe(asdict(AdaptConfig())), "default_method": DEFAULT_METHOD,
              "calibration": calibration, "steps_from": cfg.steps_from,
              "recorded_machine": replay.machine if replay else None, "rows": rows}
    result["step_counts"] = step_counts(rows)  # what --steps-from replays
    result["summary"] = summarize(rows)
    write_outputs(out, result)
    return result


def _report_fields(rep) -> dict:
    """The adaptation report's fields a sweep row carries."""
    return {"steps": rep.steps, "complete": rep.complete, "kept": rep.kept, "warm_start": rep.warm_start,
            "warm_from_alpha": rep.warm_from_alpha, "steps_by": rep.steps_by, "stage_steps": list(rep.stage_steps),
            "stage_plan": list(rep.stage_plan), "cut_by_cap": rep.cut_by_cap, "precision": rep.precision, "reused": rep.reused}


def _subset_rows(mode, model, codec, rd: RoundData, seed: int, cfg: SweepConfig, x_eval, data, b_max,
                 strategy: LoraAlignment, replay: StepsFrom | None = None) -> list[dict]:
    """The default recipe (``strategy``) on the first fractions of the received vectors: the n_train axis
    of the policy table; with ``replay`` each at its recorded step counts."""
    rows = []
    for f in cfg.table_fractions:
        n = max(1, int(round(rd.n_train * f)))
        if n >= rd.n_train:
            continue
        if replay:
            strategy.set(replay.plan("default_subset", rd.alpha, seed, n))
        adapted, rep = strategy.adapt(model, rd.z_train[:n], rd.y_train[:n], codec)
        acc = accuracy(predict(adapted, x_eval), data.y_test)
        row = _row("in-process", "default_subset", rd, seed, acc, len(x_eval), b_max, adapt_ms=rep.duration_ms,
                   **_report_fields(rep))
        row["n_train"] = n
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (method, alpha): mean, std, min, max accuracy over seeds; median adapt/train time."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["method"] == "default_subset":
            continue
        groups.setdefault((r["mode"], r["method"], r["alpha"]), []).append(r)
    out = []
    for (mode, method, alpha), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        acc = np.array([r["accuracy"] for r in rs])
        def med(key):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return float(np.median(vals)) if vals else None
        out.append({"mode": mode, "method": method, "alpha": alpha, "seeds": len(rs),
                    "n_train": int(np.median([r["n_train"] for r in rs])),
                    "acc_mean": float(acc.mean()), "acc_std": float(acc.std()), "acc_min": float(acc.min()),
                    "acc_max": float(acc.max()), "adapt_ms_median": med("adapt_ms"),
                    "train_ms_median": med("train_ms"), "classify_ms_median": med("classify_ms"),
                    "communication_ms_median": med("communication_ms"),
                    "payload_bytes": int(np.median([r["payload_bytes"] for r in rs]))})
    return out


def policy_table(rows: list[dict]) -> dict:
    """alpha -> [[n_train, mean accuracy], ...] from pretrained (n = 0), default_subset and default-recipe rows."""
    acc: dict[int, dict[int, list[float]]] = {}
    for r in rows:
        if r["mode"] != "in-process":
            continue
        if r["method"] == "pretrained":
            acc.setdefault(r["alpha"], {}).setdefault(0, []).append(r["accuracy"])
        elif r["method"] in (DEFAULT_METHOD, "default_subset"):
            acc.setdefault(r["alpha"], {}).setdefault(r["n_train"], []).append(r["accuracy"])
    alphas = {}
    for alpha, by_n in acc.items():
        # seeds draw the same n per alpha; average per n
        alphas[str(alpha)] = [[n, float(np.mean(v))] for n, v in sorted(by_n.items())]
    return {"format_version": 1, "method": DEFAULT_RECIPE, "alphas": alphas}


def write_outputs(out: Path, result: dict) -> None:
    rows = result["rows"]
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in CSV_FIELDS})
    (out / "sweep.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "policy_table.json").write_text(json.dumps(policy_table(rows), indent=1))
    from semalign.campaigns.pca_lora.sweep_report import markdown_table

    (out / "sweep.md").write_text(markdown_table(result))
    try:
        plot_accuracy(result, out / "accuracy_vs_alpha.png")
        plot_latency(result, out / "latency_vs_alpha.png")
    except ImportError as e:  # matplotlib is a dependency, but keep the numbers if it is broken
        log.warning("plots skipped: %s", e)
