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
channel); their accuracy is then over the payload's ``n_test`` test vectors.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.artifacts import load_tensors
from common.data.datasets import Dataset
from common.files import atomic_write, json_safe
from common.learn.models import accuracy, build_mlp, predict
from common.learn.train import TrainConfig, fit
from common.link.channel.nr import max_mcs
from common.modes.pca_lora.adapter_bank import (
    SHARED,
    AdapterBank,
    BankedAlignment,
    model_digest,
)
from common.learn import process_tuning
from common.modes.pca_lora.adapt_config import DEFAULT_RECIPE, AdaptConfig
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.budget import PayloadLayout, budget_bytes
from common.wire.values import value_format
from semalign.campaigns.machine import machine_info
from semalign.campaigns.pca_lora.replay import Replay, StepsFrom, step_counts
from semalign.campaigns.pca_lora.runner import (
    RoundData,
    build_round,
    campaign_inputs,
    quantized_test,
    reference_rate_bps,
)
from semalign.progress import progress_bar

log = logging.getLogger("semalign.sweep")

METHODS = ("pretrained", "lora", "first_layer", "staged", "lora_bank", "lora_nobudget", "end_to_end", "full_ft",
           "last_layer")
# sweep method -> the RX's --adapt-recipe it measures
RECIPE_METHODS = {"lora": "lora", "first_layer": "first-layer", "staged": "staged"}
DEFAULT_METHOD = next(m for m, r in RECIPE_METHODS.items() if r == DEFAULT_RECIPE)
CSV_FIELDS = ("mode", "method", "alpha", "seed", "n_train", "accuracy", "eval_n", "adapt_ms", "train_ms",
              "classify_ms", "communication_ms", "airtime_ms", "encode_ms", "pack_ms", "unpack_ms",
              "reconstruct_ms", "payload_bytes", "b_max_bytes", "steps", "complete", "kept",
              "warm_start", "warm_from_alpha", "epochs", "cached", "default", "steps_by", "stage_steps",
              "stage_plan", "cut_by_cap", "precision", "reused")


@dataclass(frozen=True)
class E2EConfig:
    """End-to-End training: Adam at ``lr``, ``batch`` vectors, early stop after ``patience``
    epochs without a better validation accuracy (``val_fraction`` of the training set)."""

    max_epochs: int = 30
    patience: int = 3
    batch: int = 128
    lr: float = 1e-3
    val_fraction: float = 0.1
    threads: int = 1

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self) | {"threads": 0}, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class SweepConfig:
    dims: tuple[int, ...]
    seeds: int = 3
    methods: tuple[str, ...] = METHODS
    b_max_bytes: int | None = None
    rate_bps: float | None = None
    deadline_s: float = 0.05
    n_test: int = 500
    value_dtype: str = "float16"
    ft_steps: int = 150
    table_fractions: tuple[float, ...] = (0.05, 0.2, 0.5)
    e2e: E2EConfig = field(default_factory=E2EConfig)
    live: bool = False
    steps_from: str | None = None  # a previous sweep.json: replay its step counts (replay.py)

    def __post_init__(self):
        if not self.dims or any(a < 1 for a in self.dims):
            raise ValueError(f"dims must be positive integers, got {self.dims}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")

    @property
    def rate(self) -> float:
        return self.rate_bps or reference_rate_bps()

    @property
    def budget(self) -> int:
        return self.b_max_bytes or budget_bytes(self.rate, self.deadline_s)


def _classify_ms(model: nn.Module, x: np.ndarray, repeats: int = 3) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(model, x)
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


# ---------------------------------------------------------------- baselines


