"""Low-rank adaptation of Linear layers (eqs. 4-5): ``W* = W + (lora_alpha / r) B A``.

Like peft's ``Linear``: ``B`` starts at zero, so a fresh adapter changes
nothing; one :meth:`LoraLinear.delta_weight` serves merging; merging refuses
non-finite weights. The frozen base layer is shared, never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class LoraMergeError(RuntimeError):
    """Merging would produce non-finite weights."""


@dataclass(frozen=True)
class LoraConfig:
    """``rank`` r; ``lora_alpha`` sets ``scaling = lora_alpha / r``."""

    rank: int = 8
    lora_alpha: float = 16.0

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.rank


class LoraLinear(nn.Module):
    """``y = base(x) + scaling * x A^T B^T``; A: (r, in), B: (out, r)."""

    def __init__(self, base: nn.Linear, config: LoraConfig):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        r = min(config.rank, base.in_features, base.out_features)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = config.lora_alpha / r

    def delta_weight(self) -> torch.Tensor:
        """``Delta W = scaling * B A``, shape (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * ((x @ self.lora_A.t()) @ self.lora_B.t())

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A new plain Linear with ``W* = W + Delta W`` (eq. 5)."""
        weight = self.base.weight + self.delta_weight()
        if not torch.isfinite(weight).all():
            raise LoraMergeError("merged LoRA weights are not finite; refusing to merge")
        out = nn.Linear(self.base.in_features, self.base.out_features)
        out.weight.copy_(weight)
        out.bias.copy_(self.base.bias)
        return out


def wrap_lora(model: nn.Sequential, config: LoraConfig) -> nn.Sequential:
    """A new Sequential whose Linear layers are LoRA-wrapped (base weights shared, frozen)."""
    return nn.Sequential(*(LoraLinear(m, config) if isinstance(m, nn.Linear) else m for m in model))


def merge_lora(model: nn.Sequential) -> nn.Sequential:
    """A new Sequential of plain layers with every adapter merged."""
    return nn.Sequential(*(m.merged() if isinstance(m, LoraLinear) else m for m in model))
