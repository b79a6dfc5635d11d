"""The RX classifier: a plain MLP over reconstructed vectors."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def build_mlp(d_in: int, hidden: tuple[int, ...] = (256, 128), n_classes: int = 10) -> nn.Sequential:
    """``d_in -> hidden... -> n_classes`` with ReLU between Linear layers (logits out)."""
    if d_in < 1 or n_classes < 2 or any(h < 1 for h in hidden):
        raise ValueError(f"bad MLP shape: d_in={d_in}, hidden={hidden}, n_classes={n_classes}")
    layers: list[nn.Module] = []
    sizes = (d_in, *hidden)
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], n_classes))
    return nn.Sequential(*layers)


def mlp_shape(model: nn.Sequential) -> tuple[int, tuple[int, ...], int]:
    """``(d_in, hidden, n_classes)`` of a model made by :func:`build_mlp`."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    return linears[0].in_features, tuple(m.out_features for m in linears[:-1]), linears[-1].out_features


@torch.no_grad()
def fold_decoder(model: nn.Sequential, m: np.ndarray, c: np.ndarray) -> nn.Sequential:
    """``model`` with a linear decoder ``x = z @ m + c`` folded into its first Linear layer.

    ``m`` float32 (alpha, d_in), ``c`` (d_in,). The returned model takes ``z``
    float32 (n, alpha) where ``model`` took ``x`` (n, d_in): the same logits up
    to float32 rounding, without reconstructing ``x`` and at alpha / d_in of
    the first layer's cost. Its later layers are ``model``'s own modules.
    """
    first = model[0]
    w = first.weight @ torch.as_tensor(m, dtype=torch.float32).t()  # (out, alpha)
    b = first.weight @ torch.as_tensor(c, dtype=torch.float32) + first.bias
    folded = nn.Linear(w.shape[1], w.shape[0])
    folded.weight.copy_(w)
    folded.bias.copy_(b)
    return nn.Sequential(folded, *list(model)[1:])


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray | torch.Tensor, batch: int = 8192) -> np.ndarray:
    """Class ids (uint8, shape (n,)) for ``x`` float32 (n, d_in)."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    out = [model(xt[i:i + batch]).argmax(dim=1) for i in range(0, len(xt), batch)]
    return torch.cat(out).numpy().astype(np.uint8) if out else np.zeros(0, np.uint8)


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of ``pred == labels`` (both (n,)); NaN for n = 0."""
    return float(np.mean(pred == labels)) if len(labels) else float("nan")
