"""Alignment through an adapter bank (:class:`BankedAlignment`): a strategy around
:class:`~common.modes.pca_lora.alignment.LoraAlignment` that reuses, warm-starts from and stores into one
owner's adapters (:class:`~common.modes.pca_lora.adapter_bank.OwnerBank`; the bank itself, its LRU and
its files, is :mod:`common.modes.pca_lora.adapter_bank`).

Shapes: received features ``z`` float32 (n, alpha), labels ``y`` uint8 (n,).
"""

from __future__ import annotations

import time

import numpy as np
from torch import nn

from common.codecs.base import Codec
from common.learn.lora import merge_into
from common.modes.pca_lora.adapt_config import AdaptReport
from common.modes.pca_lora.adapter_bank import OwnerBank
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.strategy import AlignmentStrategy


class BankedAlignment(AlignmentStrategy):
    """Alignment (any recipe) that reuses, warm-starts from, and stores into one owner's adapters
    (:class:`OwnerBank`; the RX makes one per round, for the round's session owner).

    Exact alpha in the bank (a returning alpha): with ``warm_steps = 0`` (the
    default) its adapter is used as it is, without training, when the hold-out
    check accepts it against the frozen model on this payload (or when the
    payload is too small for a hold-out); rejected, a new adapter is trained
    from scratch. With ``warm_steps > 0``, training continues from it for that
    many steps. Otherwise the nearest stored alpha's adapter is the starting
    point (the first layer's delta lives in ``d_raw`` space, so it carries
    across alphas), with the full step count. A payload without training
    vectors gets the stored adapter for its alpha, if any (:meth:`without_training`).
    The report says which. Every adapter kept is stored back.
    """

    def __init__(self, inner: LoraAlignment, bank: OwnerBank):
        self.inner = inner
        self.bank = bank

    @property
    def name(self) -> str:
        return self.inner.name

    def calibrate(self, model: nn.Sequential, codec: Codec) -> dict | None:
        return self.inner.calibrate(model, codec)

    def warm_up(self, model: nn.Sequential, codec: Codec) -> dict | None:
        """The inner strategy's warm-up: nothing it trains reaches the bank."""
        return self.inner.warm_up(model, codec)

    def aligned_alphas(self) -> list[int]:
        return sorted(self.bank.alphas())

    def without_training(self, model: nn.Sequential, alpha: int, codec: Codec) -> tuple[nn.Sequential, dict]:
        stored = self.bank.get(alpha)
        if stored is None:
            return super().without_training(model, alpha, codec)
        t0 = time.perf_counter()
        merged = merge_into(model, stored)
        return merged, {"strategy": self.name, "steps": 0, "steps_requested": 0, "complete": True,
                        "steps_by": "none", "reused": True, "warm_start": True, "warm_from_alpha": alpha,
                        "kept": "adapted", "duration_ms": (time.perf_counter() - t0) * 1e3}

    def adapt(self, model: nn.Sequential, z: np.ndarray, y: np.ndarray, codec: Codec
              ) -> tuple[nn.Sequential, AdaptReport]:
        alpha = int(z.shape[1])
        exact = self.bank.get(alpha)
        init, init_alpha, steps = None, None, None
        if exact is not None and self.inner.config.warm_steps == 0:
            t0 = time.perf_counter()
            candidate = merge_into(model, exact)
            kept, acc_frozen, acc_stored, n_hold = self.inner.holdout_verdict(model, candidate, z, y, codec)
            if kept == "adapted":  # nothing to align: the stored adapter is as good as it gets here
                n_params = sum(t.numel() for t in (*exact.B, *(exact.d or [])))
                return candidate, AdaptReport(self.name, 0, 0, True, float("nan"), n_params,
                                              (time.perf_counter() - t0) * 1e3, True, alpha, "adapted",
                                              len(z) - n_hold, n_hold, acc_frozen, acc_stored, steps_by="none",
                                              reused=True)
        elif exact is not None:
            init, init_alpha, steps = exact, alpha, self.inner.config.warm_steps
        else:
            near = self.bank.nearest(alpha)
            init, init_alpha = (near[1], near[0]) if near else (None, None)
        merged, report, state = self.inner.adapt_state(model, z, y, codec, init=init,
                                                       init_alpha=init_alpha, steps=steps)
        if report.kept == "adapted" and state is not None:
            self.bank.put(alpha, state)
        return merged, report

    def adapt_part(self, model, z, y, codec, sizes, parts, carry=None):
        """Streaming: the first part starts from the bank's adapter for this alpha or the nearest one;
        the adapter of the last part is stored when kept."""
        alpha, init, init_alpha = int(z.shape[1]), None, None
        if carry is None:
            stored = self.bank.get(alpha)
            near = (alpha, stored) if stored is not None else self.bank.nearest(alpha)
            if near:
                init_alpha, init = near
        merged, report, carry = self.inner.adapt_part(model, z, y, codec, sizes, parts, carry, init, init_alpha)
        if merged is not None and report.kept == "adapted" and carry["state"] is not None:
            self.bank.put(alpha, carry["state"])
        return merged, report, carry
