"""How feature values travel: float32, float16, or int8 with a per-vector scale.

``sigma`` (bytes per value) enters the payload budget, eq. (2); the int8
format also adds a float32 scale to each vector's header.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ValueFormat:
    """One wire format for feature values.

    ``code``: the number written on the wire; ``bytes_per_value``: sigma;
    ``scale_bytes``: extra per-vector header bytes (int8's float32 scale).
    """

    name: str
    code: int
    bytes_per_value: int
    scale_bytes: int
    numpy_dtype: str

    def quantize(self, z: np.ndarray) -> tuple[bytes, bytes]:
        """``z`` float32 (n, alpha) -> (values, scales) as little-endian bytes.

        ``values`` holds n*alpha*sigma bytes row-major; ``scales`` n*scale_bytes.
        """
        z = np.asarray(z, dtype=np.float32)
        if self.scale_bytes == 0:
            return np.ascontiguousarray(z, dtype=self.numpy_dtype).tobytes(), b""
        peak = np.abs(z).max(axis=1) if z.shape[1] else np.zeros(len(z), np.float32)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype("<f4")
        q = np.clip(np.rint(z / scale[:, None]), -127, 127).astype("<i1")
        return q.tobytes(), scale.tobytes()

    def dequantize(self, values: bytes, scales: bytes, n: int, alpha: int) -> np.ndarray:
        """Inverse of :meth:`quantize`: float32 (n, alpha)."""
        z = np.frombuffer(values, dtype=self.numpy_dtype).reshape(n, alpha).astype(np.float32)
        if self.scale_bytes:
            z *= np.frombuffer(scales, dtype="<f4")[:, None]
        return z


VALUE_FORMATS: dict[str, ValueFormat] = {
    f.name: f
    for f in (
        ValueFormat("float32", 0, 4, 0, "<f4"),
        ValueFormat("float16", 1, 2, 0, "<f2"),
        ValueFormat("int8", 2, 1, 4, "<i1"),
    )
}
_BY_CODE = {f.code: f for f in VALUE_FORMATS.values()}


def value_format(name: str) -> ValueFormat:
    """Look up a format by name; ValueError lists the known ones."""
    try:
        return VALUE_FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown value dtype {name!r}; choose one of {sorted(VALUE_FORMATS)}") from None


def value_format_by_code(code: int) -> ValueFormat:
    try:
        return _BY_CODE[code]
    except KeyError:
        raise ValueError(f"unknown value dtype code {code!r}; known codes {sorted(_BY_CODE)}") from None
