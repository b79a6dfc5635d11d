"""pca-lora's alignment strategies: how the RX adapts its frozen classifier to what it receives.

An :class:`AlignmentStrategy` runs inside the pca-lora RX half, once per
payload. :class:`LoraAlignment` runs one of three *recipes*
(:data:`RECIPES`, ``AdaptConfig.recipe``, the RX's ``--adapt-recipe``):

- ``lora``: the paper's RX-side LoRA (rank-8 adapters on every Linear layer);
- ``first-layer``: full training of the first layer folded into the codec
  (``W_0 M^T``, out0 x alpha, plus its bias), the later layers frozen (in
  bfloat16 where the CPU makes that faster): a full-rank adapter on that
  layer, merged exactly into ``W_0`` (``Delta W_0 = D (M M^T)^-1 M``); bf16 where the
  recipe's own step, timed in both at start-up, is at least 15 % faster;
- ``staged``: first-layer steps, then, when the budget leaves room for
  enough of them, steps on the full weights of every layer.

Deterministic by default: work is bounded by a step count calibrated to the
time budget once per process (:meth:`LoraAlignment.calibrate`, run by the RX's warm-up),
not by the clock; the budget stays as a wall-clock safety cap, and the report
says when it cut a run. :class:`~common.modes.pca_lora.adapter_bank.BankedAlignment`
adds an adapter bank (warm starts, and returning alphas that need no training).
(The other modes align differently and bring their own halves; see
:mod:`common.modes.base`.)
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from common.codecs.base import Codec
from common.learn import fastlora
from common.learn.lora import LoraConfig, LoraState, init_adapters, merge_into
from common.learn.models import fold_decoder
from common.learn.train import TrainConfig, fit

log = logging.getLogger("semalign.align")

RECIPES = ("lora", "first-layer", "staged")
# chosen from the sweep in docs/benchmarks.md ("Adaptation recipes")
DEFAULT_RECIPE = "staged"
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class AdaptConfig:
    """How the RX adapts: the recipe, its optimiser settings and how long it may run.

    ``recipe``: one of :data:`RECIPES`. Adam steps of ``batch_size`` vectors
    (0 = full batch) at peak learning rate ``lr`` with ``schedule`` "cosine"
    (annealed to 0 over the planned steps) or "constant".

    How many steps: ``steps`` > 0 runs exactly that many (``deep_steps`` below
    the deep threshold); 0 (default) runs the count :meth:`LoraAlignment.calibrate`
    measured to fill ``fill`` of the time budget on this machine (at most
    ``max_steps``, in multiples of 10; ``max_steps`` without a budget), so the
    same payload gives the same model whatever the load. ``budget_ms`` (``deep_budget_ms`` below the deep threshold): a
    wall-clock safety cap on the whole adaptation (set-up, training, merge,
    hold-out check; None = none); a run it cuts is reported
    (``cut_by_cap``). ``max_epochs`` caps the steps at this many passes over
    the fitted vectors (a few dozen vectors get a few steps; 0 = no cap).

    Below ``deep_fraction * d_pre`` (alpha 20 for MNIST's d_pre = 200) the
    misalignment is severe and the payload small (little air time): the budget
    is ``deep_budget_ms`` and the dense recipes use ``deep_lr``.

    LoRA only: ``bias`` (a delta on every adapted layer's bias; the dense
    recipes always train biases), ``frozen_layers`` (leading Linear layers
    without an adapter). Staged only: ``stage1_steps`` first-layer steps, then
    all layers at ``stage2_lr`` when at least ``stage2_min_steps`` of them fit
    the budget (else it is the first-layer recipe). ``precision``: the frozen
    layers of the first-layer recipe (and stage 1) in "fp32", "bf16", or
    "auto" (bf16 where the recipe's own step, timed at calibration in both, takes at
    most 0.85 of fp32's time: :meth:`LoraAlignment.precision_choice`).

    ``holdout``: fraction of the received vectors (at most ``holdout_max``)
    kept aside; the adapted model is used only if its hold-out cross-entropy
    is no higher than the frozen model's (0 = no check). ``warm_steps``: steps
    for a returning alpha whose adapter the bank holds; 0 = reuse that
    adapter as it is when the hold-out check accepts it (else train anew).
    """

    recipe: str = DEFAULT_RECIPE
    steps: int = 0
    lr: float = 1e-2
    batch_size: int = 256
    budget_ms: float | None = 120.0
    fill: float = 0.75
    max_steps: int = 2000
    schedule: str = "cosine"
    bias: bool = True
    frozen_layers: int = 0
    holdout: float = 0.1
    holdout_max: int = 512
    warm_steps: int = 0
    max_epochs: float = 10.0
    deep_fraction: float = 0.1
    deep_steps: int = 0
    deep_budget_ms: float | None = 400.0
    deep_lr: float = 3e-2
    stage1_steps: int = 150
    stage2_min_steps: int = 200
    stage2_lr: float = 1e-2
    precision: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.steps < 0 or self.warm_steps < 0 or self.deep_steps < 0:
            raise ValueError(f"steps={self.steps}, deep_steps={self.deep_steps} and warm_steps="
                             f"{self.warm_steps} must be >= 0 (0 = calibrated)")
        if not (self.lr > 0 and self.deep_lr > 0 and self.stage2_lr > 0):
            raise ValueError(f"learning rates must be > 0, got lr={self.lr}, deep_lr={self.deep_lr}, "
                             f"stage2_lr={self.stage2_lr}")
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {self.batch_size}")
        for name in ("budget_ms", "deep_budget_ms"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be > 0 or None, got {v}")
        if not 0 < self.fill <= 1 or self.max_steps < 1:
            raise ValueError(f"fill={self.fill} must be in (0, 1] and max_steps={self.max_steps} >= 1")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.frozen_layers < 0:
            raise ValueError(f"frozen_layers must be >= 0, got {self.frozen_layers}")
        if not 0 <= self.deep_fraction <= 1:
            raise ValueError(f"deep_fraction must be in [0, 1], got {self.deep_fraction}")
        if self.max_epochs < 0:
            raise ValueError(f"max_epochs must be >= 0, got {self.max_epochs}")
        if not 0 <= self.holdout < 1 or self.holdout_max < 0:
            raise ValueError(f"holdout={self.holdout} must be in [0, 1) and holdout_max={self.holdout_max} >= 0")
        if self.stage1_steps < 1 or self.stage2_min_steps < 1:
            raise ValueError(f"stage1_steps={self.stage1_steps} and stage2_min_steps="
                             f"{self.stage2_min_steps} must be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass(frozen=True)
class AdaptReport:
    """What adaptation did: steps run of those asked, whether it ran to completion.

    ``strategy``: the recipe. ``steps_by``: "calibrated" (the step count
    :func:`calibrate` derived from the budget), "fixed" (``steps`` given) or
    "none" (no training). ``cut_by_cap``: the wall-clock safety cap stopped
    the run before its steps (then ``complete`` is False and the result
    depends on the machine's load). ``stage_steps``: steps per stage (staged:
    first-layer, all layers). ``precision``: the frozen layers' arithmetic
    ("fp32" or "bf16"); ``precision_by``: why (:meth:`LoraAlignment.precision_choice`:
    "measured", "forced", "given", "fp32 only", "no bf16 arithmetic") and
    ``precision_step_ms``: the recipe's step measured in each, ms (``{"fp32":
    ms, "bf16": ms}``; None unless measured). ``ms_per_step``: the calibrated
    cost the step count came from (None when not calibrated).
    ``warm_start``/``warm_from_alpha``: whether training started from a stored
    adapter (and which alpha it was fitted at); ``reused``: the bank's adapter
    for this alpha was used as it is, without training. ``kept``: "adapted",
    or "frozen" when the hold-out check found the frozen model better (lower
    cross-entropy on the held-out vectors decides). ``holdout_acc_*``: both
    models' accuracies on them (None without a hold-out).
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
    steps_by: str = "fixed"
    cut_by_cap: bool = False
    stage_steps: list = field(default_factory=list)
    precision: str = "fp32"
    ms_per_step: float | None = None
    reused: bool = False
    precision_by: str | None = None
    precision_step_ms: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """Measured costs of one recipe on this machine: ms per step ``a + b * alpha`` per stage
    (first-layer / LoRA, then all layers for staged), a fixed ``overhead_ms`` per adaptation
    (set-up, merge, hold-out check), and the frozen layers' precision."""

    recipe: str
    per_step: tuple  # ((a, b), ...) one per stage, ms
    overhead_ms: float
    precision: str
    budgets: tuple  # (budget_ms, deep_budget_ms) it was made for
    choice: dict = field(default_factory=dict)  # LoraAlignment.precision_choice: why this precision

    def ms_per_step(self, stage: int, alpha: int) -> float:
        a, b = self.per_step[stage]
        return a + b * alpha

    def plan(self, cfg: AdaptConfig, alpha: int, budget_ms: float | None) -> list[int]:
        """Steps per stage that fill ``cfg.fill`` of ``budget_ms`` (multiples of 10, at least 10)."""
        if budget_ms is None:
            return _split_stages(cfg, cfg.max_steps, self.recipe)
        avail = cfg.fill * budget_ms - self.overhead_ms
        c1 = self.ms_per_step(0, alpha)
        total1 = _round10(avail / c1, cfg.max_steps)
        if self.recipe != "staged" or total1 <= cfg.stage1_steps:
            return [total1]
        c2 = self.ms_per_step(1, alpha)
        s2 = _round10((avail - cfg.stage1_steps * c1) / c2, cfg.max_steps - cfg.stage1_steps)
        return [cfg.stage1_steps, s2] if s2 >= cfg.stage2_min_steps else [total1]


