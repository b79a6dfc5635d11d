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
says when it cut a run. :class:`~common.modes.pca_lora.banked_alignment.BankedAlignment`
adds an adapter bank (warm starts, and returning alphas that need no training).
(The other modes align differently and bring their own halves; see
:mod:`common.modes.base`.)

What a strategy is asked is in :mod:`.strategy`; what a round is asked and reports in
:mod:`.adapt_config`; step counts from measured costs in :mod:`.calibration`; a round in parts in
:mod:`.parts_plan`; each recipe's training in :mod:`.recipes`; the folded classifier and the dense
deltas in :mod:`.folded_mlp`; the hold-out check in :mod:`.holdout`; the trainers in
:mod:`common.learn.fastlora` and their autograd references in :mod:`common.learn.reference`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from common.codecs.base import Codec
from common.learn.lora import LoraConfig, LoraState, merge_into
from common.modes.pca_lora.adapt_config import AdaptConfig, AdaptReport, requested_precision
from common.modes.pca_lora.calibration import (BF16_STEP_RATIO, CALIBRATIONS, PRECISION_CHOICES, Calibration,
                                               calibration_key, frozen_precision, split_stages, timed)
from common.modes.pca_lora.folded_mlp import mlp_weights
from common.modes.pca_lora.holdout import holdout_check, split_holdout
from common.modes.pca_lora.parts_plan import Stretch, cap_plan, summed_report
from common.modes.pca_lora.recipes import RecipeRun, train_dense, train_lora, train_synthetic
from common.modes.pca_lora.strategy import AlignmentStrategy

