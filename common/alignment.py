"""Alignment strategies: how the RX adapts its frozen classifier to what it receives.

RX-side LoRA fine-tuning is the one strategy today; split learning (TX-side)
and federated LoRA will be further :class:`AlignmentStrategy` classes.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from common.lora import LoraConfig, merge_lora, wrap_lora


@dataclass(frozen=True)
class AdaptConfig:
    """Optimiser settings: ``steps`` Adam steps of ``batch_size`` vectors (0 = full batch).

    ``budget_ms``: wall-clock cap on the optimisation loop (None = no cap).
    """

    steps: int = 60
    lr: float = 5e-3
    batch_size: int = 0
    budget_ms: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {self.batch_size}")
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ValueError(f"budget_ms must be > 0 or None, got {self.budget_ms}")


@dataclass(frozen=True)
class AdaptReport:
    """What adaptation did: steps run of those asked, whether it ran to completion."""

    strategy: str
    steps: int
    steps_requested: int
    complete: bool
    final_loss: float
    trainable_params: int
    duration_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


class AlignmentStrategy(ABC):
    """Adapts a frozen classifier to labelled vectors; never modifies the model passed in."""

    name: str

    @abstractmethod
    def adapt(self, model: nn.Sequential, x: np.ndarray, y: np.ndarray) -> tuple[nn.Sequential, AdaptReport]:
        """``x`` float32 (n, d_in), ``y`` uint8 (n,) -> (adapted model, report)."""


class LoraAlignment(AlignmentStrategy):
    """LoRA on every Linear layer, trained with Adam on cross-entropy, then merged."""

    name = "lora"

    def __init__(self, lora: LoraConfig = LoraConfig(), adapt: AdaptConfig = AdaptConfig()):
        self.lora = lora
        self.config = adapt

    def adapt(self, model, x, y):
        t0 = time.perf_counter()
        wrapped = wrap_lora(model, self.lora)
        params = [p for p in wrapped.parameters() if p.requires_grad]
        steps, loss = train_steps(wrapped, params, x, y, self.config)
        merged = merge_lora(wrapped)
        return merged, AdaptReport(self.name, steps, self.config.steps, steps == self.config.steps,
                                   loss, sum(p.numel() for p in params),
                                   (time.perf_counter() - t0) * 1e3)


def train_steps(model: nn.Module, params: list[torch.Tensor], x: np.ndarray, y: np.ndarray,
                config: AdaptConfig) -> tuple[int, float]:
    """Run up to ``config.steps`` Adam steps on ``params``; returns (steps run, last loss)."""
    if len(x) == 0 or config.steps == 0:
        return 0, float("nan")
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    opt = torch.optim.Adam(params, lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    batch = config.batch_size or len(xt)
    deadline = None if config.budget_ms is None else time.perf_counter() + config.budget_ms / 1e3
    loss_value = float("nan")
    order = torch.randperm(len(xt), generator=gen)
    cursor = 0
    for step in range(config.steps):
        if deadline is not None and time.perf_counter() >= deadline:
            return step, loss_value
        if batch >= len(xt):
            xb, yb = xt, yt
        else:
            if cursor + batch > len(xt):
                order, cursor = torch.randperm(len(xt), generator=gen), 0
            idx = order[cursor:cursor + batch]
            cursor += batch
            xb, yb = xt[idx], yt[idx]
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
    return config.steps, loss_value
