"""pca-lora's wire messages: PAYLOAD (test then training vectors in a fixed byte layout) and the
optional first part of a two-part round, PAYLOAD_TRAIN (training vectors only), answered by TRAIN_ACK.

PAYLOAD and PAYLOAD_TRAIN are written with fixed-width msgpack formats (uint32/uint64 ints,
bin32 blobs) so that its header size ``H`` is a constant of the format, as
the payload budget (eq. 2) needs; vectors travel as raw little-endian bytes.
The RX answers PAYLOAD with a RESULT (its ``fields``: ``docs/protocol.md``),
PAYLOAD_TRAIN with TRAIN_ACK. Byte layout: ``docs/protocol.md``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from common.wire.protocol import (
    _INT_RANGES,
    MAX_SEQ,
    PROTOCOL_VERSION,
    DecodeLimits,
    ProtocolError,
    check_range,
    register_message,
)
from common.wire.values import ValueFormat, value_format, value_format_by_code

FINGERPRINT_BYTES = 32
VECTOR_ID_BYTES = 4
LABEL_BYTES = 1
NO_LABEL = 255
MAX_TRAIN_PARTS = 16  # PAYLOAD_TRAIN frames per round (HELLO train_parts)


@register_message
@dataclass(frozen=True)
class Payload:
    """TX -> RX: ``n_test`` test vectors then ``n_train`` training vectors.

    ``ids``: uint32 (n,); ``labels``: uint8 (n,) (test labels for evaluation
    only); ``values``/``scales``: quantized features as produced by
    :meth:`ValueFormat.quantize`. Use :meth:`build` and :meth:`features`.
    """

    TYPE: ClassVar[str] = "PAYLOAD"
    TEST_RANGE: ClassVar[tuple[int, int | None]] = (1, None)  # allowed n_test (None: no upper bound)
    MIN_TRAIN: ClassVar[int] = 0
    session_id: int
    seq: int
    fingerprint: bytes
    alpha: int
    value_dtype: str
    n_test: int
    n_train: int
    ids: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    values: bytes = field(repr=False)
    scales: bytes = field(repr=False)

    @classmethod
    def build(cls, session_id: int, seq: int, fingerprint_hex: str, value_dtype: str,
              z: np.ndarray, ids: np.ndarray, labels: np.ndarray, n_test: int) -> "Payload":
        """Quantize ``z`` float32 (n, alpha); the first ``n_test`` rows are test vectors."""
        fmt = value_format(value_dtype)
        values, scales = fmt.quantize(z)
        return cls(session_id, seq, bytes.fromhex(fingerprint_hex), int(z.shape[1]), fmt.name,
                   int(n_test), int(len(z) - n_test), np.asarray(ids, "<u4"),
                   np.asarray(labels, np.uint8), values, scales)

    @property
    def n(self) -> int:
        return self.n_test + self.n_train

    @property
    def format(self) -> ValueFormat:
        return value_format(self.value_dtype)

    def features(self) -> np.ndarray:
        """Dequantized features, float32 (n, alpha)."""
        return self.format.dequantize(self.values, self.scales, self.n, self.alpha)

    def encode_frame(self) -> bytes:
        fmt = self.format
        parts = [b"\xde" + struct.pack(">H", len(_PAYLOAD_LAYOUT))]
        values = {
            "v": PROTOCOL_VERSION, "type": self.TYPE, "session_id": self.session_id, "seq": self.seq,
            "fingerprint": self.fingerprint, "alpha": self.alpha, "value_dtype": fmt.code,
            "n_test": self.n_test, "n_train": self.n_train, "ids": np.asarray(self.ids, "<u4").tobytes(),
            "labels": np.asarray(self.labels, np.uint8).tobytes(), "scales": self.scales,
            "values": self.values,
        }
        for key, kind in _PAYLOAD_LAYOUT:
            parts.append(_fixstr(key))
            v = values[key]
            if kind == "u32":
                parts.append(b"\xce" + struct.pack(">I", v))
            elif kind == "u64":
                parts.append(b"\xcf" + struct.pack(">Q", v))
            elif kind == "str":
                parts.append(_fixstr(v))
            else:
                parts.append(b"\xc6" + struct.pack(">I", len(v)) + v)
        return b"".join(parts)

    @classmethod
    def decode_body(cls, body: dict, limits: DecodeLimits) -> "Payload":
        expected = [k for k, _ in _PAYLOAD_LAYOUT if k not in ("v", "type")]
        if sorted(body) != sorted(expected):
            raise ProtocolError("bad_message", f"{cls.TYPE} fields {sorted(body)} != {sorted(expected)}")
        for key, kind in _PAYLOAD_LAYOUT[2:]:
            want = bytes if kind == "bin" else int
            if not isinstance(body[key], want) or isinstance(body[key], bool):
                raise ProtocolError("bad_message", f"{cls.TYPE}: field {key!r} must be {want.__name__}")
        try:
            fmt = value_format_by_code(body["value_dtype"])
        except ValueError as e:
            raise ProtocolError("bad_message", f"PAYLOAD: {e}") from e
        alpha, n_test, n_train = body["alpha"], body["n_test"], body["n_train"]
        n = n_test + n_train
        if not 1 <= alpha <= limits.max_alpha:
            raise ProtocolError("alpha", f"PAYLOAD: alpha={alpha} outside [1, {limits.max_alpha}]")
        lo, hi = cls.TEST_RANGE
        if n_test < lo or (hi is not None and n_test > hi) or n_train < cls.MIN_TRAIN or n > limits.max_vectors:
            raise ProtocolError("bad_message", f"{cls.TYPE}: n_test={n_test}, n_train={n_train}: need "
                                               f"n_test in [{lo}, {hi if hi is not None else 'any'}], "
                                               f"n_train >= {cls.MIN_TRAIN} and at most {limits.max_vectors} "
                                               "vectors")
        if len(body["fingerprint"]) != FINGERPRINT_BYTES:
            raise ProtocolError("bad_message", f"PAYLOAD: fingerprint has {len(body['fingerprint'])} "
                                               f"bytes, expected {FINGERPRINT_BYTES}")
        sizes = {"ids": n * VECTOR_ID_BYTES, "labels": n * LABEL_BYTES,
                 "scales": n * fmt.scale_bytes, "values": n * alpha * fmt.bytes_per_value}
        for key, size in sizes.items():
            if len(body[key]) != size:
                raise ProtocolError("bad_message", f"PAYLOAD: {key} has {len(body[key])} bytes, "
                                                   f"expected {size} for n={n}, alpha={alpha}, {fmt.name}")
        check_range("PAYLOAD", "session_id", body["session_id"], *_INT_RANGES["session_id"])
        check_range("PAYLOAD", "seq", body["seq"], 0, MAX_SEQ)
        return cls(body["session_id"], body["seq"], body["fingerprint"], alpha, fmt.name,
                   n_test, n_train, np.frombuffer(body["ids"], "<u4"),
                   np.frombuffer(body["labels"], np.uint8), body["values"], body["scales"])


@register_message
@dataclass(frozen=True)
class TrainPart(Payload):
    """TX -> RX, one of the ``train_parts`` (HELLO) training parts of a round in parts: ``n_train >= 1``
    training vectors and no test vectors, same layout as PAYLOAD; the next parts and then the round's
    PAYLOAD (its test vectors) follow on the same seq, and the RX adapts on the parts while those are
    still on air. Build with :meth:`Payload.build` called on this class with ``n_test=0``."""

    TYPE: ClassVar[str] = "PAYLOAD_TRAIN"
    TEST_RANGE: ClassVar[tuple[int, int | None]] = (0, 0)
    MIN_TRAIN: ClassVar[int] = 1
    # the RX's replay key tells a round's parts apart by their first vector id and size (a round's
    # training vectors are distinct), so only a re-sent part is answered from the record
    REPLAY_FIELDS: ClassVar[tuple[str, ...]] = ("part_key",)

    @property
    def part_key(self) -> tuple[int, int]:
        return int(self.ids[0]), self.n_train


@register_message
@dataclass(frozen=True)
class TrainAck:
    """RX -> TX, not round-final: a PAYLOAD_TRAIN was adapted on. ``finetune_ms``: the adaptation's wall
    time; ``request_digest``: of the PAYLOAD_TRAIN it answers (filled in by the RX daemon)."""

    TYPE: ClassVar[str] = "TRAIN_ACK"
    max_bytes: ClassVar[int] = 4096
    session_id: int
    seq: int
    n_train: int
    finetune_ms: float
    request_digest: bytes = b""


# (key, msgpack kind) in wire order; kinds: u32, u64, str (fixstr), bin (bin32)
_PAYLOAD_LAYOUT = (
    ("v", "u32"), ("type", "str"), ("session_id", "u64"), ("seq", "u64"),
    ("fingerprint", "bin"), ("alpha", "u32"), ("value_dtype", "u32"), ("n_test", "u32"),
    ("n_train", "u32"), ("ids", "bin"), ("labels", "bin"), ("scales", "bin"), ("values", "bin"),
)


def _fixstr(s: str) -> bytes:
    b = s.encode()
    if len(b) > 31:
        raise ValueError(f"key {s!r} too long for fixstr")
    return bytes([0xA0 | len(b)]) + b


def payload_header_bytes(cls: type[Payload] = Payload) -> int:
    """``H``: bytes of a PAYLOAD (or PAYLOAD_TRAIN) that do not depend on the vectors (constant)."""
    empty = cls(0, 0, bytes(FINGERPRINT_BYTES), 1, "float32", 0, 0,
                    np.zeros(0, "<u4"), np.zeros(0, np.uint8), b"", b"")
    return len(empty.encode_frame())


def vector_header_bytes(value_dtype: str) -> int:
    """``h``: per-vector bytes besides its values (id, label, and int8's scale)."""
    return VECTOR_ID_BYTES + LABEL_BYTES + value_format(value_dtype).scale_bytes