log = logging.getLogger("semalign.align")

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
        key = calibration_key(self.config, self.lora, model, codec)
        cal = CALIBRATIONS.get(key)
        if cal is None:
            cal = self._measure(model, codec, repeats)
            CALIBRATIONS[key] = cal
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
        n_classes = mlp_weights(model)[0][-1].shape[0]
        for alpha in sorted({max(1, math.ceil(cfg.deep_fraction * codec.d_max) - 1), codec.d_max}):
            z = torch.randn(n, alpha, generator=gen).numpy()
            y = torch.randint(0, n_classes, (n,), generator=gen).numpy().astype(np.uint8)
            stretch = Stretch([2] * stages, "fixed", None, start=0, end=2 * stages)
            self.adapt_state(model, z, y, codec, stretch=stretch)
        return info

    def _measure(self, model: nn.Sequential, codec: Codec, repeats: int) -> Calibration:
        cfg = self.config
        weights, biases = mlp_weights(model)
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
                best = min(timed(run) for _ in range(repeats))
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
        one = min(timed(lambda: self.adapt_state(model, z, y, codec, steps=1, _precision=precision))
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
        weights, biases = mlp_weights(model)
        fixed = frozen_precision(cfg, weights)
        if fixed is not None:
            by = ("forced" if requested_precision(cfg) != "auto" else
                  "fp32 only" if cfg.recipe == "lora" or len(weights) < 2 else "no bf16 arithmetic")
            return {"precision": fixed, "by": by, "step_ms": None}
        batch = cfg.batch_size or 256
        key = (cfg.recipe, tuple(tuple(w.shape) for w in weights), codec.d_max, batch, torch.get_num_threads())
        if key not in PRECISION_CHOICES:
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
                    ms[precision] += min(timed(run) for _ in range(repeats)) * 1e3 / k / len(alphas)
            pick = "bf16" if ms["bf16"] <= BF16_STEP_RATIO * ms["fp32"] else "fp32"
            PRECISION_CHOICES[key] = {"precision": pick, "by": "measured",
                                      "step_ms": {p: round(v, 4) for p, v in ms.items()}}
            log.info("frozen layers in %s: %s step %.3f ms in fp32, %.3f ms in bf16", pick, cfg.recipe,
                     ms["fp32"], ms["bf16"])
        return dict(PRECISION_CHOICES[key])

    def _train_synthetic(self, weights, biases, z, y, codec, stage: int, k: int, precision: str) -> None:
        """``k`` timed steps of stage ``stage`` (:func:`~common.modes.pca_lora.recipes.train_synthetic`)."""
        train_synthetic(self.config, self.lora, weights, biases, z, y, codec, stage, k, precision)

    def _plan(self, alpha: int, codec: Codec, model: nn.Sequential, deep: bool, budget_ms: float | None,
              steps: int | None) -> tuple[list[int], str, Calibration | None]:
        """Steps per stage, how they were chosen, and the calibration they came from."""
        cfg = self.config
        fixed = steps if steps is not None else (cfg.deep_steps if deep else cfg.steps)
        if fixed:  # 0: calibrated
            return split_stages(cfg, fixed, cfg.recipe), "fixed", None
        key = calibration_key(cfg, self.lora, model, codec)
        if key not in CALIBRATIONS:
            self.calibrate(model, codec)
        cal = CALIBRATIONS[key]
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
            holds.append(split_holdout(n_k, cfg, seed_offset=k, parts=parts)[1] + offset)
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
                plan = cap_plan(plan, max(1, math.ceil(cfg.max_epochs * n_est / (cfg.batch_size or n_est))))
            carry = {"stretch": Stretch(plan, steps_by, cal), "state": init, "init_alpha": init_alpha,
                     "reports": []}
        stretch, total = carry["stretch"], sum(carry["stretch"].plan)
        stretch.start, stretch.end = round(total * (part - 1) / parts), round(total * part / parts)
        merged, report, carry["state"] = self.adapt_state(
            model, z, y, codec, init=carry["state"], init_alpha=carry["init_alpha"],
            split=(torch.nonzero(fit).flatten(), hold), finish=part == parts, stretch=stretch)
        carry["reports"].append(report)
        return merged, summed_report(carry["reports"], total), carry

    def adapt_state(self, model: nn.Sequential, z: np.ndarray, y: np.ndarray, codec: Codec,
                    init: LoraState | None = None, init_alpha: int | None = None,
                    steps: int | None = None, _precision: str | None = None,
                    split: tuple[torch.Tensor, torch.Tensor] | None = None, finish: bool = True,
                    stretch: "Stretch | None" = None, plan_steps: list[int] | None = None
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
        weights, biases = mlp_weights(model)
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
        fit_idx, hold = split if split is not None else split_holdout(len(z), cfg)
        if not len(fit_idx):
            plan = [0]
        elif cfg.max_epochs and stretch is None and plan_steps is None:
            per_epoch = len(fit_idx) / (cfg.batch_size or len(fit_idx))
            plan = cap_plan(plan, max(1, math.ceil(cfg.max_epochs * per_epoch)))
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
        run = RecipeRun(cfg, weights, biases, codec, z, zt, yt, fit_idx, m, c, gen, left, clock, stretch)
        if recipe == "lora":
            state, done, loss, n_params, warm = train_lora(run, self.lora, init, requested)
        else:
            state, done, loss, n_params, warm = train_dense(run, init, spans, deep, precision)
        total_done = sum(done)
        merged = merge_into(model, state) if finish else None
        kept, acc_frozen, acc_adapted = "adapted", None, None
        if len(hold) and finish:
            kept, acc_frozen, acc_adapted = holdout_check(model, merged, z, y, hold, codec, m, c)
            if kept == "frozen":
                merged = model
        report = AdaptReport(recipe, total_done, requested, total_done == requested, loss, n_params,
                             (clock() - t0) * 1e3, warm, init_alpha if warm else None, kept,
                             len(fit_idx), len(hold), acc_frozen, acc_adapted, steps_by,
                             total_done < requested and cap_s is not None, done,
                             precision, None if cal is None else round(cal.ms_per_step(0, alpha), 4),
                             precision_by=choice["by"], precision_step_ms=choice["step_ms"],
                             stage_plan=[int(k) for k in plan])
        return merged, report, state

    def holdout_verdict(self, model: nn.Sequential, candidate: nn.Sequential, z: np.ndarray, y: np.ndarray,
                        codec: Codec) -> tuple[str, float | None, float | None, int]:
        """The hold-out check of ``candidate`` against ``model`` on this payload's held-out vectors:
        (kept, frozen accuracy, candidate accuracy, held-out count); "adapted" when nothing is held out."""
        z = np.asarray(z, np.float32)
        hold = split_holdout(len(z), self.config)[1]
        if not len(hold):
            return "adapted", None, None, 0
        linear = codec.linear_decoder(z.shape[1]) if self.fold else None
        m, c = (None, None) if linear is None else (torch.as_tensor(a) for a in linear)
        return (*holdout_check(model, candidate, z, np.asarray(y), hold, codec, m, c), len(hold))

