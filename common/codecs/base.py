"""What a codec is: the TX's encoder and the RX's decoder of one mode's representation.

A codec maps raw vectors ``x`` (float32, ``(n, d_raw)``) to ``alpha``-dim
features ``z`` and back. ``pca`` (:mod:`common.modes.pca_lora.codec`) serves the
pca-lora mode; the slf mode's VQ-VAE transceiver is its own codec. The
artifacts' ``meta.json`` names the codec kind and loading dispatches on it
(:func:`common.modes.pca_lora.artifacts.load_codec`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Codec(ABC):
    """Encoder/decoder pair shared by TX and RX (identified by ``fingerprint``)."""

    name: str

    @property
    @abstractmethod
    def d_raw(self) -> int:
        """Dimension of raw vectors."""

    @property
    @abstractmethod
    def d_max(self) -> int:
        """Largest ``alpha`` this codec can encode."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """sha256 hex digest identifying the codec's parameters."""

    @abstractmethod
    def encode(self, x: np.ndarray, alpha: int) -> np.ndarray:
        """``x`` (n, d_raw) float32 -> ``z`` (n, alpha) float32."""

    @abstractmethod
    def decode(self, z: np.ndarray) -> np.ndarray:
        """``z`` (n, alpha) -> ``x_hat`` (n, d_raw) float32; alpha is ``z.shape[1]``."""

    def linear_decoder(self, alpha: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(M, c)`` with ``decode(z) == z @ M + c`` (M: (alpha, d_raw)), or None if not linear."""
        return None
