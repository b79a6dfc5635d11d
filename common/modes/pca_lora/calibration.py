"""The adaptation's step counts from this machine's measured costs (one :class:`Calibration` per
recipe and settings, cached per process), and the frozen layers' precision.

:meth:`~common.modes.pca_lora.alignment.LoraAlignment.calibrate` measures;
:meth:`Calibration.plan` turns a budget in ms into steps per stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
import time

import torch
from torch import nn

from common.codecs.base import Codec
from common.learn import fastlora
from common.learn.lora import LoraConfig
from common.modes.pca_lora.adapt_config import AdaptConfig, requested_precision
from common.modes.pca_lora.folded_mlp import mlp_weights


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
            return split_stages(cfg, cfg.max_steps, self.recipe)
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


def split_stages(cfg: AdaptConfig, total: int, recipe: str) -> list[int]:
    """A fixed step count split into stages: staged runs ``stage1_steps`` first-layer steps first,
    the rest on all layers when at least ``stage2_min_steps`` are left."""
    if recipe != "staged" or total - cfg.stage1_steps < cfg.stage2_min_steps:
        return [total]
    return [cfg.stage1_steps, total - cfg.stage1_steps]


CALIBRATIONS: dict[tuple, Calibration] = {}


def calibration_key(cfg: AdaptConfig, lora: LoraConfig, model: nn.Sequential, codec: Codec) -> tuple:
    weights, _ = mlp_weights(model)
    return (cfg.recipe, tuple(tuple(w.shape) for w in weights), codec.d_max, cfg.batch_size,
            torch.get_num_threads(), requested_precision(cfg), lora.rank, cfg.frozen_layers, cfg.budget_ms,
            cfg.deep_budget_ms)


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
PRECISION_CHOICES: dict[tuple, dict] = {}  # LoraAlignment.precision_choice's measurements, per process


def timed(fn) -> float:
    """Seconds ``fn`` took: CPU time of this thread when torch runs on it alone (time taken by other
    processes on the machine does not count, so the calibration does not follow the load), else wall time."""
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    t0 = clock()
    fn()
    return clock() - t0