def _round10(x: float, cap: int) -> int:
    """``x`` rounded down to a multiple of 10, in [10, cap]: a count that small timing noise does not move."""
    return int(max(10, min(cap, 10 * math.floor(x / 10)))) if x == x else 10


def _split_stages(cfg: AdaptConfig, total: int, recipe: str) -> list[int]:
    """A fixed step count split into stages: staged runs ``stage1_steps`` first-layer steps first,
    the rest on all layers when at least ``stage2_min_steps`` are left."""
    if recipe != "staged" or total - cfg.stage1_steps < cfg.stage2_min_steps:
        return [total]
    return [cfg.stage1_steps, total - cfg.stage1_steps]


_CALIBRATIONS: dict[tuple, Calibration] = {}


def _calibration_key(cfg: AdaptConfig, lora: LoraConfig, model: nn.Sequential, codec: Codec) -> tuple:
    weights, _ = _mlp_weights(model)
    return (cfg.recipe, tuple(tuple(w.shape) for w in weights), codec.d_max, cfg.batch_size,
            torch.get_num_threads(), requested_precision(cfg), lora.rank, cfg.frozen_layers, cfg.budget_ms,
            cfg.deep_budget_ms)


PRECISION_ENV = "SEMALIGN_PRECISION"


def requested_precision(cfg: AdaptConfig) -> str:
    """``cfg.precision``, except that "auto" gives way to the environment variable
    ``SEMALIGN_PRECISION`` (fp32, bf16 or auto) where it is set: one switch that forces
    the precision of every RX a run starts (the test suite's ``--precision``)."""
    if cfg.precision != "auto":
        return cfg.precision
    forced = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    if forced not in PRECISIONS:
        raise ValueError(f"{PRECISION_ENV}={forced!r}: use one of {PRECISIONS} (or unset it)")
    return forced


