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
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.data.datasets import Dataset, DatasetUnavailable, load_dataset
from common.files import atomic_write_json
from common.modes.slf.artifacts import load_transceiver
from common.modes.slf.configs import TransceiverConfig
from common.modes.slf.dmc import dmc_numpy
from common.modes.slf.limits import DOWNLOAD_DTYPES
from common.modes.slf.messages import (
    DecoderReply,
    Upload,
    tensors_from_wire,
    tensors_to_wire,
)
from common.wire.tensors import wire_tensor_bytes
from common.modes.slf.recovery import (
    COMPUTE_FLOPS_PER_S,
    LINK_RATE_BPS,
    choose_n_frozen,
    finetune_flops,
    recovery_time,
)
from common.modes.slf.training import (
    SlfConfig,
    evaluate_link,
    pretrain_head,
    slf_finetune,
)
from common.modes.slf.transceiver import DECODER_LAYERS, TaskHead, Transceiver
from common.wire.protocol import decode, encode
from semalign.progress import progress_bar
from semalign.campaigns.machine import machine_info
from semalign.campaigns.slf.demo import ensure_transceiver

log = logging.getLogger("semalign.slf_sweep")

# The paper's Table I (recovery with the reconstruction and the classification fine-tuning; kB = 1000 B)
PAPER_TABLE1 = {
    0: {"download_kb": 114, "upload_kb": 114, "finetune_tflop": 79.02, "recovery_s": 3.542,
        "recovery_class_s": 3.422, "mse": 0.087, "accuracy": 0.9855},
    1: {"download_kb": 114, "upload_kb": 76, "finetune_tflop": 64.28, "recovery_s": 2.900,
        "recovery_class_s": 3.000, "mse": 0.103, "accuracy": 0.9804},
    2: {"download_kb": 114, "upload_kb": 22, "finetune_tflop": 48.19, "recovery_s": 2.144,
        "recovery_class_s": 1.864, "mse": 0.113, "accuracy": 0.9783},
    3: {"download_kb": 114, "upload_kb": 2, "finetune_tflop": 50.63, "recovery_s": 2.144,
        "recovery_class_s": 1.704, "mse": 0.121, "accuracy": 0.9701},
    4: {"download_kb": 114, "upload_kb": 0, "finetune_tflop": 47.32, "recovery_s": 2.026,
        "recovery_class_s": 1.586, "mse": 0.123, "accuracy": 0.9690},
}
PAPER_MIN_MSE_REDUCTION = 0.846  # "SLF reduces the baseline MSE from a minimum of 84.6 % to 92.1 %"


