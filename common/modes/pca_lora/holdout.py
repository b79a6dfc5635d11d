"""The hold-out check of an adapted model: which received vectors are kept aside, and whether the adapted
model beats the frozen one on them (lower cross-entropy decides)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.codecs.base import Codec
from common.modes.pca_lora.adapt_config import AdaptConfig
from common.modes.pca_lora.folded_mlp import folded_logits


def split_holdout(n: int, cfg: AdaptConfig, seed_offset: int = 0, parts: int = 1
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


def holdout_check(model: nn.Sequential, merged: nn.Sequential, z: np.ndarray, y: np.ndarray, hold: torch.Tensor,
                  codec: Codec, m: torch.Tensor | None, c: torch.Tensor | None) -> tuple[str, float, float]:
    """("adapted" or "frozen", frozen accuracy, adapted accuracy) on the held-out vectors ``hold`` (indices
    into ``z`` float32 (n, alpha) and ``y`` (n,)): the model with the lower cross-entropy there is kept. With
    the decoder ``m``, ``c`` the logits run folded (alpha instead of d_raw per vector in the first layer)."""
    y_hold = torch.as_tensor(y[hold.numpy()].astype(np.int64))
    if m is not None:  # folded: alpha instead of d_raw per vector in the first layer
        zh = torch.as_tensor(z[hold.numpy()])
        frozen_logits = folded_logits(model, zh, m, c)
        adapted_logits = folded_logits(merged, zh, m, c)
    else:
        x_hold = torch.as_tensor(codec.decode(z[hold.numpy()]))
        with torch.no_grad():
            frozen_logits, adapted_logits = model(x_hold), merged(x_hold)
    acc_frozen = float((frozen_logits.argmax(1) == y_hold).float().mean())
    acc_adapted = float((adapted_logits.argmax(1) == y_hold).float().mean())
    # cross-entropy decides: far less noisy than accuracy on a few hundred vectors
    worse = nn.functional.cross_entropy(adapted_logits, y_hold) > nn.functional.cross_entropy(frozen_logits, y_hold)
    return ("frozen" if worse else "adapted"), acc_frozen, acc_adapted
