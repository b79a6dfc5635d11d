"""A transceiver's layer sizes and the decoder's layer names, torch-free (the CLI and configs read them
without loading torch; the layers themselves are in :mod:`common.modes.slf.transceiver`)."""

from __future__ import annotations

from dataclasses import dataclass

DECODER_LAYERS = ("codebook", "decoder.0", "decoder.1", "decoder.2")
KERNEL_DOWN = 4  # stride-2 convs halve the grid: kernel 4, padding 1
KERNEL_SAME = 3  # stride-1 convs keep it: kernel 3, padding 1


@dataclass(frozen=True)
class TransceiverShape:
    """Layer widths of a transceiver and its task head.

    Images are ``channels x image_size x image_size``; the encoder's two
    stride-2 convs of ``widths`` channels and a stride-1 conv down to
    ``code_dim`` give a ``grid x grid`` latent (``image_size / 4``), each
    position quantised to one of ``n_codewords`` codewords of ``code_dim``
    values. The head has convs of ``head_channels`` (each followed by 2x2
    max-pooling), a hidden linear layer of ``head_hidden`` units and
    ``n_classes`` logits. The paper fixes 3 convs per side, K = 16 codewords
    of D = 16 values and the head's layer counts, not the widths; the head's
    (32, 64) / 128 are ours (docs/modes/slf.md, "Transceivers": the former
    (8, 16) / 64 cost 1.5 points of own-link accuracy).
    """

    channels: int = 1
    image_size: int = 28
    widths: tuple[int, int] = (32, 64)
    code_dim: int = 16
    n_codewords: int = 16
    head_channels: tuple[int, int] = (32, 64)
    head_hidden: int = 128
    n_classes: int = 10

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "head_channels", tuple(self.head_channels))
        if self.image_size < 4 or self.image_size % 4:
            raise ValueError(f"image_size must be a positive multiple of 4, got {self.image_size}")
        if len(self.widths) != 2 or len(self.head_channels) != 2:
            raise ValueError(f"widths={self.widths} and head_channels={self.head_channels} need 2 entries each")
        sizes = {"channels": self.channels, "code_dim": self.code_dim, "head_hidden": self.head_hidden,
                 "widths": min(self.widths), "head_channels": min(self.head_channels)}
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad:
            raise ValueError(f"layer sizes must be >= 1, got {bad}")
        if self.n_codewords < 2 or self.n_classes < 2:
            raise ValueError(f"n_codewords={self.n_codewords} and n_classes={self.n_classes} must be >= 2")

    @property
    def grid(self) -> int:
        """Side of the latent grid (positions per image: ``grid ** 2``)."""
        return self.image_size // 4

    @property
    def indices_per_image(self) -> int:
        return self.grid ** 2
