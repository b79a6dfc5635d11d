"""The RX classifier's algebra: its weights, its logits with the PCA decoder folded into the first
layer, and the dense recipes' trained layers as exact :class:`~common.learn.lora.LoraState` deltas.

Shapes: weights ``W_l`` float32 (out, in), biases ``b_l`` (out,); the decoder
``x_hat = z m + c`` with ``m`` (alpha, d_raw), ``c`` (d_raw,), ``z`` (n, alpha).
"""

from __future__ import annotations

import torch
from torch import nn

from common.learn.lora import LoraState
from common.learn.models import fold_decoder


def dense_start(weights, biases, m, c, d_raw: int, init: LoraState | None):
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
def dense_state(ws, bs, weights, biases, m, c, a0, trained_layers: int) -> LoraState:
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
def folded_logits(model: nn.Sequential, z: torch.Tensor, m: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` on ``x_hat = z m + c`` with the decoder folded into its first layer."""
    return fold_decoder(model, m, c)(z)


def mlp_weights(model: nn.Sequential) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Weights and biases of a Linear/ReLU Sequential (as :func:`common.learn.models.build_mlp` makes)."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    if not all(isinstance(m, (nn.Linear, nn.ReLU)) for m in model) or not linears:
        raise TypeError("LoraAlignment adapts Linear/ReLU MLPs only (common.learn.models.build_mlp)")
    return [m.weight.detach() for m in linears], [m.bias.detach() for m in linears]


def compatible(state: LoraState, weights: list[torch.Tensor], layers: tuple[int, ...]) -> bool:
    return tuple(state.layers) == layers and all(
        a.shape[1] == weights[l].shape[1] and b.shape[0] == weights[l].shape[0]
        for l, a, b in zip(layers, state.A, state.B))