@dataclass(frozen=True)
class SlfSweepConfig:
    """What ``semalign slf-sweep`` runs (defaults: about 6-10 minutes on one core here).

    Transceivers: config names (``artifacts/slf-<name>``, pre-trained at the
    demo's reduced size when missing) or artifact directories. Epochs are
    passes over ``finetune_images`` of the TX's training split (0 = all of
    it); evaluation on ``eval_images`` of its test split (0 = all of it).
    ``source_rx_trx`` None or ``dissimilarities`` empty: no source study.
    ``finetune_lr`` None: the paper's (1e-3 for l = 0, else 1e-4).
    """

    tx_trx: str = "trx1"
    rx_trx: str = "trx2"
    source_rx_trx: str | None = "trx3"
    layers: tuple[int, ...] = (0, 1, 2, 3, 4)
    table_eps: float = 1e-5
    table_epochs: float = 5.0
    fp16: bool = True
    eps_values: tuple[float, ...] = (1e-5, 1e-3, 1e-2, 1e-1)
    fig3_layers: tuple[int, ...] = (0, 2, 4)
    fig3_epochs: float = 2.0
    dissimilarities: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    source_eps: float = 1e-5
    head_epochs: float = 5.0
    finetune_images: int = 0
    eval_images: int = 0
    finetune_lr: float | None = None
    batch_size: int = 128
    deadlines_s: tuple[float, ...] = ()  # () = auto: around and between the predicted recovery times
    rates_bps: tuple[float, ...] = (2e6, 170.1e6)
    grid_images: int = 8
    device: str = "cpu"
    threads: int = 1
    seed: int = 0
    eval_seed: int = 7

    def __post_init__(self):
        for name in ("layers", "fig3_layers"):
            bad = [l for l in getattr(self, name) if not 0 <= l <= len(DECODER_LAYERS)]
            if bad or not getattr(self, name):
                raise ValueError(f"{name} must be values in 0..{len(DECODER_LAYERS)}, got {getattr(self, name)}")
        probs = [self.table_eps, self.source_eps, *self.eps_values, *self.dissimilarities]
        if any(not 0.0 <= p <= 1.0 for p in probs):
            raise ValueError(f"eps values and dissimilarities must lie in [0, 1], got {probs}")
        if not (self.table_epochs > 0 and self.fig3_epochs > 0 and self.head_epochs > 0):
            raise ValueError("table_epochs, fig3_epochs and head_epochs must be > 0")
        if min(self.finetune_images, self.eval_images) < 0 or self.batch_size < 1 or self.threads < 1:
            raise ValueError("finetune_images and eval_images must be >= 0, batch_size and threads >= 1")
        if any(d <= 0 for d in self.deadlines_s) or any(r <= 0 for r in self.rates_bps):
            raise ValueError("deadlines and link rates must be > 0")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if not 1 <= self.grid_images <= 32:
            raise ValueError(f"grid_images must be in 1..32, got {self.grid_images}")

    def epochs_total(self, source: bool = True) -> int:
        """Progress units: fine-tuning epochs (rounded up) of every run, plus the head's (``source``: the
        source study runs)."""
        fp16 = sum(1 for l in self.layers if l > 0) if self.fp16 else 0
        table = (len(self.layers) + fp16) * math.ceil(self.table_epochs)
        fig = len(self.eps_values) * len(self.fig3_layers) * math.ceil(self.fig3_epochs)
        src = 0
        if source:
            src = len(self.dissimilarities) * len(self.fig3_layers) * math.ceil(self.fig3_epochs)
            src += math.ceil(self.head_epochs)
        return table + fig + src

    @property
    def grid_dissimilarity(self) -> float | None:
        """The dissimilarity whose reconstructions the grid shows (the one closest to 0.5)."""
        return min(self.dissimilarities, key=lambda d: abs(d - 0.5)) if self.dissimilarities else None


@dataclass
class _Side:
    """One loaded transceiver: model on the sweep's device, a CPU copy (FLOP counts), head, config, data."""

    model: Transceiver
    cpu: Transceiver
    head: TaskHead
    config: TransceiverConfig
    path: Path


def _load(trx: str, data_dir: str | None, device: str, progress: bool) -> _Side:
    path = ensure_transceiver(trx, data_dir, progress)
    model, head, config, _ = load_transceiver(path)
    return _Side(copy.deepcopy(model).to(device).eval(), model.eval(), head.to(device).eval(), config, path)


