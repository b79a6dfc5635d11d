"""Training of SLF transceivers: pre-training, task head, SLF fine-tuning, and link evaluation.

Every optimiser run goes through :func:`common.learn.train.fit`. The loss is
eq. (4) of the paper, computed on the codeword *received* through the K-ary
DMC: ``MSE(x, x_hat) + MSE(z_q', sg[z_e]) + beta * MSE(sg[z_q'], z_e)``
(per-element means; pixels in [0, 1]), where ``z_e`` is the encoder output,
``z_q'`` the codeword of the received index, and the decoder sees
``z_e + sg[z_q' - z_e]`` (straight-through: the reconstruction gradient
reaches the encoder as if the quantiser and channel were the identity).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from torch.nn import functional as F

from common.learn.train import FitReport, TrainConfig, fit
from common.modes.slf.configs import MIXED_RECONSTRUCTION_SHARE, PAPER_BATCH_SIZE, TransceiverConfig
from common.modes.slf.dmc import dmc_numpy, dmc_torch
from common.modes.slf.shape import TransceiverShape
from common.modes.slf.transceiver import (
    DECODER_LAYERS,
    TaskHead,
    Transceiver,
    as_images,
    frozen_layers,
)

BETA_COMMITMENT = 0.25  # lambda_c of eq. (4), VQ-VAE's usual value
LR_RETRAIN = 1e-3  # l = 0: decoder re-initialised and trained from scratch
LR_FINETUNE = 1e-4  # l >= 1
EVAL_BATCH = 1024  # images per forward pass in evaluation


@dataclass(frozen=True)
class VqLoss:
    """The three terms of eq. (4), scalar tensors (per-element means)."""

    reconstruction: torch.Tensor
    codebook: torch.Tensor
    commitment: torch.Tensor  # already multiplied by beta

    @property
    def total(self) -> torch.Tensor:
        return self.reconstruction + self.codebook + self.commitment


def vq_loss(model: Transceiver, x: torch.Tensor, eps: float, generator: torch.Generator | None = None,
            beta: float = BETA_COMMITMENT) -> VqLoss:
    """Eq. (4) for images ``x`` (n, C*H*W) or (n, C, H, W) float32 in [0, 1] sent over a DMC with ``eps``."""
    z_e = model.encode_latent(x)
    received = dmc_torch(model.quantise(z_e.detach()), model.shape.n_codewords, eps, generator)
    z_q = model.embed(received)
    x_hat = model.decode_latent(z_e + (z_q - z_e).detach())
    return VqLoss(F.mse_loss(x_hat, as_images(x, model.shape)),
                  F.mse_loss(z_q, z_e.detach()),
                  beta * F.mse_loss(z_e, z_q.detach()))


def pretrain_transceiver(x: torch.Tensor, config: TransceiverConfig,
                         on_epoch: Callable[[int, float], None] | None = None) -> tuple[Transceiver, FitReport]:
    """Train a fresh transceiver on images ``x`` (n, C*H*W) float32 in [0, 1] over the DMC of ``config.eps``.

    Adam at ``config.lr`` under ``config.schedule``; ``on_epoch(epoch, mean_loss)``: called after each
    full pass (progress).
    """
    model = Transceiver(config.shape, seed=config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    train = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                        schedule=config.schedule)
    report = fit(list(model.parameters()), lambda xb: vq_loss(model, xb, config.eps, gen).total, [x], train,
                 on_epoch=on_epoch)
    return model, report


def pretrain_head(x: torch.Tensor, y: torch.Tensor, config: TransceiverConfig,
                  on_epoch: Callable[[int, float], None] | None = None,
                  transceiver: Transceiver | None = None) -> tuple[TaskHead, FitReport]:
    """Train the task head on images ``x`` (n, C*H*W) float32 in [0, 1] / labels ``y`` (n,) int64, then freeze it.

    ``config.head_on`` "reconstructions" / "mixed" need ``transceiver`` (left unchanged): all / each with
    chance :data:`MIXED_RECONSTRUCTION_SHARE` of a batch's images are encoded, sent over the DMC of
    ``config.eps`` (fresh draws every step) and decoded before the head sees them; then every image is
    translated by up to ``config.head_shift`` pixels (:func:`random_shifts`). Adam at ``config.lr`` under
    ``config.head_schedule``; augmentation and channel draws are seeded by ``config.seed``.
    """
    if (config.head_on == "clean") != (transceiver is None):
        raise ValueError(f"head_on={config.head_on!r} needs a transceiver exactly when it is not 'clean'")
    head = TaskHead(config.shape, seed=config.seed)
    train = TrainConfig(epochs=config.head_epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                        schedule=config.head_schedule)
    gen = torch.Generator().manual_seed(config.seed + 1)
    share = {"clean": 0.0, "mixed": MIXED_RECONSTRUCTION_SHARE, "reconstructions": 1.0}[config.head_on]

    def inputs(xb: torch.Tensor) -> torch.Tensor:
        images = as_images(xb, config.shape)
        if share:
            pick = torch.rand(len(images), generator=gen) < share
            with torch.no_grad():
                sent = dmc_torch(transceiver.encode(images[pick]), config.shape.n_codewords, config.eps, gen)
                images = images.clone()
                images[pick] = transceiver.decode(sent)
        return random_shifts(images, config.shape, config.head_shift, gen)

    report = fit(list(head.parameters()), lambda xb, yb: F.cross_entropy(head(inputs(xb)), yb), [x, y.long()],
                 train, on_epoch=on_epoch)
    head.requires_grad_(False)
    return head.eval(), report


def random_shifts(x: torch.Tensor, shape: TransceiverShape, max_shift: int,
                  generator: torch.Generator) -> torch.Tensor:
    """Images ``x`` (n, C*H*W) or (n, C, H, W) float32, each translated by its own random whole-pixel offset.

    Offsets are drawn from ``generator``, uniform in ``-max_shift..max_shift`` on each axis, independently
    per image; pixels shifted in are 0 (the background). Returns (n, C, H, W) float32; ``max_shift = 0``
    returns the images unchanged.
    """
    images = as_images(x, shape)
    if max_shift == 0:
        return images
    n, side = len(images), shape.image_size
    offsets = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
    padded = F.pad(images, (max_shift,) * 4)
    grid = torch.arange(side) + max_shift
    rows, cols = grid + offsets[:, :1], grid + offsets[:, 1:]  # (n, side) each
    picked = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (n, H, W, C)
    return picked.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class SlfConfig:
    """One SLF fine-tuning run at the TX.

    ``n_frozen``: the paper's ``l``, decoder layers frozen counted from the
    last (0..4 over :data:`DECODER_LAYERS`); ``eps``: the pair's measured
    crossover probability ``eps_ij``; ``epochs`` over the TX's data;
    ``budget_s``: wall-clock cap (s) or None; ``seed``: batch order, channel
    draws and the l = 0 re-initialisation. The learning rate follows the
    paper (:data:`LR_RETRAIN` for l = 0, :data:`LR_FINETUNE` otherwise)
    unless ``learning_rate`` is given.
    """

    n_frozen: int
    eps: float
    epochs: float = 1.0
    batch_size: int = PAPER_BATCH_SIZE
    seed: int = 0
    budget_s: float | None = None
    beta: float = BETA_COMMITMENT
    learning_rate: float | None = None

    def __post_init__(self):
        frozen_layers(self.n_frozen)  # validates the range
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"eps must be a probability in [0, 1], got {self.eps}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        self.train_config()  # TrainConfig checks epochs, batch_size and budget_s

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return LR_RETRAIN if self.n_frozen == 0 else LR_FINETUNE

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           budget_s=self.budget_s, seed=self.seed)


@dataclass(frozen=True)
class SlfResult:
    """Outcome of :func:`slf_finetune`.

    ``model``: the fine-tuned virtual transceiver ``TRX'_ij`` (the TX's
    encoder ``theta'_i`` with the fine-tuned decoder ``phi'_j``; the TX
    encodes with it from now on). ``changed_layers``: decoder layers whose
    tensors differ from the download (what step 3 uploads), ``frozen``: the
    ``Freeze_l`` layers, ``report``: the training loop's report.
    """

    model: Transceiver
    changed_layers: tuple[str, ...]
    frozen: tuple[str, ...]
    report: FitReport

    def upload_state(self) -> dict[str, torch.Tensor]:
        """Tensors of :attr:`changed_layers` for the RX's ``load_decoder_state``."""
        return self.model.decoder_state(self.changed_layers)


