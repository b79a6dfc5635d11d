"""VQ-VAE DeepJSCC transceiver and task head (Section II of the SLF paper).

A transceiver maps images to a grid of codeword indices and back:

``x`` (n, C, H, W) float32 pixels in [0, 1]
-> encoder (3 conv layers, ReLU on all but the last) -> ``z_e`` (n, D, g, g)
-> nearest of ``K`` trainable codewords -> indices (n, g*g) int64 in [0, K)
-> [K-ary channel] -> codebook lookup -> ``z_q`` (n, D, g, g)
-> decoder (3 conv layers, ReLU on all but the last, sigmoid) -> ``x_hat`` (n, C, H, W) in [0, 1].

The TX half is the encoder; the RX half is the codebook followed by the three
decoder convs, :data:`DECODER_LAYERS` in that order, so that "the last ``l``
layers" of the paper's ``Freeze_l`` is well defined for ``l`` in 0..4 (the
paper's 3 conv layers and 1 embedding layer). The TX quantises with the same
codebook that the RX dequantises with. The task head (2 conv + 2 linear with
max-pooling) classifies images; it is trained (on clean images, reconstructions or a mix: configs.py) and frozen.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from common.modes.slf.shape import DECODER_LAYERS, KERNEL_DOWN, KERNEL_SAME, TransceiverShape


def as_images(x: torch.Tensor, shape: TransceiverShape) -> torch.Tensor:
    """``x`` float32 (n, C*H*W) or (n, C, H, W) -> (n, C, H, W) view."""
    side = shape.image_size
    if x.dim() == 2 and x.shape[1] == shape.channels * side * side:
        return x.reshape(len(x), shape.channels, side, side)
    if x.dim() == 4 and tuple(x.shape[1:]) == (shape.channels, side, side):
        return x
    raise ValueError(f"images must be (n, {shape.channels * side * side}) or "
                     f"(n, {shape.channels}, {side}, {side}), got {tuple(x.shape)}")


def _run(layers: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
    """Apply ``layers`` with ReLU after all but the last."""
    for i, layer in enumerate(layers):
        h = layer(h)
        if i < len(layers) - 1:
            h = F.relu(h)
    return h


class Transceiver(nn.Module):
    """Encoder, codebook and decoder of one VQ-VAE DeepJSCC transceiver (see the module docstring).

    State dict keys: ``encoder.{0,1,2}.{weight,bias}``, ``codebook.weight``
    (K, D) and ``decoder.{0,1,2}.{weight,bias}``, all float32.
    """

    def __init__(self, shape: TransceiverShape = TransceiverShape(), seed: int = 0):
        super().__init__()
        self.shape = shape
        c, (w1, w2), d, k = shape.channels, shape.widths, shape.code_dim, shape.n_codewords
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = nn.ModuleList([
                nn.Conv2d(c, w1, KERNEL_DOWN, stride=2, padding=1),
                nn.Conv2d(w1, w2, KERNEL_DOWN, stride=2, padding=1),
                nn.Conv2d(w2, d, KERNEL_SAME, padding=1),
            ])
            self.codebook = nn.Embedding(k, d)
            nn.init.uniform_(self.codebook.weight, -1.0 / k, 1.0 / k)
            self.decoder = nn.ModuleList([
                nn.Conv2d(d, w2, KERNEL_SAME, padding=1),
                nn.ConvTranspose2d(w2, w1, KERNEL_DOWN, stride=2, padding=1),
                nn.ConvTranspose2d(w1, c, KERNEL_DOWN, stride=2, padding=1),
            ])

    # ------------------------------------------------------------------ TX half
    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Images (n, C*H*W) or (n, C, H, W) in [0, 1] -> continuous latent ``z_e`` (n, D, g, g)."""
        return _run(self.encoder, as_images(x, self.shape))

    def quantise(self, z_e: torch.Tensor) -> torch.Tensor:
        """``z_e`` (n, D, g, g) -> index of the nearest codeword (squared L2), int64 (n, g*g)."""
        flat = z_e.permute(0, 2, 3, 1).reshape(len(z_e), -1, self.shape.code_dim)
        book = self.codebook.weight
        dist = (flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ book.T + book.pow(2).sum(-1))
        return dist.argmin(-1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> codeword indices, int64 (n, g*g) in [0, K), row-major over the latent grid."""
        return self.quantise(self.encode_latent(x))

    # ------------------------------------------------------------------ RX half
    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices int64 (n, g*g) -> codewords ``z_q`` (n, D, g, g)."""
        g = self.shape.grid
        if indices.dim() != 2 or indices.shape[1] != g * g:
            raise ValueError(f"indices must be (n, {g * g}), got {tuple(indices.shape)}")
        return self.codebook(indices.long()).reshape(len(indices), g, g, -1).permute(0, 3, 1, 2)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (n, D, g, g) -> reconstruction ``x_hat`` (n, C, H, W), float32 in [0, 1]."""
        return torch.sigmoid(_run(self.decoder, z))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Received indices int64 (n, g*g) -> ``x_hat`` (n, C, H, W) in [0, 1]."""
        return self.decode_latent(self.embed(indices))

    # ------------------------------------------------------------------ split learning
    def decoder_state(self, layers: Sequence[str] = DECODER_LAYERS) -> dict[str, torch.Tensor]:
        """Detached copies of the tensors of ``layers`` (names from :data:`DECODER_LAYERS`).

        Keys are state-dict names (``codebook.weight``, ``decoder.1.bias``, ...).
        """
        unknown = [name for name in layers if name not in DECODER_LAYERS]
        if unknown:
            raise ValueError(f"unknown decoder layers {unknown}; choose from {DECODER_LAYERS}")
        return {key: t.detach().clone() for key, t in self.state_dict().items()
                if _layer_of(key) in layers}

    def load_decoder_state(self, state: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
        """Copy in whole decoder layers from ``state`` (as made by :meth:`decoder_state`).

        Returns the layer names loaded, in :data:`DECODER_LAYERS` order. Raises
        ``ValueError`` naming the key for a key outside the decoder, a layer
        given in part, or a shape or dtype that does not fit.
        """
        own = self.state_dict()
        layers = {_layer_of(key) for key in state}
        bad = sorted(key for key in state if _layer_of(key) not in DECODER_LAYERS)
        if bad:
            raise ValueError(f"not decoder tensors: {bad}")
        for key in (k for k in own if _layer_of(k) in layers):
            if key not in state:
                raise ValueError(f"decoder layer {_layer_of(key)!r} given without {key!r}")
            if state[key].shape != own[key].shape or state[key].dtype != own[key].dtype:
                raise ValueError(f"{key}: got {tuple(state[key].shape)} {state[key].dtype}, "
                                 f"need {tuple(own[key].shape)} {own[key].dtype}")
        with torch.no_grad():
            for key, t in state.items():
                own[key].copy_(t)
        return tuple(name for name in DECODER_LAYERS if name in layers)

    def reset_decoder_convs(self, seed: int) -> None:
        """Re-initialise the three decoder convs (PyTorch's default init, seeded); the codebook stays."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in self.decoder:
                layer.reset_parameters()


def _layer_of(key: str) -> str:
    """``decoder.1.weight`` -> ``decoder.1``; ``codebook.weight`` -> ``codebook``."""
    return key.rsplit(".", 1)[0]


def frozen_layers(n_frozen: int) -> tuple[str, ...]:
    """The last ``n_frozen`` of :data:`DECODER_LAYERS` (the paper's ``Freeze_l``, counted from the last)."""
    if not 0 <= n_frozen <= len(DECODER_LAYERS):
        raise ValueError(f"n_frozen must be in 0..{len(DECODER_LAYERS)}, got {n_frozen}")
    return DECODER_LAYERS[len(DECODER_LAYERS) - n_frozen:]


class TaskHead(nn.Module):
    """Classifier over images: 2 conv layers (3x3, ReLU, 2x2 max-pooling) + 2 linear layers.

    Input (n, C*H*W) or (n, C, H, W) float32 in [0, 1]; output logits (n, n_classes).
    """

    def __init__(self, shape: TransceiverShape = TransceiverShape(), seed: int = 0):
        super().__init__()
        self.shape = shape
        (h1, h2), side = shape.head_channels, shape.image_size // 4
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.convs = nn.ModuleList([nn.Conv2d(shape.channels, h1, KERNEL_SAME, padding=1),
                                        nn.Conv2d(h1, h2, KERNEL_SAME, padding=1)])
            self.linears = nn.ModuleList([nn.Linear(h2 * side * side, shape.head_hidden),
                                          nn.Linear(shape.head_hidden, shape.n_classes)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = as_images(x, self.shape)
        for conv in self.convs:
            h = F.max_pool2d(F.relu(conv(h)), 2)
        return _run(self.linears, h.flatten(1))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class ids int64 (n,)."""
        return self(x).argmax(dim=1)
