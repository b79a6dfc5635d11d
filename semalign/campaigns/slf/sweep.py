"""``semalign slf-sweep``: the SLF paper's Table I, Fig. 3 and a Fig. 2-like reconstruction grid, in-process.

No daemons: each case runs the mode's own code paths in this process —
the RX's decoder goes through :func:`tensors_to_wire` and an encoded
SLF_DECODER frame (real byte counts, optionally float16), the TX fine-tunes
with :func:`slf_finetune`, the changed layers go back through an encoded
SLF_UPLOAD frame and are installed into a copy of the RX's transceiver
(:meth:`Transceiver.load_decoder_state`, as the RX does), and
:func:`evaluate_link` measures accuracy and MSE over the K-ary DMC.

Experiments (``docs/modes/slf.md``, "Reproducing the paper"):

- **Table I** (pair ``[TX, RX]``, default the paper's ``[TX1, RX2]``, eps
  ``table_eps``): for every ``l`` the download and upload sizes, fine-tuning
  FLOPs, Table I's recovery-time model (2 Mb/s both ways, 30 TFLOP/s), the
  same recovery time with the fine-tuning measured on this CPU, accuracy and
  MSE, beside the misaligned pair and the paper's numbers. With ``fp16``:
  the same rows with the download in float16 (``l >= 1``; at ``l = 0`` the
  downloaded values are not used).
- **Fig. 3, channel**: the same pair, fine-tuned and evaluated at each eps of
  ``eps_values``, ``l`` in ``fig3_layers``, against the misaligned pair.
- **Fig. 3, source**: TX against ``source_rx`` (default TRX3, Fashion-MNIST,
  standing in for the paper's CIFAR-10 RX3). Data dissimilarity ``delta``:
  the fraction of the TX's images (fine-tuning and test) drawn from the TX's
  own source (MNIST) instead of the RX's (Fashion-MNIST); the rest are
  images of the RX's source that the RX never trained on. ``delta = 0``: the
  TX sends the RX's kind of images; ``delta = 1``: only its own kind. The
  RX classifies with a 20-class head (digits 0-9, garments 10-19) trained
  here on clean images of both sources (none of them the TX's), as the
  paper's classifier trained on both datasets.
- **Recovery deadline**: the ``l`` that
  :func:`choose_n_frozen` picks for each link rate and deadline, from Table
  I's measured frame sizes and FLOPs, under the paper's compute rate and
  this CPU's measured one, with the accuracy and MSE that ``l`` measured.

Outputs in ``out``: ``slf_sweep.json`` (every number, settings, machine),
``table1.csv``, ``table1_fp16.csv``, ``fig3_eps.csv``,
``fig3_dissimilarity.csv``, ``deadline.csv``, and ``table1.png``,
``fig3_eps.png``, ``fig3_dissimilarity.png``, ``reconstructions.png``.

Here: the sweep and the recovery-deadline table; the settings in
:mod:`.sweep_config`, one case in :mod:`.sweep_case`, the source study in
:mod:`.source_study`, the figures in :mod:`.sweep_figures`, the files and
tables in :mod:`.sweep_report`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from pathlib import Path

import numpy as np
import torch

from common.data.datasets import DatasetUnavailable, load_dataset
from common.modes.slf.recovery import (
    COMPUTE_FLOPS_PER_S,
    LINK_RATE_BPS,
    choose_n_frozen,
    recovery_time,
)
from semalign.campaigns.machine import machine_info
from semalign.campaigns.slf.source_study import source_study
from semalign.campaigns.slf.sweep_case import CaseRunner, as_tensor, load_side, pick, with_baseline
from semalign.campaigns.slf.sweep_config import PAPER_MIN_MSE_REDUCTION, PAPER_TABLE1, SlfSweepConfig
from semalign.campaigns.slf.sweep_figures import write_figures
from semalign.campaigns.slf.sweep_report import write_files
from semalign.progress import progress_bar

log = logging.getLogger("semalign.slf_sweep")


def run_slf_sweep(cfg: SlfSweepConfig, out: Path, data_dir: str | None = None, progress: bool = True) -> dict:
    """Run every experiment of ``cfg``; write the CSV, JSON and PNG files to ``out``; return the JSON."""
    if cfg.device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device}: torch sees no GPU here (torch {torch.__version__})")
    torch.set_num_threads(cfg.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    dev = cfg.device
    tx = load_side(cfg.tx_trx, data_dir, dev, progress)
    rx = load_side(cfg.rx_trx, data_dir, dev, progress)
    if tx.config.shape != rx.config.shape:
        raise ValueError(f"{tx.path} and {rx.path} have different architectures; SLF needs the same")
    own = load_dataset(tx.config.dataset, data_dir)
    split = tx.config.split(own)
    ft_idx = pick(len(split.y_train), cfg.finetune_images, [cfg.seed, 1])
    ev_idx = pick(len(split.y_test), cfg.eval_images, [cfg.seed, 2])
    x_ft = as_tensor(split.x_train[ft_idx], dev)
    x_ev, y_ev = as_tensor(split.x_test[ev_idx], dev), as_tensor(split.y_test[ev_idx].astype(np.int64), dev)
    result = {"settings": {**dataclasses.asdict(cfg), "tx": str(tx.path), "rx": str(rx.path),
                           "tx_config": tx.config.to_dict(), "rx_config": rx.config.to_dict(),
                           "finetune_images": len(x_ft), "eval_images": len(x_ev),
                           "link_rate_bps": LINK_RATE_BPS, "compute_flops_per_s": COMPUTE_FLOPS_PER_S},
              "machine": machine_info(), "paper": {"table1": PAPER_TABLE1,
                                                   "min_mse_reduction": PAPER_MIN_MSE_REDUCTION}}
    models: dict = {}
    source = None
    if cfg.source_rx_trx and cfg.dissimilarities:
        try:
            source = load_side(cfg.source_rx_trx, data_dir, dev, progress)
            other = load_dataset(source.config.dataset, data_dir)
        except DatasetUnavailable as e:
            result["fig3_dissimilarity_skipped"] = str(e)
            log.warning("source-dissimilarity study skipped: %s", e)
            source = None
    total = cfg.epochs_total(source is not None)
    with progress_bar("slf-sweep (fine-tuning epochs)", total, progress) as advance:
        run = CaseRunner(cfg, advance)
        # ---------------- Table I
        base = run.evaluate(tx.model, rx.model, rx.head, x_ev, y_ev, cfg.table_eps)
        own_pair = run.evaluate(tx.model, tx.model, tx.head, x_ev, y_ev, cfg.table_eps)
        rx_pair = run.evaluate(rx.model, rx.model, rx.head, x_ev, y_ev, cfg.table_eps)
        result["table1_reference"] = {"misaligned": base, "tx_own_pair": own_pair, "rx_own_pair": rx_pair,
                                      "eps": cfg.table_eps}
        rows = []
        for l in cfg.layers:
            row, m = run.case(tx, rx, rx.head, x_ft, x_ev, y_ev, l, cfg.table_eps, cfg.table_epochs, "float32",
                              f"Table I l={l}")
            rows.append(with_baseline(row, base) | {f"paper_{k}": v for k, v in PAPER_TABLE1[l].items()})
            models[("table1", l)] = m
        result["table1"] = rows
        if cfg.fp16:
            half = []
            for l in (l for l in cfg.layers if l > 0):
                row, _ = run.case(tx, rx, rx.head, x_ft, x_ev, y_ev, l, cfg.table_eps, cfg.table_epochs, "float16",
                                  f"Table I fp16 l={l}")
                ref = next(r for r in rows if r["n_frozen"] == l)
                row = with_baseline(row, base)
                row.update(accuracy_float32=ref["accuracy"], mse_float32=ref["mse"],
                           accuracy_change=row["accuracy"] - ref["accuracy"], mse_change=row["mse"] - ref["mse"],
                           download_bytes_saved=ref["download_frame_bytes"] - row["download_frame_bytes"],
                           download_model_s_saved=ref["download_model_s"] - row["download_model_s"])
                half.append(row)
            result["table1_fp16"] = half
        # ---------------- Fig. 3, channel dissimilarity
        fig_eps = []
        for eps in cfg.eps_values:
            b = run.evaluate(tx.model, rx.model, rx.head, x_ev, y_ev, eps)
            fig_eps.append({"eps": eps, "case": "misaligned", "n_frozen": None, **b})
            for l in cfg.fig3_layers:
                row, m = run.case(tx, rx, rx.head, x_ft, x_ev, y_ev, l, eps, cfg.fig3_epochs, "float32",
                                  f"Fig. 3 eps={eps:g} l={l}")
                fig_eps.append({"case": f"SLF l={l}", **with_baseline(row, b)})
        result["fig3_eps"] = fig_eps
        # ---------------- Fig. 3, source dissimilarity
        if source is not None:
            result["fig3_dissimilarity"], src_models = source_study(cfg, run, tx, source, own, other, len(x_ft),
                                                                    len(x_ev), advance)
            models.update(src_models)
    # ---------------- recovery deadline (item 6b), from Table I's measurements
    result["deadline"] = deadline_table(cfg, rows)
    result["summary"] = summary(result)
    # ---------------- figures
    result["figures"] = write_figures(cfg, result, models, tx, rx, x_ev, out)
    result["wall_s"] = time.perf_counter() - t_start
    write_files(result, out)
    return result

def auto_deadlines(download: int, uploads: dict, flops: dict, rate: float, speed: float) -> list[float]:
    """Deadlines that make every distinct choice show: 10 % under the fastest predicted recovery time, the
    midpoints between consecutive predicted times, 10 % over the slowest."""
    totals = sorted({recovery_time(download, flops[l], uploads[l], rate, rate, speed).total_s for l in uploads})
    return [0.9 * totals[0], *((a + b) / 2 for a, b in itertools.pairwise(totals)), 1.1 * totals[-1]]


def deadline_table(cfg: SlfSweepConfig, rows: list[dict]) -> list[dict]:
    """For each link rate, deadline and compute model: the ``l`` :func:`choose_n_frozen` picks and what it buys."""
    by_l = {r["n_frozen"]: r for r in rows}
    if not by_l:
        return []
    download = max(r["download_frame_bytes"] for r in rows)
    uploads = {l: r["upload_frame_bytes"] for l, r in by_l.items()}
    flops = {l: r["finetune_flops"] for l, r in by_l.items()}
    cpu = [r["compute_flops_per_s"] for r in rows if r["compute_flops_per_s"]]
    computes = {"paper: 30 TFLOP/s": COMPUTE_FLOPS_PER_S}
    if cpu:
        computes["this CPU (measured)"] = float(np.median(cpu))
    out = []
    for compute_name, speed in computes.items():
        for rate in cfg.rates_bps:
            deadlines = cfg.deadlines_s or auto_deadlines(download, uploads, flops, rate, speed)
            for deadline in deadlines:
                c = choose_n_frozen(deadline, download, uploads, flops, rate, speed)
                r = by_l[c.n_frozen]
                predicted = c.predicted[c.n_frozen].total_s
                measured = None
                if compute_name.startswith("this CPU"):
                    measured = (download + r["upload_frame_bytes"]) * 8 / rate + r["finetune_s"]
                out.append({"compute": compute_name, "compute_flops_per_s": speed, "rate_bps": rate,
                            "deadline_s": deadline, "n_frozen": c.n_frozen, "met_predicted": c.met,
                            "predicted_s": predicted, "measured_s": measured,
                            "met_measured": None if measured is None else measured <= deadline,
                            "accuracy": r["accuracy"], "mse": r["mse"]})
    return out


def summary(result: dict) -> dict:
    """The headline numbers: per-l accuracy and MSE reduction vs the paper's targets, fp16's effect."""
    rows = result["table1"]
    s = {"misaligned": result["table1_reference"]["misaligned"],
         "min_mse_reduction": min((r["mse_reduction"] for r in rows if r["mse_reduction"] is not None), default=None),
         "paper_min_mse_reduction": PAPER_MIN_MSE_REDUCTION,
         "accuracy_vs_paper_points": {r["n_frozen"]: 100 * (r["accuracy"] - r["paper_accuracy"]) for r in rows},
         "recovery_model_vs_paper_s": {r["n_frozen"]: r["recovery_model_s"] - r["paper_recovery_s"] for r in rows},
         "finetune_s_per_epoch": {r["n_frozen"]: r["finetune_s_per_epoch"] for r in rows}}
    if result.get("table1_fp16"):
        s["fp16"] = {r["n_frozen"]: {"accuracy_change": r["accuracy_change"], "mse_change": r["mse_change"],
                                     "download_bytes_saved": r["download_bytes_saved"],
                                     "download_model_s_saved": r["download_model_s_saved"]}
                     for r in result["table1_fp16"]}
    return s