def frozen_precision(cfg: AdaptConfig, weights: list[torch.Tensor]) -> str | None:
    """"bf16" or "fp32" for the frozen later layers of the dense recipes where no measurement is
    needed (LoRA, fewer than two layers, a forced precision, "auto" on a CPU without bf16
    arithmetic); None: "auto" where bf16 might pay, so the recipe's own step decides
    (:meth:`LoraAlignment.precision_choice`)."""
    precision = requested_precision(cfg)
    if cfg.recipe == "lora" or precision == "fp32" or len(weights) < 2:
        return "fp32"
    if precision == "bf16":
        return "bf16"
    return "fp32" if fastlora.native_bf16() is False else None


# bf16 is chosen only when the recipe's step runs at most this share of fp32's time
BF16_STEP_RATIO = 0.85
_PRECISION_CHOICES: dict[tuple, dict] = {}


# ---------------------------------------------------------------- strategies


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

    @abstractmethod
    def adapt_part(self, model: nn.Sequential, z: np.ndarray, y: np.ndarray, codec: Codec, sizes: list[int],
                   parts: int, carry=None) -> tuple[nn.Sequential, AdaptReport, object]:
        """Streaming adaptation: part ``len(sizes)`` of ``parts`` of a round's training vectors arrived.

        ``z`` (n, alpha) / ``y`` (n,) are all the parts so far, ``sizes`` their
        vector counts; ``carry`` is what the previous part returned (None for
        the first). Each part runs its stretch of the steps one payload would
        get, continuing the previous part's training (adapter, optimiser state,
        schedule); the hold-out is drawn within each part, so no held-out
        vector was ever trained on. Returns
        the adapted model (None before the last part: merge and hold-out check
        run once, at the end), the report and the carry for the next part.
        """

    def calibrate(self, model: nn.Sequential, codec: Codec) -> dict | None:
        """Measure what the strategy needs to know about this machine (start-up); a summary or None."""
        return None

    def warm_up(self, model: nn.Sequential, codec: Codec) -> dict | None:
        """Before serving: :meth:`calibrate`, and pay every one-time cost of the adaptation paths a
        round may take, so the first round gets the steps its plan says. Stores nothing (an adapter
        bank stays as it was). Returns the calibration summary or None."""
        return self.calibrate(model, codec)

    def without_training(self, model: nn.Sequential, alpha: int, codec: Codec) -> tuple[nn.Sequential, dict]:
        """The model for a payload at ``alpha`` that carries no training vectors, and its report dict."""
        return model, {"strategy": "none", "steps": 0, "complete": True, "steps_by": "none"}

    def aligned_alphas(self) -> list[int]:
        """Alphas (besides d_pre) this RX can serve without training vectors (an adapter bank's)."""
        return []