def _tensors(x: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def _pick(n: int, k: int, seed) -> np.ndarray:
    """``k`` of ``n`` indices (all when ``k`` is 0 or >= n), seeded, sorted."""
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


# ---------------------------------------------------------------- the wire, in-process


def download(rx: Transceiver, dtype: str) -> tuple[dict, int, int, float]:
    """The RX's decoder through an encoded and decoded SLF_DECODER frame, as the TX receives it.

    Returns (float32 state on the CPU, tensor bytes, frame bytes, seconds spent encoding and checking).
    """
    t0 = time.perf_counter()
    state = {k: t.cpu() for k, t in rx.decoder_state().items()}
    wire = tensors_to_wire(state, dtype)
    now = time.time_ns()
    frame = encode(DecoderReply(1, 1, bytes(16), rx.shape.n_codewords, rx.shape.code_dim, wire, os.getpid(), now,
                                now, bytes(16)))
    got = tensors_from_wire(decode(frame).tensors, state, (dtype,))
    return got, wire_tensor_bytes(wire), len(frame), time.perf_counter() - t0


def upload(result, rx: Transceiver, n_frozen: int) -> tuple[Transceiver, int, int, float]:
    """The changed layers through an SLF_UPLOAD frame, installed into a copy of ``rx`` as the RX does.

    Returns (the RX's aligned transceiver, tensor bytes, frame bytes, seconds).
    """
    t0 = time.perf_counter()
    wire = tensors_to_wire(result.upload_state())
    frame = encode(Upload(1, 1, bytes(16), n_frozen, wire))
    own = {k: t.cpu() for k, t in rx.decoder_state().items()}
    state = tensors_from_wire(decode(frame).tensors, own)
    installed = copy.deepcopy(rx)
    installed.load_decoder_state({k: t.to(next(rx.parameters()).device) for k, t in state.items()})
    return installed.eval(), wire_tensor_bytes(wire), len(frame), time.perf_counter() - t0


# ---------------------------------------------------------------- one SLF case


class _Runner:
    """Runs SLF cases and keeps the progress bar moving."""

    def __init__(self, cfg: SlfSweepConfig, advance):
        self.cfg = cfg
        self.advance = advance

    def evaluate(self, tx: Transceiver, rx: Transceiver, head: TaskHead, x, y, eps: float) -> dict:
        m = evaluate_link(tx, rx, head, x, y, eps, self.cfg.eval_seed)
        return {"accuracy": m.accuracy, "mse": m.mse, "n": m.n}

    def case(self, tx: _Side, rx: _Side, head: TaskHead, x_ft, x_ev, y_ev, n_frozen: int, eps: float,
             epochs: float, dtype: str, label: str) -> tuple[dict, dict]:
        """Steps 1-3 and an evaluation; returns (row, models) with models ``tx``/``rx`` (aligned)."""
        cfg = self.cfg
        downloaded, dl_tensor, dl_frame, dl_s = download(rx.model, dtype)
        reported = [0]

        def on_epoch(epoch, loss):
            reported[0] += 1
            self.advance(1, f"{label}: epoch {epoch}, loss {loss:.4f}")

        res = slf_finetune(tx.model, downloaded, x_ft,
                           SlfConfig(n_frozen=n_frozen, eps=eps, epochs=epochs, batch_size=cfg.batch_size,
                                     seed=cfg.seed, learning_rate=cfg.finetune_lr), on_epoch)
        self.advance(max(0, math.ceil(epochs) - reported[0]), label)
        installed, ul_tensor, ul_frame, ul_s = upload(res, rx.model, n_frozen)
        metrics = self.evaluate(res.model.eval(), installed, head, x_ev, y_ev, eps)
        rep = res.report
        epochs_run = rep.steps / max(rep.steps_planned, 1) * epochs
        flops = finetune_flops(tx.cpu, n_frozen, len(x_ft), epochs_run)
        model = recovery_time(dl_tensor, flops, ul_tensor)
        row = {"n_frozen": n_frozen, "eps": eps, "download_dtype": dtype,
               "layers_uploaded": " ".join(res.changed_layers) or "-",
               "download_tensor_bytes": dl_tensor, "download_frame_bytes": dl_frame,
               "upload_tensor_bytes": ul_tensor, "upload_frame_bytes": ul_frame,
               "download_kb": dl_tensor / 1e3, "upload_kb": ul_tensor / 1e3,
               "finetune_images": len(x_ft), "finetune_epochs": epochs_run, "finetune_steps": rep.steps,
               "finetune_loss": rep.last_loss, "finetune_flops": flops, "finetune_tflop": flops / 1e12,
               "finetune_s": rep.seconds, "finetune_s_per_epoch": rep.seconds / epochs_run if epochs_run else None,
               "compute_flops_per_s": flops / rep.seconds if rep.seconds > 0 else None,
               "download_model_s": model.download_s, "finetune_model_s": model.finetune_s,
               "upload_model_s": model.upload_s, "recovery_model_s": model.total_s,
               "serialise_s": dl_s + ul_s,
               "recovery_cpu_s": model.download_s + rep.seconds + model.upload_s + dl_s + ul_s,
               "accuracy": metrics["accuracy"], "mse": metrics["mse"], "eval_images": metrics["n"]}
        return row, {"tx": res.model.eval(), "rx": installed}


def _with_baseline(row: dict, base: dict) -> dict:
    row["acc_misaligned"], row["mse_misaligned"] = base["accuracy"], base["mse"]
    row["accuracy_gain"] = row["accuracy"] - base["accuracy"]
    row["mse_reduction"] = 1 - row["mse"] / base["mse"] if base["mse"] else None
    return row


# ---------------------------------------------------------------- the source-dissimilarity data


@dataclass(frozen=True)
class SourceData:
    """Images for the source study, labels of both sources in one 20-class space (own + 10 for the RX's)."""

    own_train: np.ndarray
    own_test: np.ndarray
    own_y_train: np.ndarray
    own_y_test: np.ndarray
    rx_train: np.ndarray
    rx_test: np.ndarray
    rx_y_train: np.ndarray
    rx_y_test: np.ndarray
    head_x: np.ndarray
    head_y: np.ndarray
    n_classes: int


def source_data(tx_cfg: TransceiverConfig, own: Dataset, rx_cfg: TransceiverConfig, other: Dataset) -> SourceData:
    """The TX's own images (its split), the RX source's images the RX never trained on, and the head's set.

    RX-source images for the TX: the training images outside the RX's pool
    (fine-tuning) and the official test set (evaluation). The head trains on
    the RX's own train split plus as many images of the TX's source from
    outside the TX's pool (so none of the TX's images), labels of the RX's
    source shifted by ``own.n_classes``.
    """
    split_own = tx_cfg.split(own)
    split_rx = rx_cfg.split(other)
    rx_pool = set(rx_cfg.pool_indices(len(other.y_train)).tolist())
    outside_rx = np.array([i for i in range(len(other.y_train)) if i not in rx_pool], dtype=np.int64)
    tx_pool = set(tx_cfg.pool_indices(len(own.y_train)).tolist())
    outside_tx = np.array([i for i in range(len(own.y_train)) if i not in tx_pool], dtype=np.int64)
    k = min(len(split_rx.y_train), len(outside_tx))
    if k == 0 or len(outside_rx) == 0:
        raise ValueError(f"the source study needs images of {other.name} outside {rx_cfg.name}'s pool and of "
                         f"{own.name} outside {tx_cfg.name}'s pool; give them smaller --max-pool at pre-training")
    pick = np.random.default_rng(11).choice(outside_tx, k, replace=False)
    shift = own.n_classes
    head_x = np.concatenate([split_rx.x_train, own.x_train[pick]])
    head_y = np.concatenate([split_rx.y_train.astype(np.int64) + shift, own.y_train[pick].astype(np.int64)])
    return SourceData(split_own.x_train, split_own.x_test, split_own.y_train.astype(np.int64),
                      split_own.y_test.astype(np.int64), other.x_train[outside_rx], other.x_test,
                      other.y_train[outside_rx].astype(np.int64) + shift, other.y_test.astype(np.int64) + shift,
                      head_x, head_y, own.n_classes + other.n_classes)


def mixture(own_x, own_y, rx_x, rx_y, n: int, delta: float, seed) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images: ``round(delta * n)`` of the TX's own source, the rest of the RX's, shuffled (seeded)."""
    k = round(delta * n)
    if k > len(own_x) or n - k > len(rx_x):
        raise ValueError(f"dissimilarity {delta}: need {k} own and {n - k} RX-source images, have "
                         f"{len(own_x)} and {len(rx_x)}")
    rng = np.random.default_rng(seed)
    a, b = rng.choice(len(own_x), k, replace=False), rng.choice(len(rx_x), n - k, replace=False)
    x = np.concatenate([own_x[a], rx_x[b]])
    y = np.concatenate([own_y[a], rx_y[b]])
    order = rng.permutation(n)
    return x[order], y[order]


# ---------------------------------------------------------------- the sweep


def run_slf_sweep(cfg: SlfSweepConfig, out: Path, data_dir: str | None = None, progress: bool = True) -> dict:
    """Run every experiment of ``cfg``; write the CSV, JSON and PNG files to ``out``; return the JSON."""
    if cfg.device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device}: torch sees no GPU here (torch {torch.__version__})")
    torch.set_num_threads(cfg.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    dev = cfg.device
    tx = _load(cfg.tx_trx, data_dir, dev, progress)
    rx = _load(cfg.rx_trx, data_dir, dev, progress)
    if tx.config.shape != rx.config.shape:
        raise ValueError(f"{tx.path} and {rx.path} have different architectures; SLF needs the same")
    own = load_dataset(tx.config.dataset, data_dir)
    split = tx.config.split(own)
    ft_idx = _pick(len(split.y_train), cfg.finetune_images, [cfg.seed, 1])
    ev_idx = _pick(len(split.y_test), cfg.eval_images, [cfg.seed, 2])
    x_ft = _tensors(split.x_train[ft_idx], dev)
    x_ev, y_ev = _tensors(split.x_test[ev_idx], dev), _tensors(split.y_test[ev_idx].astype(np.int64), dev)
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
            source = _load(cfg.source_rx_trx, data_dir, dev, progress)
            other = load_dataset(source.config.dataset, data_dir)
        except DatasetUnavailable as e:
            result["fig3_dissimilarity_skipped"] = str(e)
            log.warning("source-dissimilarity study skipped: %s", e)
            source = None
    total = cfg.epochs_total(source is not None)
    with progress_bar("slf-sweep (fine-tuning epochs)", total, progress) as advance:
        run = _Runner(cfg, advance)
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
            rows.append(_with_baseline(row, base) | {f"paper_{k}": v for k, v in PAPER_TABLE1[l].items()})
            models[("table1", l)] = m
        result["table1"] = rows
        if cfg.fp16:
            half = []
            for l in (l for l in cfg.layers if l > 0):
                row, _ = run.case(tx, rx, rx.head, x_ft, x_ev, y_ev, l, cfg.table_eps, cfg.table_epochs, "float16",
                                  f"Table I fp16 l={l}")
                ref = next(r for r in rows if r["n_frozen"] == l)
                row = _with_baseline(row, base)
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
                fig_eps.append({"case": f"SLF l={l}", **_with_baseline(row, b)})
        result["fig3_eps"] = fig_eps
        # ---------------- Fig. 3, source dissimilarity
        if source is not None:
            result["fig3_dissimilarity"], src_models = _source_study(cfg, run, tx, source, own, other, len(x_ft),
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


def _source_study(cfg: SlfSweepConfig, run: _Runner, tx: _Side, src: _Side, own: Dataset, other: Dataset,
                  n_ft: int, n_ev: int, advance) -> tuple[list, dict]:
    dev = cfg.device
    data = source_data(tx.config, own, src.config, other)
    head_cfg = dataclasses.replace(src.config, shape=dataclasses.replace(src.config.shape, n_classes=data.n_classes),
                                   head_epochs=cfg.head_epochs)
    head, rep = pretrain_head(torch.from_numpy(data.head_x), torch.from_numpy(data.head_y), head_cfg,
                              lambda e, loss: advance(1, f"20-class head: epoch {e}, loss {loss:.4f}"))
    head = head.to(dev).eval()
    rows, models = [], {}
    side = _Side(src.model, src.cpu, head, src.config, src.path)
    for delta in cfg.dissimilarities:
        xf, _ = mixture(data.own_train, data.own_y_train, data.rx_train, data.rx_y_train, n_ft, delta,
                        [cfg.seed, 3])
        xe, ye = mixture(data.own_test, data.own_y_test, data.rx_test, data.rx_y_test, n_ev, delta, [cfg.seed, 4])
        x_ft, x_ev, y_ev = _tensors(xf, dev), _tensors(xe, dev), _tensors(ye, dev)
        b = run.evaluate(tx.model, src.model, head, x_ev, y_ev, cfg.source_eps)
        ref = run.evaluate(src.model, src.model, head, x_ev, y_ev, cfg.source_eps)
        rows.append({"dissimilarity": delta, "case": "misaligned", "n_frozen": None, **b})
        rows.append({"dissimilarity": delta, "case": "RX's own transceiver", "n_frozen": None, **ref})
        for l in cfg.fig3_layers:
            row, m = run.case(tx, side, head, x_ft, x_ev, y_ev, l, cfg.source_eps, cfg.fig3_epochs, "float32",
                              f"Fig. 3 delta={delta:g} l={l}")
            rows.append({"dissimilarity": delta, "case": f"SLF l={l}", **_with_baseline(row, b)})
            if delta == cfg.grid_dissimilarity:
                models[("source", l)] = {**m, "x": x_ev, "rx_orig": src.model}
    for r in rows:
        r["head_classes"] = data.n_classes
        r["head_train_s"] = rep.seconds
    return rows, models


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


# ---------------------------------------------------------------- files


def _csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.write_text("")
        return
    names = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in names})


def write_files(result: dict, out: Path) -> None:
    for name in ("table1", "table1_fp16", "fig3_eps", "fig3_dissimilarity", "deadline"):
        _csv(out / f"{name}.csv", result.get(name) or [])
    atomic_write_json(out / "slf_sweep.json", result, indent=2)


@torch.no_grad()
def _reconstruct(tx: Transceiver, rx: Transceiver, x: torch.Tensor, eps: float, seed: int) -> np.ndarray:
    sent = tx.encode(x).cpu().numpy()
    got = torch.from_numpy(dmc_numpy(sent, rx.shape.n_codewords, eps, np.random.default_rng(seed))).to(x.device)
    return rx.decode(got).cpu().numpy()


def write_figures(cfg: SlfSweepConfig, result: dict, models: dict, tx: _Side, rx: _Side, x_ev, out: Path) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    # ---- Table I: recovery time breakdown per l (model and this CPU), accuracy and MSE
    rows = result["table1"]
    ls = [r["n_frozen"] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    bottom = np.zeros(len(rows))
    for key, label, color in (("download_model_s", "download (2 Mb/s)", "tab:blue"),
                              ("finetune_model_s", "fine-tuning (30 TFLOP/s)", "tab:orange"),
                              ("upload_model_s", "upload (2 Mb/s)", "tab:green")):
        vals = np.array([r[key] for r in rows])
        ax.bar(ls, vals, bottom=bottom, color=color, label=label, width=0.6)
        bottom += vals
    ax.plot(ls, [PAPER_TABLE1[l]["recovery_s"] for l in ls], "k^--", label="paper's Table I (reconstruction)")
    ax.set_xlabel("frozen decoder layers l")
    ax.set_ylabel("recovery time T_R (s)")
    ax.set_xticks(ls)
    ax.set_title("Table I model: ours vs the paper's")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax2.plot(ls, [100 * r["accuracy"] for r in rows], "o-", color="tab:red", label="accuracy, ours")
    ax2.plot(ls, [100 * PAPER_TABLE1[l]["accuracy"] for l in ls], "^--", color="tab:red", alpha=0.5,
             label="accuracy, paper")
    ax2.axhline(100 * result["table1_reference"]["misaligned"]["accuracy"], color="tab:red", ls=":",
                label="accuracy, misaligned")
    ax2.set_xlabel("frozen decoder layers l")
    ax2.set_ylabel("top-1 accuracy (%)")
    ax2.set_xticks(ls)
    ax3 = ax2.twinx()
    ax3.plot(ls, [r["mse"] for r in rows], "s-", color="tab:purple", label="MSE, ours")
    ax3.plot(ls, [PAPER_TABLE1[l]["mse"] for l in ls], "v--", color="tab:purple", alpha=0.5, label="MSE, paper")
    ax3.set_ylabel("reconstruction MSE per pixel (pixels in [0, 1])")
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = ax3.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, fontsize=8, loc="center right")
    ax2.set_title(f"after SLF ({cfg.table_epochs:g} epoch(s) over {rows[0]['finetune_images']} images, "
                  f"eps = {cfg.table_eps:g})")
    fig.tight_layout()
    fig.savefig(out / "table1.png", dpi=120)
    plt.close(fig)
    files.append("table1.png")

    def fig3(rows: list, xkey: str, xlabel: str, title: str, name: str, logx: bool) -> None:
        cases = list(dict.fromkeys(r["case"] for r in rows))
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for case in cases:
            pts = sorted((r[xkey], r["mse"], r["accuracy"]) for r in rows if r["case"] == case)
            xs = [p[0] for p in pts]
            style = ":" if case in ("misaligned", "RX's own transceiver") else "-"
            axes[0].plot(xs, [p[1] for p in pts], style, marker="o", label=case)
            axes[1].plot(xs, [100 * p[2] for p in pts], style, marker="o", label=case)
        for a, ylabel in zip(axes, ("reconstruction MSE per pixel (pixels in [0, 1])", "top-1 accuracy (%)")):
            a.set_xlabel(xlabel)
            a.set_ylabel(ylabel)
            if logx:
                a.set_xscale("log")
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        files.append(name)

    fig3(result["fig3_eps"], "eps", "DMC crossover probability eps_12 (fine-tuning and link)",
         f"Fig. 3 (channel): TX {tx.config.name} -> RX {rx.config.name}, {cfg.fig3_epochs:g} fine-tuning epoch(s)",
         "fig3_eps.png", True)
    if result.get("fig3_dissimilarity"):
        r0 = result["fig3_dissimilarity"][0]
        fig3(result["fig3_dissimilarity"], "dissimilarity",
             "data dissimilarity delta (share of the TX's images from its own source)",
             f"Fig. 3 (source): TX {tx.config.name} -> RX {Path(cfg.source_rx_trx).name}, eps {cfg.source_eps:g}, "
             f"{r0['head_classes']}-class head, {cfg.fig3_epochs:g} fine-tuning epoch(s)", "fig3_dissimilarity.png",
             False)

    # ---- Fig. 2-like grid: inputs, own pair, misaligned, SLF, per pair
    panels = []
    k = min(cfg.grid_images, len(x_ev))
    xs = x_ev[:k]
    rows_img = [("input", xs.cpu().numpy()),
                (f"TX {tx.config.name}'s own pair", _reconstruct(tx.model, tx.model, xs, cfg.table_eps, 1)),
                (f"misaligned: TX {tx.config.name} -> RX {rx.config.name}",
                 _reconstruct(tx.model, rx.model, xs, cfg.table_eps, 1))]
    for l in (0, 2, 4):
        if ("table1", l) in models:
            m = models[("table1", l)]
            rows_img.append((f"SLF l={l}", _reconstruct(m["tx"], m["rx"], xs, cfg.table_eps, 1)))
    panels.append((f"channel dissimilarity (eps = {cfg.table_eps:g})", rows_img))
    src = [v for (kind, _), v in models.items() if kind == "source"]
    if src:
        xsrc = src[0]["x"][:k]
        rows_img = [("input (mixed sources)", xsrc.cpu().numpy()),
                    (f"misaligned: TX {tx.config.name} -> RX {cfg.source_rx_trx}",
                     _reconstruct(tx.model, src[0]["rx_orig"], xsrc, cfg.source_eps, 1))]
        for (kind, l), m in sorted(((k2, v) for k2, v in models.items() if k2[0] == "source"), key=lambda t: t[0][1]):
            rows_img.append((f"SLF l={l}", _reconstruct(m["tx"], m["rx"], xsrc, cfg.source_eps, 1)))
        panels.append((f"source dissimilarity (delta = {cfg.grid_dissimilarity:g})", rows_img))
    side = tx.config.shape.image_size
    n_rows = sum(len(p[1]) for p in panels)
    fig, axes = plt.subplots(n_rows, k, figsize=(1.2 * k + 2.6, 1.25 * n_rows + 0.4 * len(panels)), squeeze=False)
    i = 0
    for title, rows_img in panels:
        for j, (label, imgs) in enumerate(rows_img):
            for c in range(k):
                a = axes[i][c]
                img = imgs[c].reshape(tx.config.shape.channels, side, side)
                a.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
                a.set_xticks([])
                a.set_yticks([])
            axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            if j == 0:
                axes[i][k // 2].set_title(title, fontsize=10)
            i += 1
    fig.tight_layout()
    fig.savefig(out / "reconstructions.png", dpi=110)
    plt.close(fig)
    files.append("reconstructions.png")
    return files


# ---------------------------------------------------------------- printing


def format_tables(result: dict) -> str:
    """Markdown tables of Table I (ours beside the paper's), fp16, Fig. 3 and the deadline choices."""
    lines = []
    ref = result["table1_reference"]
    lines.append(f"Table I (eps = {ref['eps']:g}); misaligned pair: accuracy {100 * ref['misaligned']['accuracy']:.2f} "
                 f"%, MSE {ref['misaligned']['mse']:.4f}; TX's own pair {100 * ref['tx_own_pair']['accuracy']:.2f} %"
                 f" / {ref['tx_own_pair']['mse']:.4f}; RX's own pair on these images "
                 f"{100 * ref['rx_own_pair']['accuracy']:.2f} % / {ref['rx_own_pair']['mse']:.4f}")
    lines.append("")
    lines.append("| l | layers uploaded | download kB (paper) | upload kB (paper) | fine-tune TFLOP (paper) | "
                 "fine-tune s model / this CPU (s/epoch) | T_R model s (paper) | T_R this CPU s | accuracy % "
                 "(paper) | MSE (paper) | MSE reduction |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["table1"]:
        p = PAPER_TABLE1[r["n_frozen"]]
        lines.append(
            f"| {r['n_frozen']} | {r['layers_uploaded']} | {r['download_kb']:.1f} ({p['download_kb']}) | "
            f"{r['upload_kb']:.1f} ({p['upload_kb']}) | {r['finetune_tflop']:.3f} ({p['finetune_tflop']}) | "
            f"{r['finetune_model_s']:.4f} / {r['finetune_s']:.1f} ({r['finetune_s_per_epoch']:.2f}) | "
            f"{r['recovery_model_s']:.3f} ({p['recovery_s']}) | {r['recovery_cpu_s']:.1f} | "
            f"{100 * r['accuracy']:.2f} ({100 * p['accuracy']:.2f}) | {r['mse']:.4f} ({p['mse']}) | "
            f"{100 * r['mse_reduction']:.1f} % |")
    if result.get("table1_fp16"):
        lines += ["", "float16 download (uploads stay float32):", "",
                  ("| l | download B (float32 -> float16) | T_R model s saved | accuracy % float32 -> float16 | "
                   "MSE float32 -> float16 |"), "|---|---|---|---|---|"]
        for r in result["table1_fp16"]:
            lines.append(f"| {r['n_frozen']} | {r['download_frame_bytes'] + r['download_bytes_saved']} -> "
                         f"{r['download_frame_bytes']} | {r['download_model_s_saved']:.3f} | "
                         f"{100 * r['accuracy_float32']:.2f} -> {100 * r['accuracy']:.2f} | "
                         f"{r['mse_float32']:.4f} -> {r['mse']:.4f} |")
    for key, xname in (("fig3_eps", "eps"), ("fig3_dissimilarity", "dissimilarity")):
        rows = result.get(key)
        if not rows:
            continue
        cases = list(dict.fromkeys(r["case"] for r in rows))
        xs = list(dict.fromkeys(r[xname] for r in rows))
        lines += ["", f"Fig. 3 vs {xname}: accuracy % / MSE", "",
                  f"| {xname} | " + " | ".join(cases) + " |", "|---" * (len(cases) + 1) + "|"]
        for x in xs:
            cells = []
            for c in cases:
                r = next((r for r in rows if r[xname] == x and r["case"] == c), None)
                cells.append("-" if r is None else f"{100 * r['accuracy']:.1f} / {r['mse']:.4f}")
            lines.append(f"| {x:g} | " + " | ".join(cells) + " |")
    if result.get("fig3_dissimilarity_skipped"):
        lines += ["", f"source-dissimilarity study skipped: {result['fig3_dissimilarity_skipped']}"]
    if result.get("deadline"):
        rows = result["deadline"]
        lines += ["", ("l chosen from a recovery-time deadline (choose_n_frozen): deadline s -> l (predicted s"
                       "[; measured s]), * = predicted to miss; accuracy and MSE of each l as in Table I"), "",
                  "| compute | rate Mb/s | choices |", "|---|---|---|"]
        for key in dict.fromkeys((r["compute"], r["rate_bps"]) for r in rows):
            cells = [f"{r['deadline_s']:.3g} -> {r['n_frozen']}{'' if r['met_predicted'] else '*'} "
                     f"({r['predicted_s']:.3g}" + ("" if r["measured_s"] is None else f"; {r['measured_s']:.3g}")
                     + ")" for r in rows if (r["compute"], r["rate_bps"]) == key]
            lines.append(f"| {key[0]} | {key[1] / 1e6:g} | " + ", ".join(cells) + " |")
    lines += ["", (f"wall time {result['wall_s']:.0f} s on {result['machine']['cpu']} "
                   f"({result['machine']['torch_threads']} torch thread(s), device {result['settings']['device']})")]
    return "\n".join(lines)


__all__ = ["DOWNLOAD_DTYPES", "PAPER_TABLE1", "SlfSweepConfig", "format_tables", "run_slf_sweep"]
