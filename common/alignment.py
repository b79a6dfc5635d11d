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

from common.codec import Codec
from common.lora import FoldedInputLora, LoraConfig, LoraLinear, merge_lora, wrap_lora


@dataclass(frozen=True)
class AdaptConfig:
    """Optimiser settings: ``steps`` Adam steps of ``batch_size`` vectors (0 = full batch).

    ``budget_ms``: wall-clock cap on the optimisation loop (None = no cap).
    """

    steps: int = 100
    lr: float = 3e-3
    batch_size: int = 256
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
    def adapt(self, model: nn.Sequential, z: np.ndarray, y: np.ndarray,
              codec: Codec) -> tuple[nn.Sequential, AdaptReport]:
        """Received features ``z`` float32 (n, alpha) with labels ``y`` uint8 (n,).

        ``codec`` decodes them (``x_hat = codec.decode(z)``, the model's input).
        Returns the adapted model (input ``x_hat``) and a report.
        """


class LoraAlignment(AlignmentStrategy):
    """LoRA on every Linear layer, trained with Adam on cross-entropy, then merged.

    With ``fold`` (default) and a linear codec, the first layer trains on ``z``
    directly (:class:`FoldedInputLora`): same ``W*``, ``alpha/d_raw`` of the cost.
    """

    name = "lora"

    def __init__(self, lora: LoraConfig = LoraConfig(), adapt: AdaptConfig = AdaptConfig(), fold: bool = True):
        self.lora = lora
        self.config = adapt
        self.fold = fold

    def adapt(self, model, z, y, codec):
        t0 = time.perf_counter()
        wrapped = wrap_lora(model, self.lora)
        linear = codec.linear_decoder(z.shape[1]) if self.fold else None
        if linear is not None and isinstance(wrapped[0], LoraLinear):
            m, c = (torch.as_tensor(a) for a in linear)
            net, inputs = nn.Sequential(FoldedInputLora(wrapped[0], m, c), *wrapped[1:]), z
        else:
            net, inputs = wrapped, codec.decode(z)
        params = [p for p in wrapped.parameters() if p.requires_grad]
        steps, loss = train_steps(net, params, inputs, y, self.config)
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
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
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