class LoraAlignment(AlignmentStrategy):
    """The RX's adaptation: one of :data:`RECIPES` (``AdaptConfig.recipe``), trained, then merged.

    With ``fold`` (default) and a linear codec, training runs on ``z`` through
    the folded first layer with the hand-written trainers of
    :mod:`common.learn.fastlora` (a fraction of the cost); otherwise an
    autograd reference (through :func:`common.learn.train.fit`, with the same
    initialisation, batches and schedule, and without the wall-clock cap) runs
    on ``x_hat``. A share of the received vectors is held out to choose between
    the adapted and the frozen model (``AdaptConfig.holdout``). Every recipe's
    result is a :class:`LoraState` (the dense ones with ``A = M`` on the first
    layer and ``A = I`` on the others, scaling 1), so one guarded merge and one
    adapter bank serve them all.
    """

    def __init__(self, lora: LoraConfig = LoraConfig(), adapt: AdaptConfig = AdaptConfig(), fold: bool = True,
                 clock: Callable[[], float] = time.perf_counter):
        self.lora = lora
        self.config = adapt
        self.fold = fold
        self.clock = clock  # seconds; what the wall-clock cap and the reported duration are measured with

    @property
    def name(self) -> str:
        return self.config.recipe

    # ------------------------------------------------------------ calibration

    def calibrate(self, model: nn.Sequential, codec: Codec, repeats: int = 3) -> dict:
        """Per-step and fixed costs of this recipe here, measured once per process and settings
        (again when the budgets change); the step counts of the default config come from them.

        Each figure is the minimum over ``repeats`` timed runs, on synthetic
        vectors at two alphas, in CPU time of the calling thread (with one
        torch thread): other processes' load neither shortens nor lengthens
        the step counts, only the wall-clock cap notices it.
        """
        key = _calibration_key(self.config, self.lora, model, codec)
        cal = _CALIBRATIONS.get(key)
        if cal is None:
            cal = self._measure(model, codec, repeats)
            _CALIBRATIONS[key] = cal
            log.info("adaptation calibrated: recipe %s, %s ms/step at alpha %d, %.1f ms fixed, frozen layers %s; "
                     "steps %s at alpha %d in %s ms", cal.recipe,
                     "/".join(f"{cal.ms_per_step(i, codec.d_max):.2f}" for i in range(len(cal.per_step))),
                     codec.d_max, cal.overhead_ms, cal.precision,
                     cal.plan(self.config, codec.d_max, self.config.budget_ms), codec.d_max, self.config.budget_ms)
        return {"recipe": cal.recipe, "per_step_ms": [list(ab) for ab in cal.per_step],
                "overhead_ms": cal.overhead_ms, "precision": cal.precision,
                "precision_by": cal.choice.get("by"), "precision_step_ms": cal.choice.get("step_ms")}

    def warm_up(self, model: nn.Sequential, codec: Codec) -> dict:
        """:meth:`AlignmentStrategy.warm_up`: calibrate, then one whole adaptation (set-up, two steps of
        every stage of the recipe in its precision, merge, hold-out check) on synthetic vectors at a
        deep alpha and at d_max, the batch shapes of a real round: oneDNN's primitives (bf16 ones
        included), the allocator's growth and the first calls are paid here, not in a round."""
        info = self.calibrate(model, codec)
        cfg = self.config
        stages = 2 if cfg.recipe == "staged" else 1
        gen = torch.Generator().manual_seed(4242)
        n = 4 * (cfg.batch_size or 256)
        n_classes = _mlp_weights(model)[0][-1].shape[0]
        for alpha in sorted({max(1, math.ceil(cfg.deep_fraction * codec.d_max) - 1), codec.d_max}):
            z = torch.randn(n, alpha, generator=gen).numpy()
            y = torch.randint(0, n_classes, (n,), generator=gen).numpy().astype(np.uint8)
            stretch = _Stretch([2] * stages, "fixed", None, start=0, end=2 * stages)
            self.adapt_state(model, z, y, codec, stretch=stretch)
        return info

    def _measure(self, model: nn.Sequential, codec: Codec, repeats: int) -> Calibration:
        cfg = self.config
        weights, biases = _mlp_weights(model)
        choice = self.precision_choice(model, codec)
        precision = choice["precision"]
        batch = cfg.batch_size or 256
        gen = torch.Generator().manual_seed(12345)
        alphas = sorted({max(1, min(16, codec.d_max)), codec.d_max})
        k = 12
        per_alpha = {}
        for alpha in alphas:
            z = torch.randn(4 * batch, alpha, generator=gen)
            y = torch.randint(0, weights[-1].shape[0], (4 * batch,), generator=gen)
            stages = []
            for stage in range(2 if cfg.recipe == "staged" else 1):
                def run():
                    self._train_synthetic(weights, biases, z, y, codec, stage, k, precision)
                run()
                best = min(_timed(run) for _ in range(repeats))
                stages.append(best * 1e3 / k)
            per_alpha[alpha] = stages
        per_step = []
        for stage in range(len(per_alpha[alphas[0]])):
            lo, hi = per_alpha[alphas[0]][stage], per_alpha[alphas[-1]][stage]
            b = (hi - lo) / (alphas[-1] - alphas[0]) if len(alphas) > 1 else 0.0
            per_step.append((lo - b * alphas[0], max(b, 0.0)))
        # fixed costs: a whole adaptation of a mid-sized payload with one step, less that step
        n = 8 * batch
        z = np.asarray(torch.randn(n, codec.d_max, generator=gen).numpy(), np.float32)
        y = np.asarray(torch.randint(0, weights[-1].shape[0], (n,), generator=gen).numpy(), np.uint8)
        self.adapt_state(model, z, y, codec, steps=1, _precision=precision)
        one = min(_timed(lambda: self.adapt_state(model, z, y, codec, steps=1, _precision=precision))
                  for _ in range(repeats)) * 1e3
        a, b = per_step[0]
        overhead = max(one - (a + b * codec.d_max), 0.0)
        return Calibration(cfg.recipe, tuple(per_step), overhead, precision, (cfg.budget_ms, cfg.deep_budget_ms),
                           choice)

    def precision_choice(self, model: nn.Sequential, codec: Codec, repeats: int = 3, k: int = 12) -> dict:
        """The frozen layers' precision for this recipe and model, and why: ``{"precision": "fp32" |
        "bf16", "by": ..., "step_ms": {"fp32": ms, "bf16": ms} | None}``.

        Without a measurement where :func:`frozen_precision` decides ("by": "forced", "fp32 only" for
        LoRA or a one-layer model, "no bf16 arithmetic" per ``/proc/cpuinfo``). Else ("measured") the
        recipe's own first-layer step (its frozen layers in each precision, ``k`` steps on synthetic
        folded inputs of ``batch_size`` vectors at alpha 16 and d_pre, CPU time of this thread, the
        least of ``repeats``, mean of the two alphas) is timed in fp32 and bf16, and bf16 is chosen only
        when it takes at most :data:`BF16_STEP_RATIO` of fp32's time. Measured once per process, recipe,
        model shape, d_pre, batch and thread count.
        """
        cfg = self.config
        weights, biases = _mlp_weights(model)
        fixed = frozen_precision(cfg, weights)
        if fixed is not None:
            by = ("forced" if requested_precision(cfg) != "auto" else
                  "fp32 only" if cfg.recipe == "lora" or len(weights) < 2 else "no bf16 arithmetic")
            return {"precision": fixed, "by": by, "step_ms": None}
        batch = cfg.batch_size or 256
        key = (cfg.recipe, tuple(tuple(w.shape) for w in weights), codec.d_max, batch, torch.get_num_threads())
        if key not in _PRECISION_CHOICES:
            gen = torch.Generator().manual_seed(54321)
            ms = {"fp32": 0.0, "bf16": 0.0}
            alphas = sorted({max(1, min(16, codec.d_max)), codec.d_max})
            for alpha in alphas:
                z = torch.randn(4 * batch, alpha, generator=gen)
                y = torch.randint(0, weights[-1].shape[0], (4 * batch,), generator=gen)
                for precision in ms:
                    def run():
                        self._train_synthetic(weights, biases, z, y, codec, 0, k, precision)
                    run()
                    ms[precision] += min(_timed(run) for _ in range(repeats)) * 1e3 / k / len(alphas)
            pick = "bf16" if ms["bf16"] <= BF16_STEP_RATIO * ms["fp32"] else "fp32"
            _PRECISION_CHOICES[key] = {"precision": pick, "by": "measured",
                                       "step_ms": {p: round(v, 4) for p, v in ms.items()}}
            log.info("frozen layers in %s: %s step %.3f ms in fp32, %.3f ms in bf16", pick, cfg.recipe,
                     ms["fp32"], ms["bf16"])
        return dict(_PRECISION_CHOICES[key])

    def _train_synthetic(self, weights, biases, z, y, codec, stage: int, k: int, precision: str) -> None:
        """``k`` training steps of stage ``stage`` on synthetic folded inputs (for timing only)."""
        g = torch.Generator().manual_seed(1)
        m = torch.randn(z.shape[1], codec.d_raw, generator=g) / codec.d_raw ** 0.5
        c = torch.zeros(codec.d_raw)
        if self.config.recipe == "lora":
            layers = tuple(range(min(self.config.frozen_layers, len(weights) - 1), len(weights)))
            state = init_adapters(weights, layers, self.lora, self.config.bias,
                                  torch.Generator().manual_seed(0))
            fastlora.train(weights, biases, z, y, m, c, state, steps=k, lr=1e-3,
                           batch=self.config.batch_size, gen=torch.Generator().manual_seed(0))
            return
        ws = [weights[0] @ m.t(), *[w.clone() for w in weights[1:]]]
        bs = [weights[0] @ c + biases[0], *[b.clone() for b in biases[1:]]]
        fastlora.train_dense(ws, bs, z, y, trained=1 if stage == 0 else len(ws), steps=k, lr=1e-3,
                             batch=self.config.batch_size, gen=torch.Generator().manual_seed(0),
                             frozen_dtype=_DTYPES[precision] if stage == 0 else torch.float32)

    def _plan(self, alpha: int, codec: Codec, model: nn.Sequential, deep: bool, budget_ms: float | None,
              steps: int | None) -> tuple[list[int], str, Calibration | None]:
        """Steps per stage, how they were chosen, and the calibration they came from."""
        cfg = self.config
        fixed = steps if steps is not None else (cfg.deep_steps if deep else cfg.steps)
        if fixed:  # 0: calibrated
            return _split_stages(cfg, fixed, cfg.recipe), "fixed", None
        key = _calibration_key(cfg, self.lora, model, codec)
        if key not in _CALIBRATIONS:
            self.calibrate(model, codec)
        cal = _CALIBRATIONS[key]
        return cal.plan(cfg, alpha, budget_ms), "calibrated", cal

    # ------------------------------------------------------------ adaptation

    def adapt(self, model, z, y, codec):
        merged, report, _ = self.adapt_state(model, z, y, codec)
        return merged, report

    def adapt_part(self, model, z, y, codec, sizes, parts, carry=None, init=None, init_alpha=None):
        """:meth:`AlignmentStrategy.adapt_part`. The first part plans the round (the steps one payload of
        ``parts`` such parts would get) and may start from a stored adapter ``init`` (fitted at
        ``init_alpha``); each part then runs its stretch of that plan, Adam's moments and the schedule
        continuing across parts (the autograd reference, without folding, restarts them per part). The
        report sums the parts. The carry holds the adapter (``carry["state"]``) and the run."""
        cfg, alpha, part = self.config, int(z.shape[1]), len(sizes)
        holds, offset = [], 0
        for k, n_k in enumerate(sizes):
            holds.append(_split_holdout(n_k, cfg, seed_offset=k, parts=parts)[1] + offset)
            offset += n_k
        hold = torch.cat(holds)
        fit = torch.ones(len(z), dtype=torch.bool)
        fit[hold] = False
        if carry is None:
            deep = alpha < cfg.deep_fraction * codec.d_max
            plan, steps_by, cal = self._plan(alpha, codec, model, deep, cfg.deep_budget_ms if deep else
                                             cfg.budget_ms, None)
            if cfg.max_epochs:  # the epoch cap of the round's fit vectors, estimated from its first part
                n_est = int(fit.sum()) * parts
                plan = _cap_plan(plan, max(1, math.ceil(cfg.max_epochs * n_est / (cfg.batch_size or n_est))))
            carry = {"stretch": _Stretch(plan, steps_by, cal), "state": init, "init_alpha": init_alpha,
                     "reports": []}
        stretch, total = carry["stretch"], sum(carry["stretch"].plan)
        stretch.start, stretch.end = round(total * (part - 1) / parts), round(total * part / parts)
        merged, report, carry["state"] = self.adapt_state(
            model, z, y, codec, init=carry["state"], init_alpha=carry["init_alpha"],
            split=(torch.nonzero(fit).flatten(), hold), finish=part == parts, stretch=stretch)
        carry["reports"].append(report)
        return merged, _summed(carry["reports"], total), carry

    def adapt_state(self, model: nn.Sequential, z: np.ndarray, y: np.ndarray, codec: Codec,
                    init: LoraState | None = None, init_alpha: int | None = None,
                    steps: int | None = None, _precision: str | None = None,
                    split: tuple[torch.Tensor, torch.Tensor] | None = None, finish: bool = True,
                    stretch: "_Stretch | None" = None, plan_steps: list[int] | None = None
                    ) -> tuple[nn.Sequential | None, AdaptReport, LoraState | None]:
        """Like :meth:`adapt`, starting from ``init`` (a copy is trained) when given.

        ``init_alpha``: the alpha ``init`` was fitted at (reported). ``steps``
        overrides the configured or calibrated count. ``split``: (fit, hold-out)
        row indices, int64, instead of the seeded draw. Returns the model, the
        report and the trained adapter; without ``finish`` (training goes on
        later) the model is None: no merge, no hold-out check. ``stretch``:
        run only steps ``[stretch.start, stretch.end)`` of ``stretch.plan``,
        continuing its optimiser state (a round in parts). ``plan_steps``: run exactly these steps
        per stage (a report's ``stage_steps``: a recorded run repeated), neither recalibrated nor
        capped by the epoch limit; with ``budget_ms`` None nothing can cut it.
        """
        clock = self.clock
        t0 = clock()
        cfg = self.config
        recipe = cfg.recipe
        z = np.asarray(z, np.float32)
        y = np.asarray(y)
        alpha = z.shape[1]
        deep = alpha < cfg.deep_fraction * codec.d_max
        budget_ms = cfg.deep_budget_ms if deep else cfg.budget_ms
        cap_s = None if budget_ms is None else budget_ms / 1e3
        weights, biases = _mlp_weights(model)
        if plan_steps is not None:
            plan, steps_by, cal = [int(k) for k in plan_steps] or [0], "fixed", None
        else:
            plan, steps_by, cal = ((stretch.plan, stretch.steps_by, stretch.cal) if stretch is not None else
                                   self._plan(alpha, codec, model, deep, budget_ms, steps))
        if _precision:
            choice = {"precision": _precision, "by": "given", "step_ms": None}
        elif cal is not None:
            choice = cal.choice or {"precision": cal.precision, "by": "calibrated", "step_ms": None}
        else:
            choice = self.precision_choice(model, codec)
        precision = choice["precision"]
        if recipe == "lora":
            precision, choice = "fp32", {"by": "fp32 only", "step_ms": None}
        gen = torch.Generator().manual_seed(cfg.seed)
        fit_idx, hold = split if split is not None else _split_holdout(len(z), cfg)
        if not len(fit_idx):
            plan = [0]
        elif cfg.max_epochs and stretch is None and plan_steps is None:
            per_epoch = len(fit_idx) / (cfg.batch_size or len(fit_idx))
            plan = _cap_plan(plan, max(1, math.ceil(cfg.max_epochs * per_epoch)))
        zt = torch.as_tensor(z)
        yt = torch.as_tensor(y.astype(np.int64))
        linear = codec.linear_decoder(alpha) if self.fold else None
        m = c = None
        if linear is not None:
            m, c = (torch.as_tensor(a) for a in linear)
        # the training gets what the set-up left of the cap, less a tenth kept for the merge and hold-out check
        left = (lambda: None) if cap_s is None else (
            lambda: max(0.9 * cap_s - (clock() - t0), 1e-6))
        # steps of each stage this call runs: all of them, or the stretch's share
        spans = [(0, k) for k in plan] if stretch is None else stretch.spans()
        requested = sum(n for _, n in spans)
        warm = False
        if recipe == "lora":
            layers = tuple(range(min(cfg.frozen_layers, len(weights) - 1), len(weights)))
            if init is not None and _compatible(init, weights, layers):
                state = LoraState(init.layers, [a.clone() for a in init.A], [b.clone() for b in init.B],
                                  None if init.d is None else [d.clone() for d in init.d], init.scaling)
                if cfg.bias and state.d is None:
                    state.d = [torch.zeros(weights[l].shape[0]) for l in layers]
                warm = True
            else:
                state = init_adapters(weights, layers, self.lora, cfg.bias, gen)
            if len(fit_idx) == 0 or requested == 0:
                done, loss = [0], float("nan")
            elif linear is not None:
                n_done, loss = fastlora.train(weights, biases, zt[fit_idx], yt[fit_idx], m, c, state,
                                              steps=requested, lr=cfg.lr, batch=cfg.batch_size,
                                              schedule=cfg.schedule, gen=gen, cap_s=left(),
                                              resume=stretch.resume(0) if stretch else None, clock=clock)
                done = [n_done]
            else:
                x = torch.as_tensor(codec.decode(z))
                n_done, loss = _train_reference(weights, biases, x[fit_idx], yt[fit_idx], state, requested, cfg, gen)
                done = [n_done]
            n_params = sum(t.numel() for t in (*state.A, *state.B, *(state.d or [])))
        else:
            ws, bs, a0 = _dense_start(weights, biases, m, c, codec.d_raw, init)
            warm = init is not None
            lr1 = cfg.deep_lr if deep else cfg.lr
            done, loss = [], float("nan")
            x = zt if linear is not None else torch.as_tensor(codec.decode(z))
            for stage, (_, n_steps) in enumerate(spans):
                if len(fit_idx) == 0 or n_steps == 0:
                    done.append(0)
                    continue
                trained = 1 if stage == 0 else len(ws)
                lr = lr1 if stage == 0 else cfg.stage2_lr
                dtype = _DTYPES[precision] if trained < len(ws) else torch.float32
                if linear is not None:
                    n_done, loss, _ = fastlora.train_dense(ws, bs, x[fit_idx], yt[fit_idx], trained=trained,
                                                           steps=n_steps, lr=lr, batch=cfg.batch_size,
                                                           schedule=cfg.schedule, gen=gen, cap_s=left(),
                                                           frozen_dtype=dtype, clock=clock,
                                                           resume=stretch.resume(stage) if stretch else None)
                else:
                    n_done, loss = _train_dense_reference(ws, bs, x[fit_idx], yt[fit_idx], trained, n_steps, lr,
                                                          cfg, gen)
                done.append(n_done)
                if n_done < n_steps:
                    break
            trained_layers = len(ws) if (len(done) > 1 and done[1] > 0) or (init is not None and
                                                                            max(init.layers) > 0) else 1
            state = _dense_state(ws, bs, weights, biases, m, c, a0, trained_layers)
            n_params = sum(ws[l].numel() + bs[l].numel() for l in range(trained_layers))
        total_done = sum(done)
        merged = merge_into(model, state) if finish else None
        kept, acc_frozen, acc_adapted = "adapted", None, None
        if len(hold) and finish:
            kept, acc_frozen, acc_adapted = self._holdout_check(model, merged, z, y, hold, codec, m, c)
            if kept == "frozen":
                merged = model
        report = AdaptReport(recipe, total_done, requested, total_done == requested, loss, n_params,
                             (clock() - t0) * 1e3, warm, init_alpha if warm else None, kept,
                             len(fit_idx), len(hold), acc_frozen, acc_adapted, steps_by,
                             total_done < requested and cap_s is not None, done,
                             precision, None if cal is None else round(cal.ms_per_step(0, alpha), 4),
                             precision_by=choice["by"], precision_step_ms=choice["step_ms"])
        return merged, report, state

    def holdout_verdict(self, model: nn.Sequential, candidate: nn.Sequential, z: np.ndarray, y: np.ndarray,
                        codec: Codec) -> tuple[str, float | None, float | None, int]:
        """The hold-out check of ``candidate`` against ``model`` on this payload's held-out vectors:
        (kept, frozen accuracy, candidate accuracy, held-out count); "adapted" when nothing is held out."""
        z = np.asarray(z, np.float32)
        hold = _split_holdout(len(z), self.config)[1]
        if not len(hold):
            return "adapted", None, None, 0
        linear = codec.linear_decoder(z.shape[1]) if self.fold else None
        m, c = (None, None) if linear is None else (torch.as_tensor(a) for a in linear)
        return (*self._holdout_check(model, candidate, z, np.asarray(y), hold, codec, m, c), len(hold))

    def _holdout_check(self, model, merged, z, y, hold, codec, m, c) -> tuple[str, float, float]:
        y_hold = torch.as_tensor(y[hold.numpy()].astype(np.int64))
        if m is not None:  # folded: alpha instead of d_raw per vector in the first layer
            zh = torch.as_tensor(z[hold.numpy()])
            frozen_logits = _folded_logits(model, zh, m, c)
            adapted_logits = _folded_logits(merged, zh, m, c)
        else:
            x_hold = torch.as_tensor(codec.decode(z[hold.numpy()]))
            with torch.no_grad():
                frozen_logits, adapted_logits = model(x_hold), merged(x_hold)
        acc_frozen = float((frozen_logits.argmax(1) == y_hold).float().mean())
        acc_adapted = float((adapted_logits.argmax(1) == y_hold).float().mean())
        # cross-entropy decides: far less noisy than accuracy on a few hundred vectors
        worse = nn.functional.cross_entropy(adapted_logits, y_hold) > nn.functional.cross_entropy(frozen_logits, y_hold)
        return ("frozen" if worse else "adapted"), acc_frozen, acc_adapted


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class _Stretch:
    """What one part of a round in parts trains: steps ``[start, end)`` of the round's ``plan`` (steps per
    stage, in order), with one :class:`fastlora.Resume` per stage carrying Adam and the schedule."""

    plan: list[int]
    steps_by: str
    cal: "Calibration | None"
    start: int = 0
    end: int = 0
    resumes: dict = field(default_factory=dict)

    def spans(self) -> list[tuple[int, int]]:
        """(offset within the stage, steps) this stretch runs of each stage."""
        out, first = [], 0
        for k in self.plan:
            lo, hi = max(self.start, first), min(self.end, first + k)
            out.append((lo - first, max(0, hi - lo)))
            first += k
        return out

    def resume(self, stage: int) -> fastlora.Resume:
        return self.resumes.setdefault(stage, fastlora.Resume(self.plan[stage]))