def slf_finetune(tx: Transceiver, downloaded: Mapping[str, torch.Tensor], x: torch.Tensor,
                 config: SlfConfig, on_epoch: Callable[[int, float], None] | None = None) -> SlfResult:
    """SLF step 2 at the TX: fine-tune ``[theta_i, Freeze_l(phi_j)]`` on the TX's images ``x``.

    ``tx``: the TX's own transceiver (encoder and codebook; left unchanged);
    ``downloaded``: the RX's whole decoder, as its ``decoder_state()``;
    ``x``: (n, C*H*W) float32 in [0, 1]. For l = 0 the decoder is
    re-initialised: the convs get a fresh seeded init and the codebook starts
    from the TX's own (the one its encoder was trained against; a random
    codebook would leave most of the encoder's outputs on a few codewords).
    ``tx`` and ``x`` may live on a GPU (``downloaded`` is copied there);
    ``on_epoch(epoch, mean_loss)`` after each full pass (progress).
    """
    model = copy.deepcopy(tx)
    loaded = model.load_decoder_state(downloaded)
    if loaded != DECODER_LAYERS:
        raise ValueError(f"the download must hold the whole decoder {DECODER_LAYERS}, got {loaded}")
    if config.n_frozen == 0:
        with torch.no_grad():
            model.codebook.weight.copy_(tx.codebook.weight)
        model.reset_decoder_convs(config.seed)
    frozen = frozen_layers(config.n_frozen)
    for name in frozen:
        model.get_submodule(name).requires_grad_(False)
    gen = torch.Generator().manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    report = fit(params, lambda xb: vq_loss(model, xb, config.eps, gen, config.beta).total, [x],
                 config.train_config(), on_epoch=on_epoch)
    model.requires_grad_(True)
    after = model.decoder_state()
    changed = tuple(name for name in DECODER_LAYERS
                    if any(not torch.equal(after[k], downloaded[k].to(after[k].device))
                           for k in after if k.startswith(name + ".")))
    return SlfResult(model, changed, frozen, report)


