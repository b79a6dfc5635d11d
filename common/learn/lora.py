"""Low-rank adaptation of Linear layers (eqs. 4-5): ``W* = W + (lora_alpha / r) B A``.

The one LoRA implementation of semalign, like peft's ``Linear``: ``B`` starts
at zero, so a fresh adapter changes nothing; ``A`` is Kaiming-uniform; one
:func:`lora_delta` gives ``Delta W`` for training and merging alike; every
merge goes through :func:`merged_weight`, which refuses non-finite weights.

Two forms of the same adapter:
- :class:`LoraState`: adapter tensors for the Linear layers of an MLP
  (pca-lora's RX trains it with the hand-written folded trainer,
  :mod:`common.learn.fastlora`, or with autograd) merged by :func:`merge_into`;
- :class:`LoraLinear`: a module wrapping one frozen ``nn.Linear`` for autograd
  training (fed-lora's small-model path), merged by :meth:`LoraLinear.merged`.

One definition of the scaling in both forms, as peft: ``scaling = lora_alpha / r``
with ``r`` the adapter's actual rank, i.e. the configured rank clamped to the
layer's ``min(in, out)`` (:meth:`LoraConfig.rank_for`). A :class:`LoraState`
has one rank for all its adapters (the hand-written trainer takes one
scaling), clamped to its smallest adapted layer; so an adapter of either form
always has ``scaling * A.shape[0] == lora_alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from common.learn.lora_config import LoraConfig


class LoraMergeError(RuntimeError):
    """Merging would produce non-finite weights."""


def lora_delta(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """``Delta W = scaling * B A``: A (r, in), B (out, r) -> (out, in)."""
    return scaling * (B @ A)


def kaiming_uniform_A(rank: int, in_features: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """A fresh ``A`` (rank, in_features): uniform in ``±1/sqrt(in_features)`` (peft's Kaiming init)."""
    bound = 1.0 / math.sqrt(in_features)
    return torch.empty(rank, in_features).uniform_(-bound, bound, generator=gen)


@torch.no_grad()
def merged_weight(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``weight + delta`` as a new tensor; :class:`LoraMergeError` if any entry is not finite."""
    out = weight + delta
    if not torch.isfinite(out).all():
        raise LoraMergeError("merged LoRA weights are not finite; refusing to merge")
    return out


@dataclass
class LoraState:
    """Adapter tensors for an MLP: ``A[i]`` (r, in), ``B[i]`` (out, r), ``d[i]`` (out,) bias deltas.

    ``layers``: indices (into the MLP's Linear layers) that carry adapter ``i``.
    """

    layers: tuple[int, ...]
    A: list[torch.Tensor]
    B: list[torch.Tensor]
    d: list[torch.Tensor] | None
    scaling: float

    def delta_weight(self, i: int) -> torch.Tensor:
        """``scaling * B A`` of adapter ``i`` (out, in)."""
        return lora_delta(self.A[i], self.B[i], self.scaling)


def init_adapters(weights: list[torch.Tensor], layers: tuple[int, ...], config: LoraConfig,
                  bias: bool, gen: torch.Generator) -> LoraState:
    """Fresh adapters for ``weights[l]`` (out, in), l in ``layers``: A Kaiming-uniform, B and d zero.

    All of rank ``r = config.rank_for(...)`` over the adapted layers, ``scaling = lora_alpha / r``.
    """
    r = config.rank_for(*(tuple(weights[l].shape) for l in layers))
    A, B, d = [], [], []
    for l in layers:
        out_f, in_f = weights[l].shape
        A.append(kaiming_uniform_A(r, in_f, gen))
        B.append(torch.zeros(out_f, r))
        d.append(torch.zeros(out_f))
    return LoraState(tuple(layers), A, B, d if bias else None, config.scaling_for(r))


@torch.no_grad()
def merge_into(model: nn.Sequential, state: LoraState) -> nn.Sequential:
    """A new frozen Sequential with ``W* = W + scaling B A`` (and ``b + d``) on the adapted layers."""
    out, k = [], 0
    for module in model:
        if isinstance(module, nn.Linear):
            layer = nn.Linear(module.in_features, module.out_features)
            weight, bias = module.weight.detach(), module.bias.detach()
            if k in state.layers:
                i = state.layers.index(k)
                weight = merged_weight(weight, state.delta_weight(i))
                if state.d is not None:
                    bias = merged_weight(bias, state.d[i])
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
            for p in layer.parameters():
                p.requires_grad_(False)
            out.append(layer)
            k += 1
        else:
            out.append(module)
    return nn.Sequential(*out).eval()


class LoraLinear(nn.Module):
    """``y = base(x) + scaling * x A^T B^T``; A: (r, in), B: (out, r); the base layer stays frozen."""

    def __init__(self, base: nn.Linear, config: LoraConfig, gen: torch.Generator | None = None):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        r = config.rank_for(tuple(base.weight.shape))
        self.lora_A = nn.Parameter(kaiming_uniform_A(r, base.in_features, gen))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scaling = config.scaling_for(r)

    def delta_weight(self) -> torch.Tensor:
        """``Delta W = scaling * B A``, shape (out, in)."""
        return lora_delta(self.lora_A, self.lora_B, self.scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * ((x @ self.lora_A.t()) @ self.lora_B.t())

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A new plain Linear with ``W* = W + Delta W`` (eq. 5)."""
        out = nn.Linear(self.base.in_features, self.base.out_features)
        out.weight.copy_(merged_weight(self.base.weight, self.delta_weight()))
        out.bias.copy_(self.base.bias)
        return out
