"""PCA codec (pca-lora mode): ``z = P_alpha^T (x - mean)``, ``x_hat = P_alpha z + mean``."""

from __future__ import annotations

import hashlib

import numpy as np

from common.codecs.base import Codec


class PcaCodec(Codec):
    """Mean-centred PCA: ``z = P_a^T (x - mean)``, ``x_hat = P_a z + mean`` (eqs. 1, 3).

    ``components``: float32 ``(d_max, d_raw)``, rows are orthonormal principal
    axes by decreasing variance; ``mean``: float32 ``(d_raw,)``.
    """

    name = "pca"

    def __init__(self, mean: np.ndarray, components: np.ndarray):
        mean = np.ascontiguousarray(mean, dtype="<f4")
        components = np.ascontiguousarray(components, dtype="<f4")
        if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]:
            raise ValueError(
                f"PCA basis shapes do not match: mean {mean.shape}, components {components.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(components).all()):
            raise ValueError("PCA basis contains NaN or Inf")
        self.mean = mean
        self.components = components
        self._fingerprint = hashlib.sha256(mean.tobytes() + components.tobytes()).hexdigest()
        self._mean_proj = components @ mean  # (d_max,): P^T mean, so encode needs no centred copy of x

    @classmethod
    def fit(cls, x: np.ndarray, n_components: int) -> "PcaCodec":
        """Fit on ``x`` (n, d_raw); keeps ``n_components`` axes with a deterministic sign."""
        if not 1 <= n_components <= x.shape[1]:
            raise ValueError(f"n_components={n_components} must be in [1, {x.shape[1]}]")
        x64 = np.asarray(x, dtype=np.float64)
        mean = x64.mean(axis=0)
        xc = x64 - mean
        cov = xc.T @ xc / max(len(x64) - 1, 1)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1][:n_components]
        axes = eigvec[:, order].T
        signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
        return cls(mean, axes * signs[:, None])

    @property
    def d_raw(self) -> int:
        return int(self.mean.shape[0])

    @property
    def d_max(self) -> int:
        return int(self.components.shape[0])

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _check_alpha(self, alpha: int) -> None:
        if not 1 <= alpha <= self.d_max:
            raise ValueError(f"alpha={alpha} must be in [1, {self.d_max}]")

    def encode(self, x: np.ndarray, alpha: int) -> np.ndarray:
        self._check_alpha(alpha)
        return np.asarray(x, np.float32) @ self.components[:alpha].T - self._mean_proj[:alpha]

    def decode(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, np.float32)
        self._check_alpha(z.shape[1])
        return z @ self.components[: z.shape[1]] + self.mean

    def linear_decoder(self, alpha: int) -> tuple[np.ndarray, np.ndarray]:
        self._check_alpha(alpha)
        return self.components[:alpha], self.mean

    def reconstruct(self, x: np.ndarray, alpha: int) -> np.ndarray:
        """``decode(encode(x, alpha))``: what the RX sees of ``x`` at dimension ``alpha``."""
        return self.decode(self.encode(x, alpha))