@dataclass(frozen=True)
class LinkMetrics:
    """Over ``n`` images: reconstruction MSE (per pixel, pixels in [0, 1]) and task-head top-1 accuracy."""

    mse: float
    accuracy: float
    n: int


@torch.no_grad()
def evaluate_link(tx: Transceiver, rx: Transceiver, head: TaskHead, x: torch.Tensor, y: torch.Tensor,
                  eps: float, seed: int = 0) -> LinkMetrics:
    """TX encodes ``x`` (n, C*H*W) float32, the DMC (numpy, seeded) corrupts the indices, RX decodes, head classifies.

    ``x``, ``y`` and the three models may live on a GPU (the DMC runs on the CPU).
    """
    rng = np.random.default_rng(seed)
    sq_err, correct = 0.0, 0
    for i in range(0, len(x), EVAL_BATCH):
        xb, yb = x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH]
        sent = tx.encode(xb).cpu().numpy()
        received = torch.from_numpy(dmc_numpy(sent, rx.shape.n_codewords, eps, rng)).to(xb.device)
        x_hat = rx.decode(received)
        sq_err += float(F.mse_loss(x_hat, as_images(xb, rx.shape), reduction="sum"))
        correct += int((head.predict(x_hat) == yb.long()).sum())
    n = len(x)
    return LinkMetrics(sq_err / (n * x[0].numel()), correct / n, n)
