"""fed-lora's MLP task: the project's MLP with frozen random hidden layers, its own LoRA and a trainable
head (no extra packages); the shared API is :class:`~common.modes.fed_lora.foundation.AdapterTask`."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from common.learn.lora import LoraConfig, LoraLinear
from common.learn.models import build_mlp

from common.modes.fed_lora.foundation import (
    AdapterTask,
    LoraModuleSpec,
    MLP_MODULES,
    _LoraRef,
    _train_flops_per_sample,
)

# --- the MLP task (no extra packages) ------------------------------------------------
class MlpTask(AdapterTask[np.ndarray]):
    """``build_mlp(d_in, hidden, n_classes)`` with frozen random hidden layers and LoRA on them.

    The last Linear is the trainable head; the hidden Linear layers are named
    by their Sequential index ("0", "2", ...). Inputs: float32 (n, d_in).
    Initialisation (base weights, head, A factors) is seeded by ``seed``.
    """

    def __init__(self, d_in: int, n_classes: int, hidden: tuple[int, ...] = (64, 32),
                 modules: Sequence[LoraModuleSpec] = MLP_MODULES, seed: int = 0):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = build_mlp(d_in, hidden, n_classes)
        layers = list(net)
        super().__init__(modules, layers[-1])
        self._body = layers[:-1]
        for p in (q for m in self._body for q in m.parameters()):
            p.requires_grad_(False)
        linear = {str(i): m for i, m in enumerate(self._body) if isinstance(m, nn.Linear)}
        self._adapters: dict[str, dict[str, LoraLinear]] = {}
        for spec in self.modules.values():
            bad = [t for t in spec.targets if t not in linear]
            if bad or spec.blocks is not None:
                raise ValueError(f"module {spec.name!r}: MLP targets must be hidden Linear indices "
                                 f"{sorted(linear)} with blocks=None, got targets={spec.targets}, blocks={spec.blocks}")
            self._adapters[spec.name] = {t: LoraLinear(linear[t], LoraConfig(spec.rank, spec.alpha))
                                         for t in spec.targets}
        self._linear = linear
        self._active: str | None = None
        for i, name in enumerate(self.modules):
            self.reset_adapter(name, seed + 1 + i)

    def _refs(self, module: str) -> dict[str, _LoraRef]:
        return {t: _LoraRef(m.lora_A, m.lora_B, m.scaling) for t, m in self._adapters[module].items()}

    def _base_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{i}.{n}": p for i, m in enumerate(self._body) for n, p in m.named_parameters()}

    def _base_linear(self, layer: str) -> nn.Linear:
        if layer not in self._linear:
            raise ValueError(f"unknown layer {layer!r}; the MLP has {sorted(self._linear)}")
        return self._linear[layer]

    @contextlib.contextmanager
    def _use(self, module: str | None) -> Iterator[None]:
        was, self._active = self._active, module
        try:
            yield
        finally:
            self._active = was

    def _tensors(self, inputs: np.ndarray) -> tuple[torch.Tensor, ...]:
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        if x.ndim != 2 or x.shape[1] != self._body[0].in_features:
            raise ValueError(f"inputs must be (n, {self._body[0].in_features}), got {tuple(x.shape)}")
        return (x,)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        adapters = self._adapters[self._active] if self._active is not None else {}
        for i, m in enumerate(self._body):
            x = adapters.get(str(i), m)(x)
        return x

    def train_flops(self, module: str, inputs: np.ndarray, epochs: float) -> float:
        """``epochs * n * (F + F_back + 3 (F_lora + F_head))`` (see :func:`_train_flops_per_sample`)."""
        self._check(module)
        n = len(inputs)
        dense = [(int(k), 2.0 * m.in_features * m.out_features) for k, m in
                 ((k, self._linear[k]) for k in sorted(self._linear, key=int))]
        lowest = min(int(t) for t in self.modules[module].targets)
        lora = sum(2.0 * r.A.shape[0] * (r.A.shape[1] + r.B.shape[0]) for r in self._refs(module).values())
        head = 2.0 * self.head.in_features * self.head.out_features
        return epochs * n * _train_flops_per_sample(sum(f for _, f in dense),
                                                    sum(f for i, f in dense if i >= lowest), lora, head)
