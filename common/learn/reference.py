"""Autograd references of the hand-written trainers in :mod:`common.learn.fastlora`.

The same model, batches, schedule and Adam through :func:`common.learn.train.fit`;
the tests check the fast trainers against them, and the RX falls back on them
when the codec has no linear decoder to fold. Shapes as in :mod:`common.learn.fastlora`
(``x`` float32 (n, d_in), ``y`` int64 (n,)).
"""

from __future__ import annotations

import torch
from torch import nn

from common.learn.lora import LoraState
from common.learn.train import TrainConfig, fit


def train_reference(weights, biases, x, y, state: LoraState, *, steps: int, lr: float, batch: int, schedule: str,
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

    config = TrainConfig(epochs=0, steps=steps, batch_size=batch, lr=lr, schedule=schedule,
                         drop_last=True)
    report = fit(params, loss_fn, (x, y), config, generator=gen)
    for p in params:
        p.requires_grad_(False)
    return report.steps, report.last_loss


def train_dense_reference(ws, bs, x, y, *, trained: int, steps: int, lr: float, batch: int, schedule: str,
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

    config = TrainConfig(epochs=0, steps=steps, batch_size=batch, lr=lr, schedule=schedule,
                         drop_last=True)
    report = fit(params, loss_fn, (x, y), config, generator=gen)
    for l in range(trained):
        ws[l] = ws[l].detach()
        bs[l] = bs[l].detach()
    return report.steps, report.last_loss
