"""The training of one adaptation, per recipe: LoRA adapters (:func:`train_lora`) or the dense first
layer, then every layer (:func:`train_dense`, the ``first-layer`` and ``staged`` recipes).

:meth:`~common.modes.pca_lora.alignment.LoraAlignment.adapt_state` plans the steps, draws the hold-out
and merges; these run the steps it planned on the fit vectors, through the hand-written trainers of
:mod:`common.learn.fastlora` when the decoder is folded into the first layer (``m`` given), else through
their autograd references (:mod:`common.learn.reference`, on ``x_hat = codec.decode(z)``).

Shapes: ``z`` float32 (n, alpha), labels int64 (n,); weights ``W_l`` (out, in); the folded decoder
``m`` (alpha, d_raw), ``c`` (d_raw,).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from common.codecs.base import Codec
from common.learn import fastlora
from common.learn.lora import LoraConfig, LoraState, init_adapters
from common.learn.reference import train_dense_reference, train_reference
from common.modes.pca_lora.adapt_config import AdaptConfig
from common.modes.pca_lora.folded_mlp import compatible, dense_start, dense_state
from common.modes.pca_lora.parts_plan import Stretch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the frozen layers' arithmetic


@dataclass
class RecipeRun:
    """What every recipe's training gets from the round: the config, the frozen model's layers, the
    received vectors (``z`` as received, ``zt``/``yt`` as tensors) and the rows to fit on (``fit_idx``,
    int64), the folded decoder (``m``, ``c``; None without folding), the seeded generator, ``left()`` (the
    seconds of the wall-clock cap left, None without one), the clock and the round's stretch (None: the
    whole plan)."""

    cfg: AdaptConfig
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    codec: Codec
    z: np.ndarray
    zt: torch.Tensor
    yt: torch.Tensor
    fit_idx: torch.Tensor
    m: torch.Tensor | None
    c: torch.Tensor | None
    gen: torch.Generator
    left: Callable[[], float | None]
    clock: Callable[[], float]
    stretch: Stretch | None


def train_lora(run: RecipeRun, lora: LoraConfig, init: LoraState | None, requested: int
               ) -> tuple[LoraState, list[int], float, int, bool]:
    """``requested`` LoRA steps on the adapters of the layers after ``cfg.frozen_layers``, from a copy of
    ``init`` when it fits these layers (a warm start), else from fresh adapters. Returns (the adapter,
    steps done as a one-stage list, the last loss, the adapter's parameter count, warm)."""
    cfg, weights, fit_idx = run.cfg, run.weights, run.fit_idx
    warm = False
    layers = tuple(range(min(cfg.frozen_layers, len(weights) - 1), len(weights)))
    if init is not None and compatible(init, weights, layers):
        state = LoraState(init.layers, [a.clone() for a in init.A], [b.clone() for b in init.B],
                          None if init.d is None else [d.clone() for d in init.d], init.scaling)
        if cfg.bias and state.d is None:
            state.d = [torch.zeros(weights[l].shape[0]) for l in layers]
        warm = True
    else:
        state = init_adapters(weights, layers, lora, cfg.bias, run.gen)
    if len(fit_idx) == 0 or requested == 0:
        done, loss = [0], float("nan")
    elif run.m is not None:
        n_done, loss = fastlora.train(weights, run.biases, run.zt[fit_idx], run.yt[fit_idx], run.m, run.c, state,
                                      steps=requested, lr=cfg.lr, batch=cfg.batch_size,
                                      schedule=cfg.schedule, gen=run.gen, cap_s=run.left(),
                                      resume=run.stretch.resume(0) if run.stretch else None, clock=run.clock)
        done = [n_done]
    else:
        x = torch.as_tensor(run.codec.decode(run.z))
        n_done, loss = train_reference(weights, run.biases, x[fit_idx], run.yt[fit_idx], state, steps=requested,
                                       lr=cfg.lr, batch=cfg.batch_size, schedule=cfg.schedule, gen=run.gen)
        done = [n_done]
    n_params = sum(t.numel() for t in (*state.A, *state.B, *(state.d or [])))
    return state, done, loss, n_params, warm


def train_dense(run: RecipeRun, init: LoraState | None, spans: list[tuple[int, int]], deep: bool,
                precision: str) -> tuple[LoraState, list[int], float, int, bool]:
    """The dense recipes: per stage of ``spans`` ((offset, steps) of each stage), full training of the first
    layer (folded with the decoder when ``m`` is given; the frozen later layers in ``precision``), then of
    every layer; a stage cut short (the cap) ends the run. Starts from ``init``'s deltas when given. Returns
    (the trained layers as an exact :class:`LoraState`, steps done per stage, the last loss, the trained
    parameter count, warm)."""
    cfg, weights, biases, fit_idx = run.cfg, run.weights, run.biases, run.fit_idx
    ws, bs, a0 = dense_start(weights, biases, run.m, run.c, run.codec.d_raw, init)
    warm = init is not None
    lr1 = cfg.deep_lr if deep else cfg.lr
    done, loss = [], float("nan")
    x = run.zt if run.m is not None else torch.as_tensor(run.codec.decode(run.z))
    for stage, (_, n_steps) in enumerate(spans):
        if len(fit_idx) == 0 or n_steps == 0:
            done.append(0)
            continue
        trained = 1 if stage == 0 else len(ws)
        lr = lr1 if stage == 0 else cfg.stage2_lr
        dtype = DTYPES[precision] if trained < len(ws) else torch.float32
        if run.m is not None:
            n_done, loss, _ = fastlora.train_dense(ws, bs, x[fit_idx], run.yt[fit_idx], trained=trained,
                                                   steps=n_steps, lr=lr, batch=cfg.batch_size,
                                                   schedule=cfg.schedule, gen=run.gen, cap_s=run.left(),
                                                   frozen_dtype=dtype, clock=run.clock,
                                                   resume=run.stretch.resume(stage) if run.stretch else None)
        else:
            n_done, loss = train_dense_reference(ws, bs, x[fit_idx], run.yt[fit_idx], trained=trained,
                                                 steps=n_steps, lr=lr, batch=cfg.batch_size,
                                                 schedule=cfg.schedule, gen=run.gen)
        done.append(n_done)
        if n_done < n_steps:
            break
    trained_layers = len(ws) if (len(done) > 1 and done[1] > 0) or (init is not None and
                                                                    max(init.layers) > 0) else 1
    state = dense_state(ws, bs, weights, biases, run.m, run.c, a0, trained_layers)
    n_params = sum(ws[l].numel() + bs[l].numel() for l in range(trained_layers))
    return state, done, loss, n_params, warm


def train_synthetic(cfg: AdaptConfig, lora: LoraConfig, weights, biases, z, y, codec: Codec, stage: int, k: int,
                    precision: str) -> None:
    """``k`` training steps of stage ``stage`` of ``cfg.recipe`` on synthetic folded inputs ``z`` (n, alpha),
    labels ``y`` (n,), with a random decoder (for timing only: calibration and the precision choice)."""
    g = torch.Generator().manual_seed(1)
    m = torch.randn(z.shape[1], codec.d_raw, generator=g) / codec.d_raw ** 0.5
    c = torch.zeros(codec.d_raw)
    if cfg.recipe == "lora":
        layers = tuple(range(min(cfg.frozen_layers, len(weights) - 1), len(weights)))
        state = init_adapters(weights, layers, lora, cfg.bias, torch.Generator().manual_seed(0))
        fastlora.train(weights, biases, z, y, m, c, state, steps=k, lr=1e-3,
                       batch=cfg.batch_size, gen=torch.Generator().manual_seed(0))
        return
    ws = [weights[0] @ m.t(), *[w.clone() for w in weights[1:]]]
    bs = [weights[0] @ c + biases[0], *[b.clone() for b in biases[1:]]]
    fastlora.train_dense(ws, bs, z, y, trained=1 if stage == 0 else len(ws), steps=k, lr=1e-3,
                         batch=cfg.batch_size, gen=torch.Generator().manual_seed(0),
                         frozen_dtype=DTYPES[precision] if stage == 0 else torch.float32)