def _summed(reports: list[AdaptReport], requested: int) -> AdaptReport:
    """One report for a round's parts: steps, stage steps and time summed, the last part's verdict."""
    first, last = reports[0], reports[-1]
    steps = sum(r.steps for r in reports)
    stages = [sum(x) for x in itertools.zip_longest(*(r.stage_steps for r in reports), fillvalue=0)]
    return replace(last, steps=steps, steps_requested=requested, complete=steps == requested,
                   duration_ms=sum(r.duration_ms for r in reports), stage_steps=stages,
                   cut_by_cap=any(r.cut_by_cap for r in reports), warm_start=first.warm_start,
                   warm_from_alpha=first.warm_from_alpha)


def _timed(fn) -> float:
    """Seconds ``fn`` took: CPU time of this thread when torch runs on it alone (time taken by other
    processes on the machine does not count, so the calibration does not follow the load), else wall time."""
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    t0 = clock()
    fn()
    return clock() - t0


def _cap_plan(plan: list[int], cap: int) -> list[int]:
    """``plan`` with at most ``cap`` steps in all: later stages give way first."""
    out, left = [], cap
    for n in plan:
        out.append(min(n, left))
        left -= out[-1]
    while len(out) > 1 and out[-1] == 0:
        out.pop()
    return out


