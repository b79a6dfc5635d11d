"""The one training loop: minibatch Adam over tensors, with a schedule, a step cap and a wall-clock cap.

Every trainer in semalign goes through :func:`fit`: pre-training, the
campaigns' baselines (End-to-End, full and last-layer fine-tuning), the
autograd alignment path, the SLF transceivers and the federated devices. The
one exception is the hand-written folded LoRA trainer
(:mod:`common.learn.fastlora`, and its dense trainer for several sessions at
once, :mod:`common.learn.batched_dense`), which computes its gradients without
autograd for speed and shares only :func:`lr_at` (the schedule) with this loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

SCHEDULES = ("constant", "cosine", "onecycle")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings.

    ``epochs``: passes over the data (fractions allowed); ``steps`` (when > 0)
    caps the optimiser steps instead. ``batch_size``: vectors per step, 0 = full
    batch. ``lr``: peak learning rate. ``schedule``: "constant", "cosine"
    (annealed to 0 over the run, by step count or elapsed budget, whichever is
    further: a run cut short still ends annealed) or "onecycle" (torch's
    ``OneCycleLR``). ``budget_s``: wall-clock cap in seconds, None = none.
    ``weight_decay``: Adam's L2 term. ``seed``: batch order. ``drop_last``:
    reshuffle when fewer than a batch of rows is left in the epoch, instead of
    taking a short last batch (the folded LoRA trainer's batching).
    """

    epochs: float = 1.0
    steps: int = 0
    batch_size: int = 128
    lr: float = 1e-3
    schedule: str = "constant"
    budget_s: float | None = None
    weight_decay: float = 0.0
    seed: int = 0
    drop_last: bool = False

    def __post_init__(self):
        if not self.epochs > 0 and self.steps <= 0:
            raise ValueError(f"need epochs > 0 or steps > 0, got epochs={self.epochs}, steps={self.steps}")
        if self.steps < 0 or self.batch_size < 0:
            raise ValueError(f"steps={self.steps} and batch_size={self.batch_size} must be >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0 or None, got {self.budget_s}")


@dataclass(frozen=True)
class FitReport:
    """What :func:`fit` did: steps run of those planned, last and epoch-mean loss, wall time (s)."""

    steps: int
    steps_planned: int
    last_loss: float
    mean_loss: float
    seconds: float
    stopped_by: str  # "steps", "budget" or "callback"

    @property
    def complete(self) -> bool:
        return self.steps == self.steps_planned


def lr_at(lr: float, schedule: str, step: int, steps: int, elapsed_s: float = 0.0,
          budget_s: float | None = None) -> float:
    """Learning rate of 1-based ``step`` of ``steps`` for "constant" and "cosine" schedules."""
    if schedule == "constant":
        return lr
    progress = (step - 1) / steps
    if budget_s is not None:
        progress = max(progress, elapsed_s / budget_s)
    return lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def planned_steps(n: int, config: TrainConfig) -> int:
    """Optimiser steps :func:`fit` plans for ``n`` samples."""
    batch = n if config.batch_size <= 0 or config.batch_size >= n else config.batch_size
    per_epoch = math.ceil(n / batch)
    by_epochs = max(1, math.ceil(config.epochs * per_epoch)) if config.epochs > 0 else 0
    return min(config.steps, by_epochs) if config.steps > 0 and by_epochs else (config.steps or by_epochs)


def fit(params: Sequence[torch.Tensor], loss_fn: Callable[..., torch.Tensor],
        tensors: Sequence[torch.Tensor], config: TrainConfig,
        on_epoch: Callable[[int, float], bool | None] | None = None,
        generator: torch.Generator | None = None) -> FitReport:
    """Adam on ``params`` minimising ``loss_fn(*batch)`` over minibatches of ``tensors``.

    ``tensors``: equal-length tensors (e.g. inputs (n, d) float32 and labels
    (n,) int64); each step draws the same rows of each, reshuffled every epoch
    with a generator seeded by ``config.seed``. ``on_epoch(epoch, mean_loss)``
    runs after each full pass; returning False stops the run (early stopping).
    ``generator``: the batch-order generator, when the caller shares one
    (default: a new one seeded with ``config.seed``).
    """
    t0 = time.perf_counter()
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError(f"tensors must have equal lengths, got {[len(t) for t in tensors]}")
    steps = planned_steps(n, config) if n else 0
    if steps == 0:
        return FitReport(0, 0, float("nan"), float("nan"), 0.0, "steps")
    params = list(params)
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
             if config.schedule == "onecycle" else None)
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    batch = n if config.batch_size <= 0 or config.batch_size >= n else config.batch_size
    order, cursor, epoch, epoch_loss, epoch_n = None, n, 0, 0.0, 0
    last = mean = float("nan")
    stopped_by, done = "steps", 0
    for step in range(1, steps + 1):
        elapsed = time.perf_counter() - t0
        if config.budget_s is not None and elapsed >= config.budget_s:
            stopped_by = "budget"
            break
        if cursor >= n or (config.drop_last and cursor + batch > n):
            order, cursor = (torch.randperm(n, generator=gen) if batch < n else None), 0
        idx = None if order is None else order[cursor:cursor + batch]
        cursor += batch
        rows = tensors if idx is None else [t[idx] for t in tensors]
        if sched is None:
            for group in opt.param_groups:
                group["lr"] = lr_at(config.lr, config.schedule, step, steps, elapsed, config.budget_s)
        loss = loss_fn(*rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        last = float(loss.detach())
        k = len(rows[0])
        epoch_loss, epoch_n, done = epoch_loss + last * k, epoch_n + k, step
        if cursor >= n or (config.drop_last and cursor + batch > n):
            epoch += 1
            mean, epoch_loss, epoch_n = epoch_loss / epoch_n, 0.0, 0
            if on_epoch is not None and on_epoch(epoch, mean) is False:
                stopped_by = "callback"
                break
    if epoch_n:
        mean = epoch_loss / epoch_n
    return FitReport(done, steps, last, mean, time.perf_counter() - t0, stopped_by)
