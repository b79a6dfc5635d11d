"""Tensors on the wire: the one layout every mode uses for model weights (slf's decoder layers,
fed-lora's adapters).

A tensor list is a msgpack array of maps ``{"name": str, "dtype": str,
"shape": [int, ...], "data": bin}``; ``data`` is the row-major values,
little-endian, in ``dtype`` (``"float32"``, or ``"float16"`` where a message
allows it). :func:`arrays_from_wire` checks a received list against what the
receiver expects before any value is used.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

WIRE_DTYPES = {"float32": "<f4", "float16": "<f2"}
TENSOR_KEYS = ("name", "dtype", "shape", "data")


class TensorError(ValueError):
    """A tensor list that cannot be used; ``code`` is the ERROR code the RX answers with."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def arrays_to_wire(arrays: Mapping[str, np.ndarray], dtype: str = "float32") -> list[dict]:
    """``{name: float32 array}`` -> the wire list, in ``arrays``' order; ``dtype`` float16 rounds each value."""
    if dtype not in WIRE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(WIRE_DTYPES)}, got {dtype!r}")
    out = []
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype != np.float32:
            raise ValueError(f"{name}: only float32 arrays travel, got {a.dtype}")
        a = np.ascontiguousarray(a).astype(WIRE_DTYPES[dtype])
        out.append({"name": name, "dtype": dtype, "shape": list(a.shape), "data": a.tobytes()})
    return out


def wire_tensor_bytes(items: list) -> int:
    """Raw tensor bytes in a wire list (its ``data`` fields), headers aside."""
    return sum(len(item["data"]) for item in items if isinstance(item, dict) and isinstance(item.get("data"), bytes))


def arrays_from_wire(items, expected: Mapping[str, tuple[int, ...]], dtypes: tuple[str, ...] = ("float32",),
                     require_all: bool = False, max_tensors: int | None = None) -> dict[str, np.ndarray]:
    """Check a wire list against ``expected`` (name -> shape) and return float32 arrays (copies).

    ``dtypes``: the wire dtypes accepted. ``require_all``: every expected
    tensor must be present. Raises :class:`TensorError` with code
    ``bad_tensor`` (not a list of ``{name, dtype, shape, data}`` maps, or more
    than ``max_tensors``), then per tensor in list order ``unknown_layer`` (a
    name outside ``expected``), ``duplicate``, ``dtype``, ``shape``, ``size``
    (``data`` length differs from the shape's) or ``non_finite`` (NaN/Inf),
    then ``missing``; the first failing check wins.
    """
    if not isinstance(items, list):
        raise TensorError("bad_tensor", f"tensors must be a list, got {type(items).__name__}")
    if max_tensors is not None and len(items) > max_tensors:
        raise TensorError("bad_tensor", f"{len(items)} tensors, at most {max_tensors}")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or sorted(item) != sorted(TENSOR_KEYS):
            keys = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise TensorError("bad_tensor", f"tensor {i}: need keys {list(TENSOR_KEYS)}, got {keys}")
        name, dtype, shape, data = (item[k] for k in TENSOR_KEYS)
        if not isinstance(name, str) or not isinstance(dtype, str) or not isinstance(data, bytes) \
                or not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                          and s >= 0 for s in shape):
            raise TensorError("bad_tensor", f"tensor {i}: name/dtype must be str, shape a list of ints >= 0, "
                                            "data bytes")
    # one order for every mode (docs/protocol.md, "Order of checks"): each tensor's name, then uniqueness,
    # dtype, shape, data size, finiteness; then what is missing. No total-bytes check: a known, unique
    # tensor of the right dtype and size cannot make the list larger than the expected tensors (the
    # frame itself was bounded before it was parsed)
    out: dict[str, np.ndarray] = {}
    for item in items:
        name, dtype, shape, data = (item[k] for k in TENSOR_KEYS)
        if name not in expected:
            raise TensorError("unknown_layer", f"tensor {name[:64]!r} is not one this message may carry; "
                                               f"known: {sorted(expected)[:8]}{' ...' if len(expected) > 8 else ''}")
        if name in out:
            raise TensorError("duplicate", f"tensor {name!r} given twice")
        if dtype not in dtypes:
            raise TensorError("dtype", f"{name}: dtype {dtype[:32]!r}, only {' / '.join(dtypes)} is accepted")
        want = tuple(expected[name])
        if tuple(shape) != want:
            raise TensorError("shape", f"{name}: shape {tuple(shape[:8])} != {want}")
        fmt = np.dtype(WIRE_DTYPES[dtype])
        need = fmt.itemsize * math.prod(want)
        if len(data) != need:
            raise TensorError("size", f"{name}: {len(data)} bytes of data, shape {want} {dtype} needs {need}")
        a = np.frombuffer(data, fmt)
        if not np.isfinite(a).all():
            raise TensorError("non_finite", f"{name}: {int((~np.isfinite(a)).sum())} NaN/Inf values")
        out[name] = a.astype(np.float32).reshape(want)
    missing = [k for k in expected if k not in out] if require_all else []
    if missing:
        raise TensorError("missing", f"{len(missing)} tensors missing, e.g. {missing[0]!r}")
    return out
