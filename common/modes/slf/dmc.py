"""K-ary symmetric discrete memoryless channel (eq. (2)) and bit-packing of codeword indices.

Each index survives with probability ``1 - eps``; otherwise it becomes one of
the other ``K - 1`` symbols, uniformly. :func:`dmc_numpy` (a seeded numpy
``Generator``) is for the link; :func:`dmc_torch` is the same channel inside
training. Indices travel as ``ceil(log2 K)`` bits each, most significant bit
first, packed into bytes (the last byte zero-padded).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _check(n_symbols: int, eps: float) -> None:
    if n_symbols < 2:
        raise ValueError(f"n_symbols must be >= 2, got {n_symbols}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be a probability in [0, 1], got {eps}")


def dmc_numpy(indices: np.ndarray, n_symbols: int, eps: float, rng: np.random.Generator) -> np.ndarray:
    """Send ``indices`` (any shape, integers in [0, K)) through the channel; same shape and dtype."""
    _check(n_symbols, eps)
    indices = np.asarray(indices)
    flip = rng.random(indices.shape) < eps
    offset = rng.integers(1, n_symbols, size=indices.shape)
    return np.where(flip, (indices + offset) % n_symbols, indices).astype(indices.dtype)


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
