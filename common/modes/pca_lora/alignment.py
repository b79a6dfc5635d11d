"""pca-lora's alignment strategies: how the RX adapts its frozen classifier to what it receives.

An :class:`AlignmentStrategy` runs inside the pca-lora RX half, once per
payload; :class:`LoraAlignment` is the paper's RX-side LoRA, and
:class:`~common.modes.pca_lora.adapter_bank.BankedAlignment` adds warm starts
from adapters fitted earlier. (The other modes align differently and bring
their own halves; see :mod:`common.modes.base`.)
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from common.codecs.base import Codec
from common.learn import fastlora
from common.learn.lora import LoraConfig, LoraState, init_adapters, merge_into
from common.learn.train import TrainConfig, fit


@dataclass(frozen=True)
class AdaptConfig:
    """Optimiser settings: up to ``steps`` Adam steps of ``batch_size`` vectors (0 = full batch).

    ``lr``: peak learning rate; ``schedule``: "cosine" (annealed to 0 over the
    run, by step count or elapsed budget, whichever is further) or "constant".
    ``budget_ms``: wall-clock cap on adaptation (set-up, training and merge;
    None = no cap). ``bias``: also train a delta on every adapted layer's bias.
    ``frozen_layers``: leading Linear layers without an adapter (their output
    is computed once). ``holdout``: fraction of the received vectors (at most
    ``holdout_max``) kept aside to check the adapted model against the frozen
    one; the one with the lower hold-out cross-entropy is used (0 = no check),
    which also keeps a model that over-fits few vectors at large alpha out.
    ``warm_steps``: steps for a warm start from an adapter already fitted at
    the same alpha. ``max_epochs``: caps the steps at this many passes over
    the fitted vectors (a few dozen vectors get a few steps, not hundreds of
    passes that over-fit them; 0 = no cap). Below ``deep_fraction * d_pre``
    (alpha 20 for MNIST's d_pre = 200) the misalignment is severe and the
    payload small (little air time), so a cold start gets ``deep_steps``
    within ``deep_budget_ms`` instead.

    Defaults (see docs/benchmarks.md): a cosine schedule at lr 1e-2 reaches in
    150 steps what a constant 3e-3 needs ~300 for; 120 ms keeps adaptation
    under the 150 ms target on a loaded 2-core CPU.
    """

    steps: int = 150
    lr: float = 1e-2
    batch_size: int = 256
    budget_ms: float | None = 120.0
    schedule: str = "cosine"
    bias: bool = True
    frozen_layers: int = 0
    holdout: float = 0.1
    holdout_max: int = 512
    warm_steps: int = 40
    max_epochs: float = 10.0
    deep_fraction: float = 0.1
    deep_steps: int = 400
    deep_budget_ms: float | None = 400.0
    seed: int = 0

    def __post_init__(self):
        if self.steps < 0 or self.warm_steps < 0:
            raise ValueError(f"steps={self.steps} and warm_steps={self.warm_steps} must be >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {self.batch_size}")
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ValueError(f"budget_ms must be > 0 or None, got {self.budget_ms}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.frozen_layers < 0:
            raise ValueError(f"frozen_layers must be >= 0, got {self.frozen_layers}")
        if not 0 <= self.deep_fraction <= 1:
            raise ValueError(f"deep_fraction must be in [0, 1], got {self.deep_fraction}")
        if self.deep_steps < 0 or (self.deep_budget_ms is not None and not self.deep_budget_ms > 0):
            raise ValueError(f"deep_steps={self.deep_steps} must be >= 0 and deep_budget_ms="
                             f"{self.deep_budget_ms} > 0 or None")
        if self.max_epochs < 0:
            raise ValueError(f"max_epochs must be >= 0, got {self.max_epochs}")
        if not 0 <= self.holdout < 1 or self.holdout_max < 0:
            raise ValueError(f"holdout={self.holdout} must be in [0, 1) and holdout_max={self.holdout_max} >= 0")


@dataclass(frozen=True)
class AdaptReport:
    """What adaptation did: steps run of those asked, whether it ran to completion.

    ``warm_start``/``warm_from_alpha``: whether the adapter started from a stored
    one (and which alpha it was fitted at). ``kept``: "adapted", or "frozen" when
    the hold-out check found the frozen model better (lower cross-entropy on the
    held-out vectors decides). ``holdout_acc_*``: both models' accuracies on
    them (None without a hold-out).
    """

    strategy: str
    steps: int
    steps_requested: int
    complete: bool
    final_loss: float
    trainable_params: int
    duration_ms: float
    warm_start: bool = False
    warm_from_alpha: int | None = None
    kept: str = "adapted"
    n_fit: int = 0
    n_holdout: int = 0
    holdout_acc_frozen: float | None = None
    holdout_acc_adapted: float | None = None

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
    """LoRA on the MLP's Linear layers (optionally bias deltas), trained with Adam, then merged.

    With ``fold`` (default) and a linear codec, training runs on ``z`` through
    the folded first layer with the hand-written trainer of
    :mod:`common.learn.fastlora` (same ``W*``, a fraction of the cost); otherwise an
    autograd reference with the same initialisation, batches and schedule runs
    on ``x_hat``. A share of the received vectors is held out to choose between
    the adapted and the frozen model (``AdaptConfig.holdout``).
    """

    name = "lora"

    def __init__(self, lora: LoraConfig = LoraConfig(), adapt: AdaptConfig = AdaptConfig(), fold: bool = True):
        self.lora = lora
        self.config = adapt
        self.fold = fold

    def adapt(self, model, z, y, codec):
        merged, report, _ = self.adapt_state(model, z, y, codec)
        return merged, report

    def adapt_state(self, model: nn.Sequential, z: np.ndarray, y: np.ndarray, codec: Codec,
                    init: LoraState | None = None, init_alpha: int | None = None,
                    steps: int | None = None) -> tuple[nn.Sequential, AdaptReport, LoraState | None]:
        """Like :meth:`adapt`, starting from ``init`` (a copy is trained) when given.

        ``init_alpha``: the alpha ``init`` was fitted at (reported). ``steps``
        overrides ``config.steps``. Returns the model, the report and the
        trained adapter (None when the frozen model was kept).
        """
        t0 = time.perf_counter()
        cfg = self.config
        deep = np.shape(z)[1] < cfg.deep_fraction * codec.d_max
        budget_ms = cfg.deep_budget_ms if deep else cfg.budget_ms
        steps = (cfg.deep_steps if deep else cfg.steps) if steps is None else steps
        budget_s = None if budget_ms is None else budget_ms / 1e3
        weights, biases = _mlp_weights(model)
        layers = tuple(range(min(cfg.frozen_layers, len(weights) - 1), len(weights)))
        gen = torch.Generator().manual_seed(cfg.seed)
        if init is not None and _compatible(init, weights, layers):
            state = LoraState(init.layers, [a.clone() for a in init.A], [b.clone() for b in init.B],
                              None if init.d is None else [d.clone() for d in init.d], init.scaling)
            if cfg.bias and state.d is None:
                state.d = [torch.zeros(weights[l].shape[0]) for l in layers]
            warm = True
        else:
            state = init_adapters(weights, layers, self.lora.rank, self.lora.scaling, cfg.bias, gen)
            warm = False
        z = np.asarray(z, np.float32)
        y = np.asarray(y)
        fit, hold = _split_holdout(len(z), cfg, gen)
        if cfg.max_epochs and len(fit):
            per_epoch = len(fit) / (cfg.batch_size or len(fit))
            steps = min(steps, max(1, math.ceil(cfg.max_epochs * per_epoch)))
        zt = torch.as_tensor(z)
        yt = torch.as_tensor(y.astype(np.int64))
        linear = codec.linear_decoder(z.shape[1]) if self.fold else None
        # the training loop gets what the set-up left, less a tenth kept for the merge and hold-out check
        left_s = None if budget_s is None else max(0.9 * budget_s - (time.perf_counter() - t0), 1e-6)
        if len(fit) == 0 or steps == 0:
            done, loss = 0, float("nan")
        elif linear is not None:
            m, c = (torch.as_tensor(a) for a in linear)
            done, loss = fastlora.train(weights, biases, zt[fit], yt[fit], m, c, state, steps=steps,
                                        lr=cfg.lr, batch=cfg.batch_size, schedule=cfg.schedule,
                                        gen=gen, budget_s=left_s)
        else:
            x = torch.as_tensor(codec.decode(z))
            done, loss = _train_reference(weights, biases, x[fit], yt[fit], state, steps, cfg, gen, left_s)
        merged = merge_into(model, state)
        kept, acc_frozen, acc_adapted = "adapted", None, None
        if len(hold):
            y_hold = torch.as_tensor(y[hold.numpy()].astype(np.int64))
            if linear is not None:  # folded: alpha instead of d_raw per vector in the first layer
                frozen_logits = _folded_logits(model, zt[hold], m, c)
                adapted_logits = _folded_logits(merged, zt[hold], m, c)
            else:
                x_hold = torch.as_tensor(codec.decode(z[hold.numpy()]))
                with torch.no_grad():
                    frozen_logits, adapted_logits = model(x_hold), merged(x_hold)
            acc_frozen = float((frozen_logits.argmax(1) == y_hold).float().mean())
            acc_adapted = float((adapted_logits.argmax(1) == y_hold).float().mean())
            # cross-entropy decides: far less noisy than accuracy on a few hundred vectors
            if nn.functional.cross_entropy(adapted_logits, y_hold) > nn.functional.cross_entropy(frozen_logits, y_hold):
                kept, merged = "frozen", model
        n_params = sum(t.numel() for t in (*state.A, *state.B, *(state.d or [])))
        report = AdaptReport(self.name, done, steps, done == steps, loss, n_params,
                             (time.perf_counter() - t0) * 1e3, warm, init_alpha if warm else None, kept,
                             len(fit), len(hold), acc_frozen, acc_adapted)
        return merged, report, state


@torch.no_grad()
def _folded_logits(model: nn.Sequential, z: torch.Tensor, m: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` on ``x_hat = z m + c`` with the decoder folded into its first layer."""
    weights, biases = _mlp_weights(model)
    h = torch.addmm(weights[0] @ c + biases[0], z, (weights[0] @ m.t()).t())
    for w, b in zip(weights[1:], biases[1:]):
        h = torch.addmm(b, h.clamp_(min=0), w.t())
    return h


def _mlp_weights(model: nn.Sequential) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Weights and biases of a Linear/ReLU Sequential (as :func:`common.learn.models.build_mlp` makes)."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    if not all(isinstance(m, (nn.Linear, nn.ReLU)) for m in model) or not linears:
        raise TypeError("LoraAlignment adapts Linear/ReLU MLPs only (common.learn.models.build_mlp)")
    return [m.weight.detach() for m in linears], [m.bias.detach() for m in linears]


def _compatible(state: LoraState, weights: list[torch.Tensor], layers: tuple[int, ...]) -> bool:
    return tuple(state.layers) == layers and all(
        a.shape[1] == weights[l].shape[1] and b.shape[0] == weights[l].shape[0]
        for l, a, b in zip(layers, state.A, state.B))


def _split_holdout(n: int, cfg: AdaptConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, hold-out); no hold-out below 50 vectors."""
    k = min(int(n * cfg.holdout), cfg.holdout_max) if n >= 50 else 0
    if k == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.long)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7919))
    return perm[k:].sort().values, perm[:k].sort().values


def _train_reference(weights, biases, x, y, state: LoraState, steps: int, cfg: AdaptConfig,
                     gen: torch.Generator, budget_s: float | None) -> tuple[int, float]:
    """Autograd version of :func:`common.learn.fastlora.train` on ``x_hat`` (same batches, schedule, Adam)."""
    params = [p.requires_grad_(True) for p in (*state.A, *state.B, *(state.d or []))]
    first = state.layers[0]

    def loss_fn(xb, yb):
        h = xb
        for l in range(len(weights)):
            p = h @ weights[l].t() + biases[l]
            if l >= first:
                i = l - first
                p = p + state.scaling * ((h @ state.A[i].t()) @ state.B[i].t())
                if state.d is not None:
                    p = p + state.d[i]
            h = p.clamp(min=0) if l < len(weights) - 1 else p
        return nn.functional.cross_entropy(h, yb)

    config = TrainConfig(epochs=0, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, schedule=cfg.schedule,
                         budget_s=budget_s, drop_last=True)
    report = fit(params, loss_fn, (x, y), config, generator=gen)
    for p in params:
        p.requires_grad_(False)
    return report.steps, report.last_loss
