"""Pre-training: fit the PCA basis and train the RX classifier on ``d_pre``-dim reconstructions."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from common.modes.pca_lora.codec import PcaCodec
from common.data.datasets import Dataset
from common.learn.models import accuracy, build_mlp, predict
from common.learn.train import TrainConfig, fit

Advance = Callable[[int, str], None]  # progress callback: (steps done, status text)


@dataclass(frozen=True)
class PretrainConfig:
    """``d_pre`` PCA components kept and used for training; MLP and Adam settings."""

    d_pre: int = 200
    hidden: tuple[int, ...] = (256, 128)
    epochs: int = 8
    batch_size: int = 512
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        if self.d_pre < 1:
            raise ValueError(f"d_pre must be >= 1, got {self.d_pre}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr} "
                             "must be positive")


@dataclass(frozen=True)
class PretrainResult:
    codec: PcaCodec
    model: nn.Sequential
    test_accuracy: float
    train_seconds: float


def train_classifier(x: np.ndarray, y: np.ndarray, n_classes: int, hidden: tuple[int, ...],
                     epochs: int, batch_size: int, lr: float, seed: int,
                     advance: Advance | None = None) -> nn.Sequential:
    """Train a fresh MLP on ``x`` float32 (n, d) / ``y`` uint8 (n,): Adam, one-cycle lr peaking at ``lr``."""
    torch.manual_seed(seed)
    model = build_mlp(x.shape[1], hidden, n_classes)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long)
    model.train()
    fit(list(model.parameters()), lambda xb, yb: nn.functional.cross_entropy(model(xb), yb), (xt, yt),
        TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, schedule="onecycle", seed=seed),
        on_epoch=(lambda _epoch, loss: advance(1, f"loss {loss:.4f}")) if advance else None)
    model.eval()
    return model


def pretrain(data: Dataset, config: PretrainConfig, advance: Advance | None = None) -> PretrainResult:
    """Fit PCA with ``d_pre`` components on the training set, train the MLP on reconstructions."""
    if config.d_pre > data.d_raw:
        raise ValueError(f"d_pre={config.d_pre} exceeds the data dimension {data.d_raw}")
    t0 = time.perf_counter()
    codec = PcaCodec.fit(data.x_train, config.d_pre)
    x_hat = codec.reconstruct(data.x_train, config.d_pre)
    model = train_classifier(x_hat, data.y_train, data.n_classes, config.hidden, config.epochs,
                             config.batch_size, config.lr, config.seed, advance)
    seconds = time.perf_counter() - t0
    acc = accuracy(predict(model, codec.reconstruct(data.x_test, config.d_pre)), data.y_test)
    for p in model.parameters():
        p.requires_grad_(False)
    return PretrainResult(codec, model, acc, seconds)
