"""What the pca-lora RX half asks of an alignment strategy (:class:`AlignmentStrategy`): adapt the frozen
classifier to one payload's labelled vectors, whole or in parts, calibrate and warm up before serving.

The strategies: :class:`~common.modes.pca_lora.alignment.LoraAlignment` (the recipes) and
:class:`~common.modes.pca_lora.banked_alignment.BankedAlignment` (an adapter bank around it).
Shapes: received features ``z`` float32 (n, alpha), labels ``y`` uint8 (n,).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from torch import nn

from common.codecs.base import Codec
from common.modes.pca_lora.adapt_config import AdaptReport


class AlignmentStrategy(ABC):
    """Adapts a frozen classifier to labelled vectors; never modifies the model passed in."""

    name: str

    @abstractmethod
    def adapt(self, model: nn.Sequential, z: np.ndarray, y: np.ndarray,
              codec: Codec) -> tuple[nn.Sequential, AdaptReport]:
        """Received features ``z`` float32 (n, alpha) with labels ``y`` uint8 (n,).

        ``codec`` decodes them (``x_hat = codec.decode(z)``, the model's input).
        Returns the adapted model (input ``x_hat``) and a report.
        """

    @abstractmethod
    def adapt_part(self, model: nn.Sequential, z: np.ndarray, y: np.ndarray, codec: Codec, sizes: list[int],
                   parts: int, carry=None) -> tuple[nn.Sequential, AdaptReport, object]:
        """Streaming adaptation: part ``len(sizes)`` of ``parts`` of a round's training vectors arrived.

        ``z`` (n, alpha) / ``y`` (n,) are all the parts so far, ``sizes`` their
        vector counts; ``carry`` is what the previous part returned (None for
        the first). Each part runs its stretch of the steps one payload would
        get, continuing the previous part's training (adapter, optimiser state,
        schedule); the hold-out is drawn within each part, so no held-out
        vector was ever trained on. Returns
        the adapted model (None before the last part: merge and hold-out check
        run once, at the end), the report and the carry for the next part.
        """

    def calibrate(self, model: nn.Sequential, codec: Codec) -> dict | None:
        """Measure what the strategy needs to know about this machine (start-up); a summary or None."""
        return None

    def warm_up(self, model: nn.Sequential, codec: Codec) -> dict | None:
        """Before serving: :meth:`calibrate`, and pay every one-time cost of the adaptation paths a
        round may take, so the first round gets the steps its plan says. Stores nothing (an adapter
        bank stays as it was). Returns the calibration summary or None."""
        return self.calibrate(model, codec)

    def without_training(self, model: nn.Sequential, alpha: int, codec: Codec) -> tuple[nn.Sequential, dict]:
        """The model for a payload at ``alpha`` that carries no training vectors, and its report dict."""
        return model, {"strategy": "none", "steps": 0, "complete": True, "steps_by": "none"}

    def aligned_alphas(self) -> list[int]:
        """Alphas (besides d_pre) this RX can serve without training vectors (an adapter bank's)."""
        return []
