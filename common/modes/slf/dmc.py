"""K-ary symmetric discrete memoryless channel (eq. (2)) and bit-packing of codeword indices.

Each index survives with probability ``1 - eps``; otherwise it becomes one of
the other ``K - 1`` symbols, uniformly. :class:`KaryChannel` (a seeded numpy
``Generator``) is the link, a :class:`~common.link.model.Channel` of symbols
whose draws (:class:`KaryErrors`) :func:`dmc_numpy` applies to the sent
indices; :func:`dmc_torch` is the same channel inside training (torch tensors,
a torch generator). Indices travel as ``ceil(log2 K)`` bits each, most
significant bit first, packed into bytes (the last byte zero-padded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from common.link.model import Transmission, check_size


def _check(n_symbols: int, eps: float) -> None:
    if n_symbols < 2:
        raise ValueError(f"n_symbols must be >= 2, got {n_symbols}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be a probability in [0, 1], got {eps}")


@dataclass(frozen=True)
class KaryErrors(Transmission):
    """One use of the K-ary channel for ``flip.size`` symbols: never lost, no air time of its own (a
    symbol channel has no rate: the frame carrying the packed symbols has it), one attempt.

    ``flip``: bool (size,), the symbols substituted; ``offset``: int64 (size,) in [1, K), what a
    substituted symbol is shifted by modulo ``n_symbols`` (drawn for every symbol, used where ``flip``).
    """

    flip: np.ndarray
    offset: np.ndarray
    n_symbols: int

    def apply(self, indices: np.ndarray) -> np.ndarray:
        """``indices`` (``flip.size`` integers in [0, K), any shape, C order) as they arrive; same shape and dtype."""
        indices = np.asarray(indices)
        if indices.size != self.flip.size:
            raise ValueError(f"{self.flip.size} symbols were transmitted, got {indices.size} to apply them to")
        flip, offset = self.flip.reshape(indices.shape), self.offset.reshape(indices.shape)
        return np.where(flip, (indices + offset) % self.n_symbols, indices).astype(indices.dtype)


@dataclass(frozen=True)
class KaryChannel:
    """The K-ary symmetric channel as a :class:`~common.link.model.Channel` (``unit`` "symbol").

    ``n_symbols``: K >= 2; ``eps``: substitution probability in [0, 1]; ``rng``: the draws (numpy
    ``Generator``; each :meth:`transmit` consumes ``2 size`` of them: uniforms, then offsets).
    """

    n_symbols: int
    eps: float
    rng: np.random.Generator
    unit: ClassVar[str] = "symbol"

    def __post_init__(self) -> None:
        _check(self.n_symbols, self.eps)

    def transmit(self, size: int) -> KaryErrors:
        n = check_size(size)
        flip = self.rng.random(n) < self.eps
        offset = self.rng.integers(1, self.n_symbols, size=n)
        return KaryErrors(0.0, 1, flip=flip, offset=offset, n_symbols=self.n_symbols)


def dmc_numpy(indices: np.ndarray, n_symbols: int, eps: float, rng: np.random.Generator) -> np.ndarray:
    """Send ``indices`` (any shape, integers in [0, K)) through the channel; same shape and dtype."""
    indices = np.asarray(indices)
    return KaryChannel(n_symbols, eps, rng).transmit(indices.size).apply(indices)


def dmc_torch(indices: torch.Tensor, n_symbols: int, eps: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Torch twin of :func:`dmc_numpy` for training (int64 tensor in, int64 tensor out, no gradient).

    The draws come from ``generator`` on the CPU whatever ``indices``' device,
    so a run on a GPU sees the same channel as one on the CPU.
    """
    _check(n_symbols, eps)
    flip = (torch.rand(indices.shape, generator=generator) < eps).to(indices.device)
    offset = torch.randint(1, n_symbols, indices.shape, generator=generator).to(indices.device)
    return torch.where(flip, (indices + offset) % n_symbols, indices)


def bits_per_index(n_symbols: int) -> int:
    """``ceil(log2 K)``: bits that one index of a K-ary alphabet takes on the wire."""
    if n_symbols < 2:
        raise ValueError(f"n_symbols must be >= 2, got {n_symbols}")
    return math.ceil(math.log2(n_symbols))


def packed_size_bytes(count: int, n_symbols: int) -> int:
    """Bytes that :func:`pack_indices` makes of ``count`` indices."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return math.ceil(count * bits_per_index(n_symbols) / 8)


def pack_indices(indices: np.ndarray, n_symbols: int) -> bytes:
    """Flatten ``indices`` (integers in [0, K), C order) to ``ceil(log2 K)`` bits each, MSB first."""
    bits = bits_per_index(n_symbols)
    flat = np.asarray(indices).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= n_symbols):
        raise ValueError(f"indices must lie in [0, {n_symbols}), got range "
                         f"[{flat.min()}, {flat.max()}]")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    planes = (flat.astype(np.int64)[:, None] >> shifts) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1)).tobytes()


def unpack_indices(data: bytes, n_symbols: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_indices`: ``count`` indices, int64 (count,).

    Raises ``ValueError`` when ``data`` is not exactly ``packed_size_bytes``
    long or decodes to a value >= K (possible when K is not a power of two).
    """
    bits = bits_per_index(n_symbols)
    need = packed_size_bytes(count, n_symbols)
    if len(data) != need:
        raise ValueError(f"{count} indices of {bits} bits need {need} bytes, got {len(data)}")
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:count * bits].reshape(count, bits)
    out = planes.astype(np.int64) @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))
    if out.size and out.max() >= n_symbols:
        raise ValueError(f"packed data holds index {out.max()}, outside [0, {n_symbols})")
    return out
