"""What the RX's adaptation is asked to do and what it reports: :class:`AdaptConfig`, :class:`AdaptReport`.

Torch-free, so the mode's options (``mode.py``) read their defaults from here
without loading the trainers; the strategies are in :mod:`.alignment`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field


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
    first-layer, all layers); ``stage_plan``: the steps planned per stage, whose
    schedule (cosine) the run followed, so a cut run can be repeated exactly
    (``semalign sweep --steps-from``: the plan's first ``sum(stage_steps)`` steps). ``precision``: the frozen layers' arithmetic
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
    stage_plan: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


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
