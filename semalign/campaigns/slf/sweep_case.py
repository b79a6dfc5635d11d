"""One SLF case of ``semalign slf-sweep``, in-process: the RX's decoder down and the changed layers up
through encoded SLF_DECODER / SLF_UPLOAD frames (real byte counts), fine-tuning, evaluation over the DMC
(:class:`CaseRunner`); the loaded transceivers (:class:`Side`) and the images' tensors."""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.modes.slf.artifacts import load_transceiver
from common.modes.slf.configs import TransceiverConfig
from common.modes.slf.messages import (
    DecoderReply,
    Upload,
    tensors_from_wire,
    tensors_to_wire,
)
from common.modes.slf.recovery import finetune_flops, recovery_time
from common.modes.slf.training import SlfConfig, evaluate_link, slf_finetune
from common.modes.slf.transceiver import TaskHead, Transceiver
from common.wire.protocol import decode, encode
from common.wire.tensors import wire_tensor_bytes
from semalign.campaigns.slf.demo import ensure_transceiver
from semalign.campaigns.slf.sweep_config import SlfSweepConfig


@dataclass
class Side:
    """One loaded transceiver: model on the sweep's device, a CPU copy (FLOP counts), head, config, data."""

    model: Transceiver
    cpu: Transceiver
    head: TaskHead
    config: TransceiverConfig
    path: Path


def load_side(trx: str, data_dir: str | None, device: str, progress: bool) -> Side:
    """The transceiver ``trx`` (a config name, pre-trained when missing, or an artifact directory) on ``device``."""
    path = ensure_transceiver(trx, data_dir, progress)
    model, head, config, _ = load_transceiver(path)
    return Side(copy.deepcopy(model).to(device).eval(), model.eval(), head.to(device).eval(), config, path)


def as_tensor(x: np.ndarray, device: str) -> torch.Tensor:
    """``x`` (images: float32, labels: int64) as a tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def pick(n: int, k: int, seed) -> np.ndarray:
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


class CaseRunner:
    """Runs SLF cases and keeps the progress bar moving."""

    def __init__(self, cfg: SlfSweepConfig, advance):
        self.cfg = cfg
        self.advance = advance

    def evaluate(self, tx: Transceiver, rx: Transceiver, head: TaskHead, x, y, eps: float) -> dict:
        m = evaluate_link(tx, rx, head, x, y, eps, self.cfg.eval_seed)
        return {"accuracy": m.accuracy, "mse": m.mse, "n": m.n}

    def case(self, tx: Side, rx: Side, head: TaskHead, x_ft, x_ev, y_ev, n_frozen: int, eps: float,
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


def with_baseline(row: dict, base: dict) -> dict:
    """``row`` (a case) with the misaligned pair's ``base`` accuracy and MSE beside it, and the gain."""
    row["acc_misaligned"], row["mse_misaligned"] = base["accuracy"], base["mse"]
    row["accuracy_gain"] = row["accuracy"] - base["accuracy"]
    row["mse_reduction"] = 1 - row["mse"] / base["mse"] if base["mse"] else None
    return row
