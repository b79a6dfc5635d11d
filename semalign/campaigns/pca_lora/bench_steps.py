"""``semalign bench``'s training-step figures: each adaptation recipe's step (ms) against its FLOP floor, in
fp32 and bf16 (:func:`step_times`), and the default recipe's accuracy with its frozen layers in fp32 and in
bf16 on the same payloads and step counts (:func:`precision_accuracy`)."""

from __future__ import annotations

import numpy as np
import torch

from common.learn import fastlora
from common.learn.models import predict
from common.modes.pca_lora.adapt_config import DEFAULT_RECIPE, RECIPES, AdaptConfig
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.budget import PayloadLayout
from semalign.campaigns.pca_lora.bench_floors import best_cpu_s, gemm_floor_ms, recipe_step_flops, recipe_step_gemms
from semalign.campaigns.pca_lora.runner import reference_rate_bps


def step_times(model, codec, alpha: int, dims: list[int], repeats: int, k: int = 60, batch: int = 256) -> dict:
    """ms per training step of each recipe's trainer at ``alpha`` (``batch`` vectors; least CPU time of
    this thread over ``repeats`` runs of ``k`` steps) in fp32 and, where the recipe has frozen layers, bf16 (forced, emulated where
    the CPU has no bf16 arithmetic), each against its FLOP floor (:func:`gemm_floor_ms`)."""
    from common.modes.pca_lora.folded_mlp import mlp_weights

    weights, biases = mlp_weights(model)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(16 * batch, alpha, generator=gen)
    y = torch.randint(0, dims[-1], (16 * batch,), generator=gen)
    native = fastlora.native_bf16()
    out = {}
    for recipe in RECIPES:
        strategy = LoraAlignment(adapt=AdaptConfig(recipe=recipe, batch_size=batch))
        for stage in range(2 if recipe == "staged" else 1):
            if recipe == "staged" and stage == 0:
                continue  # stage 1 of staged is the first-layer step
            label = recipe if stage == 0 else "staged stage 2 (all layers)"
            frozen = recipe == "first-layer"  # the only step with frozen layers (lora: fp32 only)
            # the default recipe's step: its own, or (staged) the first-layer step its first stage runs
            default = recipe == DEFAULT_RECIPE or (recipe == "first-layer" and DEFAULT_RECIPE == "staged")
            row = {"alpha": alpha, "batch": batch, "default": default,
                   "flops": recipe_step_flops(recipe, alpha, dims, 8, batch, stage)}
            for precision in ("fp32", "bf16"):
                if precision == "bf16" and not frozen:
                    row[precision] = None
                    continue
                run = lambda: strategy._train_synthetic(weights, biases, z, y, codec, stage, k,  # noqa: E731
                                                        precision)
                run()
                ms = best_cpu_s(run, repeats) * 1e3 / k
                gemms = recipe_step_gemms(recipe, alpha, dims, 8, batch, stage, precision)
                floor = gemm_floor_ms(gemms, repeats)
                row[precision] = {"ms_per_step": ms, "floor_ms_per_step": floor, "ratio": ms / floor,
                                  "gemm_gflops_at_step_shapes": row["flops"] / floor / 1e6, "gemms": len(gemms)}
            row["bf16_native"] = native
            out[label] = row
    return out


def precision_accuracy(codec, model, data, alphas: tuple[int, ...] = (10, 20, 40), seeds: int = 3,
                       n_test: int = 500, recipe: str = DEFAULT_RECIPE) -> dict:
    """Accuracy of ``recipe`` with its frozen layers in fp32 and in bf16 on the same payloads and step
    counts: per alpha and seed the reference-budget payload (:func:`build_round`), the plan the fp32
    calibration gives on this machine (recorded: ``stage_steps``), run uncapped in each precision;
    accuracy on the whole (quantized) test set. ``loss_pp``: mean fp32 - bf16 accuracy, percentage points."""
    from common.learn.models import accuracy
    from common.modes.pca_lora.calibration import CALIBRATIONS, calibration_key
    from semalign.campaigns.pca_lora.runner import build_round, quantized_test

    layout = PayloadLayout.for_dtype("float16")
    rate = reference_rate_bps()
    b_max = int(rate * 0.05 / 8)
    planner = LoraAlignment(adapt=AdaptConfig(recipe=recipe, precision="fp32"))
    planner.calibrate(model, codec)
    cal = CALIBRATIONS[calibration_key(planner.config, planner.lora, model, codec)]
    runner = LoraAlignment(adapt=AdaptConfig(recipe=recipe, budget_ms=None, deep_budget_ms=None))
    out = {}
    for alpha in (a for a in alphas if a <= codec.d_max):
        x_eval = quantized_test(codec, data, alpha, "float16")
        rows = []
        for seed in range(seeds):
            rd = build_round(codec, data, alpha, seed, layout, n_test=n_test, b_max_bytes=b_max, rate_bps=rate)
            deep = alpha < planner.config.deep_fraction * codec.d_max
            plan = cal.plan(planner.config, alpha, planner.config.deep_budget_ms if deep else
                            planner.config.budget_ms)
            row = {"seed": seed, "n_train": rd.n_train}
            for precision in ("fp32", "bf16"):
                adapted, rep, _ = runner.adapt_state(model, rd.z_train, rd.y_train, codec, plan_steps=plan,
                                                     _precision=precision)
                row[precision] = accuracy(predict(adapted, x_eval), data.y_test)
                row["stage_steps"], row["kept_" + precision] = list(rep.stage_steps), rep.kept
            rows.append(row)
        mean = {p: float(np.mean([r[p] for r in rows])) for p in ("fp32", "bf16")}
        out[str(alpha)] = {"rows": rows, "fp32": mean["fp32"], "bf16": mean["bf16"],
                           "loss_pp": (mean["fp32"] - mean["bf16"]) * 100}
    return out
