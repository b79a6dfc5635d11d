"""Recovery-time model of the paper's Table I and a FLOP counter for conv/linear layers.

``T_R = download_bytes * 8 / downlink_bps + finetune_flops / compute_flops_per_s
+ upload_bytes * 8 / uplink_bps``, with the paper's 2 Mb/s both ways and a
30 TFLOP/s TX (1 kB = 1000 B, 1 Mb/s = 1e6 bit/s).

FLOP convention: a multiply-add is 2 FLOPs; only Conv2d, ConvTranspose2d and
Linear layers count (biases, activations, the quantiser's distances and the
optimiser step are left out). Training a layer costs 3x its forward FLOPs
(forward, gradient w.r.t. its input, gradient w.r.t. its weights); a frozen
layer that gradients still pass through (to reach the encoder) costs 2x.
With nothing frozen this is the usual "training = 3 x forward".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Collection, Mapping

import torch
from torch import nn

from common.modes.slf.transceiver import Transceiver, frozen_layers

LINK_RATE_BPS = 2e6  # the paper's downlink and uplink rate
COMPUTE_FLOPS_PER_S = 30e12  # the paper's TX compute
BITS_PER_BYTE = 8
BYTES_PER_KB = 1000
TRAIN_FACTOR = 3  # forward + input gradient + weight gradient
FROZEN_FACTOR = 2  # forward + input gradient


def state_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Raw bytes of the tensors in ``state`` (what a payload of them carries, headers aside)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def forward_flops(model: nn.Module, run: Callable[[], object]) -> dict[str, int]:
    """FLOPs of each Conv2d / ConvTranspose2d / Linear submodule of ``model`` (by name) during ``run()``."""
    counts: dict[str, int] = {}

    def hook(name: str):
        def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(module, nn.ConvTranspose2d):
                per_in = module.out_channels // module.groups * math.prod(module.kernel_size)
                macs = inputs[0].numel() * per_in
            elif isinstance(module, nn.Conv2d):
                macs = output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
            else:
                macs = output.numel() * module.in_features
            counts[name] = counts.get(name, 0) + 2 * macs
        return count

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return counts


def transceiver_forward_flops(model: Transceiver) -> dict[str, int]:
    """Per-layer forward FLOPs of encoder and decoder for one image."""
    s = model.shape
    x = torch.zeros(1, s.channels, s.image_size, s.image_size)
    return forward_flops(model, lambda: model.decode_latent(model.encode_latent(x)))


def training_flops(forward: Mapping[str, int], frozen: Collection[str]) -> int:
    """FLOPs of one training step on one sample: 3x forward per trained layer, 2x per frozen one."""
    return sum(f * (FROZEN_FACTOR if name in frozen else TRAIN_FACTOR) for name, f in forward.items())


def finetune_flops(model: Transceiver, n_frozen: int, samples: int, epochs: float) -> float:
    """SLF fine-tuning FLOPs at the TX: ``training_flops`` per image x ``samples`` x ``epochs``."""
    return training_flops(transceiver_forward_flops(model), frozen_layers(n_frozen)) * samples * epochs


@dataclass(frozen=True)
class RecoveryTime:
    """Table I's recovery time and its three parts, in seconds, with the payload sizes in bytes."""

    download_bytes: int
    upload_bytes: int
    finetune_flops: float
    download_s: float
    finetune_s: float
    upload_s: float

    @property
    def total_s(self) -> float:
        return self.download_s + self.finetune_s + self.upload_s

    @property
    def download_kb(self) -> float:
        return self.download_bytes / BYTES_PER_KB

    @property
    def upload_kb(self) -> float:
        return self.upload_bytes / BYTES_PER_KB


def recovery_time(download_bytes: int, finetune_flops: float, upload_bytes: int,
                  downlink_bps: float = LINK_RATE_BPS, uplink_bps: float = LINK_RATE_BPS,
                  compute_flops_per_s: float = COMPUTE_FLOPS_PER_S) -> RecoveryTime:
    """Download (step 1) + fine-tuning (step 2) + upload (step 3) times of SLF."""
    if min(download_bytes, upload_bytes, finetune_flops) < 0:
        raise ValueError(f"download_bytes={download_bytes}, finetune_flops={finetune_flops}, "
                         f"upload_bytes={upload_bytes} must be >= 0")
    if not (downlink_bps > 0 and uplink_bps > 0 and compute_flops_per_s > 0):
        raise ValueError(f"downlink_bps={downlink_bps}, uplink_bps={uplink_bps}, "
                         f"compute_flops_per_s={compute_flops_per_s} must be > 0")
    return RecoveryTime(download_bytes, upload_bytes, finetune_flops,
                        download_bytes * BITS_PER_BYTE / downlink_bps,
                        finetune_flops / compute_flops_per_s,
                        upload_bytes * BITS_PER_BYTE / uplink_bps)


@dataclass(frozen=True)
class LayerChoice:
    """What :func:`choose_n_frozen` decided: ``n_frozen`` (``l``), whether its predicted recovery time meets
    ``deadline_s``, and the prediction for every candidate ``l`` (``predicted[l]``)."""

    n_frozen: int
    deadline_s: float
    met: bool
    predicted: dict

    def to_dict(self) -> dict:
        """JSON-able: the choice and, per ``l``, the predicted download / fine-tune / upload / total seconds."""
        return {"n_frozen": self.n_frozen, "deadline_s": self.deadline_s, "met": self.met,
                "predicted": {str(l): {"download_s": r.download_s, "finetune_s": r.finetune_s,
                                       "upload_s": r.upload_s, "total_s": r.total_s,
                                       "download_bytes": r.download_bytes, "upload_bytes": r.upload_bytes,
                                       "finetune_flops": r.finetune_flops}
                              for l, r in sorted(self.predicted.items())}}


def choose_n_frozen(deadline_s: float, download_bytes: int, upload_bytes: Mapping[int, int],
                    flops: Mapping[int, float], rate_bps: float, compute_flops_per_s: float) -> LayerChoice:
    """The ``l`` to fine-tune with so that the recovery time meets ``deadline_s`` (s).

    Predicts, for every ``l`` in ``upload_bytes`` (which must match
    ``flops``'s keys), ``download_bytes * 8 / rate_bps + flops[l] /
    compute_flops_per_s + upload_bytes[l] * 8 / rate_bps`` (one link rate
    both ways, as the channel feedback gives it) and picks the smallest
    ``l`` that meets the deadline: fewer frozen layers adapt more, which the
    paper's Table I shows buys accuracy and MSE. When none meets it, the
    ``l`` with the smallest prediction (``met`` False).
    """
    if not deadline_s > 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
    if sorted(upload_bytes) != sorted(flops) or not upload_bytes:
        raise ValueError(f"upload_bytes and flops must cover the same l values, got {sorted(upload_bytes)} "
                         f"and {sorted(flops)}")
    predicted = {l: recovery_time(download_bytes, flops[l], upload_bytes[l], rate_bps, rate_bps,
                                  compute_flops_per_s) for l in sorted(upload_bytes)}
    fitting = [l for l, r in predicted.items() if r.total_s <= deadline_s]
    if fitting:
        return LayerChoice(min(fitting), deadline_s, True, predicted)
    fastest = min(predicted, key=lambda l: (predicted[l].total_s, -l))
    return LayerChoice(fastest, deadline_s, False, predicted)
