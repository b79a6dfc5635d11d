"""Pre-training of named SLF transceivers (``semalign pretrain --mode slf``): transceiver, task head, artifacts.

:func:`pretrain_config` trains one :class:`TransceiverConfig` on its own split
of its dataset: the VQ-VAE transceiver over the DMC of the config's ``eps``,
then the task head (on clean images, the transceiver's own reconstructions through its DMC, or a mix:
``config.head_on``; shifted by up to ``config.head_shift`` pixels; frozen afterwards), and measures on the
held-out split: the head's accuracy on clean images, and accuracy + MSE of
the transceiver's own link (its encoder, its DMC, its decoder, its head).
:func:`pretrain_and_save` writes the checksummed artifacts.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from common.data.datasets import Dataset
from common.modes.slf.artifacts import SlfArtifactMeta, save_transceiver
from common.modes.slf.configs import TransceiverConfig
from common.modes.slf.messages import shape_problem
from common.modes.slf.training import evaluate_link, pretrain_head, pretrain_transceiver
from common.modes.slf.transceiver import TaskHead, Transceiver

EVAL_SEED = 7  # DMC draws of the held-out evaluation
OVERRIDABLE = ("max_pool", "epochs", "head_epochs", "batch_size", "lr", "seed")


def with_overrides(config: TransceiverConfig, overrides: dict) -> TransceiverConfig:
    """``config`` with the given (not None) settings of :data:`OVERRIDABLE` replaced."""
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"slf pre-training: unknown settings {unknown}; known: {list(OVERRIDABLE)}")
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def progress_steps(config: TransceiverConfig) -> int:
    """Progress units :func:`pretrain_config` reports: transceiver epochs + head epochs (rounded up)."""
    return math.ceil(config.epochs) + math.ceil(config.head_epochs)


@dataclass(frozen=True)
class Pretrained:
    model: Transceiver
    head: TaskHead
    metrics: dict  # JSON-able: sizes, wall times (s), accuracies, MSE


def pretrain_config(config: TransceiverConfig, data: Dataset,
                    advance: Callable[..., None] = lambda n=1, status="": None) -> Pretrained:
    """Train ``config`` on its split of ``data``; ``advance(n, status)`` is called once per epoch."""
    problem = shape_problem(config.shape)
    if problem:
        raise ValueError(f"{config.name}: {problem}")
    split = config.split(data)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train).long()
    xt, yt = torch.from_numpy(split.x_test), torch.from_numpy(split.y_test).long()
    t0 = time.perf_counter()
    done = [0]

    def epoch_done(status: str) -> None:
        done[0] += 1
        advance(1, status)

    model, rep = pretrain_transceiver(x, config, lambda e, loss: epoch_done(f"transceiver loss {loss:.4f}"))
    advance(max(0, math.ceil(config.epochs) - done[0]), "")  # a last partial pass reports no epoch
    done[0] = 0
    head, hrep = pretrain_head(x, y, config, lambda e, loss: epoch_done(f"head loss {loss:.4f}"),
                               None if config.head_on == "clean" else model)
    advance(max(0, math.ceil(config.head_epochs) - done[0]), "")
    model.eval()
    with torch.no_grad():
        clean = float((head.predict(xt) == yt).float().mean())
    own = evaluate_link(model, model, head, xt, yt, config.eps, EVAL_SEED)
    metrics = {"train_images": len(x), "test_images": len(xt), "transceiver_steps": rep.steps,
               "transceiver_seconds": rep.seconds, "transceiver_loss": rep.last_loss,
               "head_seconds": hrep.seconds, "head_accuracy_clean": clean, "link_accuracy": own.accuracy,
               "link_mse": own.mse, "seconds": time.perf_counter() - t0}
    return Pretrained(model, head, metrics)


def pretrain_and_save(config: TransceiverConfig, data: Dataset, out: str | Path,
                      advance: Callable[..., None] = lambda n=1, status="": None) -> SlfArtifactMeta:
    """:func:`pretrain_config`, then the artifacts in ``out``; returns the stored meta."""
    res = pretrain_config(config, data, advance)
    return save_transceiver(out, res.model, res.head, config, res.metrics)