def _dense_start(weights, biases, m, c, d_raw: int, init: LoraState | None):
    """Working copies of the layers for the dense recipes (first layer folded when ``m`` is given),
    with ``init``'s deltas applied (any stored adapter: its first-layer delta is projected onto
    this alpha's basis). Returns (ws, bs, A of the first layer's adapter)."""
    ws = [w.clone() for w in weights]
    bs = [b.clone() for b in biases]
    if init is not None:
        for i, l in enumerate(init.layers):
            delta = init.delta_weight(i)
            ws[l] = ws[l] + delta
            if init.d is not None:
                bs[l] = bs[l] + init.d[i]
    if m is not None:
        bs[0] = ws[0] @ c + bs[0]
        ws[0] = ws[0] @ m.t()
        return ws, bs, m
    return ws, bs, torch.eye(d_raw)


@torch.no_grad()
def _dense_state(ws, bs, weights, biases, m, c, a0, trained_layers: int) -> LoraState:
    """The trained dense layers as a :class:`LoraState` (scaling 1) that :func:`merge_into` merges exactly.

    First layer, folded: ``A = M``, ``B = D (M M^T)^-1`` with ``D = w_0 - W_0 M^T``, so
    ``Delta W_0 M^T = D`` on the features; its bias delta absorbs ``Delta W_0 c``.
    Other layers: ``A = I``, ``B = w_l - W_l``.
    """
    if m is not None:
        d0 = ws[0] - weights[0] @ m.t()
        gram = m @ m.t()
        b0 = torch.linalg.solve(gram, d0.t()).t()                 # D G^-1 (G symmetric)
        db0 = bs[0] - (weights[0] @ c + biases[0]) - b0 @ (m @ c)
    else:
        b0, db0 = ws[0] - weights[0], bs[0] - biases[0]
    A, B, d = [a0.clone()], [b0], [db0]
    for l in range(1, trained_layers):
        A.append(torch.eye(weights[l].shape[1]))
        B.append(ws[l] - weights[l])
        d.append(bs[l] - biases[l])
    return LoraState(tuple(range(trained_layers)), A, B, d, 1.0)