def finetune(model: nn.Sequential, x: np.ndarray, y: np.ndarray, which: str, steps: int, seed: int
             ) -> tuple[nn.Sequential, float, int]:
    """Adam on all weights (``full``) or the last Linear layer (``last``) of a copy; (model, ms, steps)."""
    t0 = time.perf_counter()
    net = copy.deepcopy(model)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    trainable = linears if which == "full" else linears[-1:]
    for p in net.parameters():
        p.requires_grad_(False)
    params = [p for m in trainable for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    lr = 1e-3 if which == "full" else 1e-2
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(np.asarray(y, np.int64))
    report = fit(params, lambda xb, yb: nn.functional.cross_entropy(net(xb), yb), (xt, yt),
                 TrainConfig(epochs=0, steps=steps, batch_size=256, lr=lr, seed=seed, drop_last=True)) if steps else None
    done = report.steps if report else 0
    for p in params:
        p.requires_grad_(False)
    return net.eval(), (time.perf_counter() - t0) * 1e3, done


def train_end_to_end(x: np.ndarray, y: np.ndarray, n_classes: int, hidden: tuple[int, ...], cfg: E2EConfig,
                     seed: int) -> tuple[nn.Sequential, dict]:
    """A fresh MLP on ``x`` (n, d) to convergence: early stopping on a validation split."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(x), generator=gen)
        n_val = max(1, int(len(x) * cfg.val_fraction))
        val, tr = perm[:n_val], perm[n_val:]
        xt, yt = torch.as_tensor(x), torch.as_tensor(y.astype(np.int64))
        net = build_mlp(x.shape[1], hidden, n_classes)
        state = {"best": -1.0, "weights": None, "bad": 0, "epochs": 0, "best_epoch": 0}

        def validate(epoch: int, _loss: float) -> bool:
            """Early stopping: keep the best weights; stop after ``patience`` epochs without gain."""
            net.eval()
            acc = accuracy(predict(net, xt[val]), y[val.numpy()])
            net.train()
            state["epochs"] = epoch
            if acc > state["best"]:
                state.update(best=acc, bad=0, best_epoch=epoch,
                             weights={k: v.detach().clone() for k, v in net.state_dict().items()})
            else:
                state["bad"] += 1
            return state["bad"] < cfg.patience

        net.train()
        fit(list(net.parameters()), lambda xb, yb: nn.functional.cross_entropy(net(xb), yb),
            (xt[tr], yt[tr]), TrainConfig(epochs=cfg.max_epochs, batch_size=cfg.batch, lr=cfg.lr, seed=seed),
            on_epoch=validate, generator=gen)
        best, best_state, epochs, best_epoch = state["best"], state["weights"], state["epochs"], state["best_epoch"]
        net.load_state_dict(best_state)
        net.eval()
        info = {"train_ms": (time.perf_counter() - t0) * 1e3, "epochs": epochs, "best_epoch": best_epoch,
                "val_accuracy": best, "threads": cfg.threads}
        return net, info
    finally:
        torch.set_num_threads(threads)


def cached_end_to_end(cache_dir: Path, tag: str, x: np.ndarray, y: np.ndarray, n_classes: int,
                      hidden: tuple[int, ...], cfg: E2EConfig, seed: int) -> tuple[nn.Sequential, dict]:
    """:func:`train_end_to_end`, or its cached result (plain tensors + a JSON with the training time)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    pt, meta = cache_dir / f"{tag}.pt", cache_dir / f"{tag}.json"
    if pt.exists() and meta.exists():
        try:
            info = json.loads(meta.read_text())
            if info.get("sha256") == hashlib.sha256(pt.read_bytes()).hexdigest():
                net = build_mlp(x.shape[1], hidden, n_classes)
                net.load_state_dict(load_tensors(pt))  # ArtifactError (a RuntimeError) when damaged
                return net.eval(), {**info, "cached": True}
            log.warning("E2E cache %s: checksum mismatch; retraining", pt)
        except (ValueError, RuntimeError, OSError) as e:
            log.warning("E2E cache %s unreadable (%s); retraining", pt, e)
    net, info = train_end_to_end(x, y, n_classes, hidden, cfg, seed)
    atomic_write(pt, lambda f: torch.save(net.state_dict(), f), fsync=False)  # a cache
    info["sha256"] = hashlib.sha256(pt.read_bytes()).hexdigest()
    meta.write_text(json.dumps(info))
    return net, {**info, "cached": False}


# ---------------------------------------------------------------- the sweep


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


def quantized_train(codec, data: Dataset, alpha: int, value_dtype: str) -> np.ndarray:
    """The whole training set reconstructed from ``value_dtype`` alpha-dim features (E2E input)."""
    fmt = value_format(value_dtype)
    z = codec.encode(data.x_train, alpha)
    values, scales = fmt.quantize(z)
    return codec.decode(fmt.dequantize(values, scales, len(z), alpha))


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


_LABELS = {"pretrained": "Pre-Trained", "lora": "LoRA (the paper's recipe)", "first_layer": "First-layer",
           "staged": "Staged (first layer, then all)", "lora_bank": "Default recipe + adapter bank",
           "lora_nobudget": "LoRA, no time budget", "end_to_end": "End-to-End", "full_ft": "Full fine-tuning",
           "last_layer": "Last-layer fine-tuning"}


def method_label(method: str) -> str:
    """The plot/table label of a sweep method; the RX default is marked."""
    label = _LABELS.get(method, method)
    return f"{label} [RX default]" if method == DEFAULT_METHOD else label


def plot_accuracy(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    summary = [s for s in result["summary"] if s["mode"] == "in-process" or result["mode"] == "live"]
    for method in METHODS:
        ss = sorted((s for s in summary if s["method"] == method and s["mode"] == "in-process"),
                    key=lambda s: s["alpha"])
        if not ss:
            continue
        a = [s["alpha"] for s in ss]
        m = np.array([s["acc_mean"] for s in ss]) * 100
        lo = np.array([s["acc_min"] for s in ss]) * 100
        hi = np.array([s["acc_max"] for s in ss]) * 100
        ax.plot(a, m, marker="o", label=method_label(method))
        ax.fill_between(a, lo, hi, alpha=0.2)
    ax.set_xlabel("transmitted dimension alpha")
    ax.set_ylabel("test accuracy (%)  [mean, band = min..max over seeds]")
    ax.set_title(f"Accuracy vs dimension ({result['dataset']}, B_max {result['b_max_bytes'] / 1e6:.3f} MB, "
                 f"{result['mode']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(s["method"], s["alpha"], s["mode"]): s for s in result["summary"]}
    alphas = sorted({s["alpha"] for s in result["summary"]})
    mode = "live" if result["mode"] == "live" and any(k[2] == "live" for k in by) else "in-process"
    lora = [by.get((DEFAULT_METHOD, a, mode)) or by.get((DEFAULT_METHOD, a, "in-process")) for a in alphas]
    if not all(lora):
        return
    comm = np.array([s["communication_ms_median"] for s in lora])
    tune = np.array([s["adapt_ms_median"] for s in lora])
    cls = np.array([s["classify_ms_median"] for s in lora])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    x = np.arange(len(alphas))
    ax1.bar(x, comm, label="Communication (encode, pack, air time, unpack, reconstruct)")
    ax1.bar(x, tune, bottom=comm, label=f"Fine-tuning ({method_label(DEFAULT_METHOD)})")
    ax1.bar(x, cls, bottom=comm + tune, label="Classification")
    ax1.set_xticks(x, [str(a) for a in alphas])
    ax1.set_xlabel("alpha")
    ax1.set_ylabel("latency (ms, cumulative, median over seeds)")
    ax1.set_title(f"Round latency, RX default recipe ({mode})", fontsize=9)
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3, axis="y")
    for method, key in (("lora", "adapt_ms_median"), ("first_layer", "adapt_ms_median"),
                        ("staged", "adapt_ms_median"), ("lora_bank", "adapt_ms_median"),
                        ("full_ft", "adapt_ms_median"), ("last_layer", "adapt_ms_median"),
                        ("end_to_end", "train_ms_median")):
        ss = [by.get((method, a, "in-process")) for a in alphas]
        pts = [(a, s[key]) for a, s in zip(alphas, ss) if s and s.get(key)]
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method_label(method))
    ax2.set_yscale("log")
    ax2.set_xlabel("alpha")
    ax2.set_ylabel("adaptation / training time (ms, log)")
    ax2.set_title("Adaptation vs End-to-End training time", fontsize=9)
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- live mode


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