@torch.no_grad()
def _folded_logits(model: nn.Sequential, z: torch.Tensor, m: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` on ``x_hat = z m + c`` with the decoder folded into its first layer."""
    return fold_decoder(model, m, c)(z)


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


def _split_holdout(n: int, cfg: AdaptConfig, seed_offset: int = 0, parts: int = 1
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, hold-out) of ``n`` vectors, seeded by ``cfg.seed + seed_offset``; no hold-out below 50.

    ``parts``: ``n`` is one of that many near-equal parts of a round, whose
    hold-outs together are what the whole round's would be (the 50-vector
    threshold and ``holdout_max`` apply to the round).
    """
    k = min(int(n * cfg.holdout), cfg.holdout_max // parts) if n * parts >= 50 else 0
    if k == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.long)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 7919 + 104729 * seed_offset))
    return perm[k:].sort().values, perm[:k].sort().values


def _train_reference(weights, biases, x, y, state: LoraState, steps: int, cfg: AdaptConfig,
                     gen: torch.Generator) -> tuple[int, float]:
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
                         drop_last=True)
    report = fit(params, loss_fn, (x, y), config, generator=gen)
    for p in params:
        p.requires_grad_(False)
    return report.steps, report.last_loss


def _train_dense_reference(ws, bs, x, y, trained: int, steps: int, lr: float, cfg: AdaptConfig,
                           gen: torch.Generator) -> tuple[int, float]:
    """Autograd version of :func:`common.learn.fastlora.train_dense` (float32 throughout) through
    :func:`common.learn.train.fit`: the first ``trained`` layers of ``ws``/``bs`` are trained in place."""
    params = []
    for l in range(trained):
        ws[l] = ws[l].clone().requires_grad_(True)
        bs[l] = bs[l].clone().requires_grad_(True)
        params += [ws[l], bs[l]]

    def loss_fn(xb, yb):
        h = xb
        for l in range(len(ws)):
            h = torch.addmm(bs[l], h, ws[l].t())
            if l < len(ws) - 1:
                h = h.clamp(min=0)
        return nn.functional.cross_entropy(h, yb)

    config = TrainConfig(epochs=0, steps=steps, batch_size=cfg.batch_size, lr=lr, schedule=cfg.schedule,
                         drop_last=True)
    report = fit(params, loss_fn, (x, y), config, generator=gen)
    for l in range(trained):
        ws[l] = ws[l].detach()
        bs[l] = bs[l].detach()
    return report.steps, report.last_loss
