"""Wire protocol: typed messages, pure ``encode(msg) -> bytes`` / ``decode(bytes) -> msg``.

Every message is one msgpack map carrying ``v`` (protocol version) and
``type``. PAYLOAD is written with fixed-width msgpack formats (uint32/uint64
ints, bin32 blobs) so that its header size ``H`` is a constant of the format;
vectors travel as raw little-endian bytes. ``docs/protocol.md`` is the byte
layout; keep the two in step (``PROTOCOL_VERSION`` changes with any layout change).
"""

from __future__ import annotations

import math
import struct
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import ClassVar

import msgpack
import numpy as np

from common.wire.values import ValueFormat, value_format, value_format_by_code

PROTOCOL_VERSION = 1
FINGERPRINT_BYTES = 32
VECTOR_ID_BYTES = 4
LABEL_BYTES = 1
NO_LABEL = 255
MAX_SEQ = 2**63 - 2  # sequence numbers (and seq + 1, the next round's) fit a signed 64-bit int
MAX_SESSION_ID = 2**63 - 1
# fields whose range the decoder checks: name -> (lowest, highest); ERROR's seq may be -1
_INT_RANGES = {"session_id": (0, MAX_SESSION_ID), "seq": (0, MAX_SEQ + 1), "next_seq": (0, MAX_SEQ)}


class ProtocolError(ValueError):
    """A message that cannot be accepted. ``code`` is a short machine-readable class."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DecodeLimits:
    """Hard limits checked before and while decoding (no memory blow-up from a length field)."""

    max_message_bytes: int = 64 * 2**20
    max_vectors: int = 200_000
    max_alpha: int = 4096
    max_str_len: int = 4096
    max_container_len: int = 256

    def __post_init__(self):
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"{f.name} must be positive, got {getattr(self, f.name)}")


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class Hello:
    """Handshake, both ways. TX -> RX opens a session; RX -> TX accepts it.

    Clock fields follow NTP: the TX sets ``t_origin_ns``; the RX echoes it and
    adds ``t_receive_ns``/``t_transmit_ns`` (its wall clock, ns since epoch).
    """

    TYPE: ClassVar[str] = "HELLO"
    role: str
    session_id: int
    codec: str
    fingerprint: str
    d_raw: int
    d_pre: int
    value_dtype: str
    next_seq: int = 0
    max_payload_bytes: int = 0
    pid: int = 0
    t_origin_ns: int = 0
    t_receive_ns: int = 0
    t_transmit_ns: int = 0


@dataclass(frozen=True)
class Channel:
    """RX -> TX channel feedback for round ``seq`` (units in the names; rate in bit/s)."""

    TYPE: ClassVar[str] = "CHANNEL"
    session_id: int
    seq: int
    sinr_db: float
    mcs: int
    mcs_table: str
    modulation: str
    rate_bps: float
    bler: float = 0.0


@dataclass(frozen=True)
class Result:
    """RX -> TX outcome of round ``seq``.

    ``predictions``: uint8 bytes, one class id per test vector. ``timings_ms``:
    RX stage durations (``deliver``, ``reconstruct``, ``finetune``,
    ``classify``). ``t_*_ns``: RX wall clock at receipt, delivery (after the
    link's air time), end of reconstruction, and reply.
    """

    TYPE: ClassVar[str] = "RESULT"
    session_id: int
    seq: int
    alpha: int
    n_test: int
    n_train: int
    predictions: bytes
    acc_pretrained: float
    acc_adapted: float
    timings_ms: dict
    adapt: dict
    rx_pid: int
    t_receive_ns: int
    t_delivered_ns: int
    t_reconstructed_ns: int
    t_transmit_ns: int


@dataclass(frozen=True)
class Error:
    """Refusal of a message; ``seq`` is -1 when it could not be read."""

    TYPE: ClassVar[str] = "ERROR"
    session_id: int
    seq: int
    code: str
    message: str


@dataclass(frozen=True)
class Payload:
    """TX -> RX: ``n_test`` test vectors then ``n_train`` training vectors.

    ``ids``: uint32 (n,); ``labels``: uint8 (n,) (test labels for evaluation
    only); ``values``/``scales``: quantized features as produced by
    :meth:`ValueFormat.quantize`. Use :meth:`build` and :meth:`features`.
    """

    TYPE: ClassVar[str] = "PAYLOAD"
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


MESSAGE_TYPES = {m.TYPE: m for m in (Hello, Channel, Result, Error, Payload)}
Message = Hello | Channel | Result | Error | Payload


# ---------------------------------------------------------------- PAYLOAD layout

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


def _encode_payload(p: Payload) -> bytes:
    fmt = p.format
    parts = [b"\xde" + struct.pack(">H", len(_PAYLOAD_LAYOUT))]
    values = {
        "v": PROTOCOL_VERSION, "type": Payload.TYPE, "session_id": p.session_id, "seq": p.seq,
        "fingerprint": p.fingerprint, "alpha": p.alpha, "value_dtype": fmt.code,
        "n_test": p.n_test, "n_train": p.n_train, "ids": np.asarray(p.ids, "<u4").tobytes(),
        "labels": np.asarray(p.labels, np.uint8).tobytes(), "scales": p.scales, "values": p.values,
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


def payload_header_bytes() -> int:
    """``H``: bytes of a PAYLOAD that do not depend on the vectors (constant)."""
    empty = Payload(0, 0, bytes(FINGERPRINT_BYTES), 1, "float32", 0, 0,
                    np.zeros(0, "<u4"), np.zeros(0, np.uint8), b"", b"")
    return len(_encode_payload(empty))


def vector_header_bytes(value_dtype: str) -> int:
    """``h``: per-vector bytes besides its values (id, label, and int8's scale)."""
    return VECTOR_ID_BYTES + LABEL_BYTES + value_format(value_dtype).scale_bytes


# ---------------------------------------------------------------- encode / decode


def encode(msg: Message) -> bytes:
    """Serialize one message to a single frame."""
    if isinstance(msg, Payload):
        return _encode_payload(msg)
    body = {"v": PROTOCOL_VERSION, "type": msg.TYPE}
    body.update(asdict(msg))
    return msgpack.packb(body, use_bin_type=True)


def decode(frame: bytes, limits: DecodeLimits = DecodeLimits()) -> Message:
    """Parse one frame; raises :class:`ProtocolError` naming what is wrong."""
    if len(frame) > limits.max_message_bytes:
        raise ProtocolError("oversize", f"message of {len(frame)} bytes exceeds the limit of "
                                        f"{limits.max_message_bytes} bytes")
    try:
        body = msgpack.unpackb(
            frame, raw=False, strict_map_key=True, max_bin_len=limits.max_message_bytes,
            max_str_len=limits.max_str_len, max_array_len=limits.max_container_len,
            max_map_len=limits.max_container_len, max_ext_len=0)
    except Exception as e:  # msgpack raises several unrelated classes for bad bytes
        raise ProtocolError("bad_message", f"not a msgpack message ({type(e).__name__}: {e})") from e
    if not isinstance(body, dict):
        raise ProtocolError("bad_message", f"message must be a msgpack map, got {type(body).__name__}")
    if not all(isinstance(k, str) for k in body):
        raise ProtocolError("bad_message", "message map keys must be strings")
    version = body.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError("version", f"protocol version {version!r} is not supported; "
                                       f"this node speaks version {PROTOCOL_VERSION}")
    kind = body.pop("type", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError("bad_message", f"unknown message type {kind!r}; "
                                           f"known: {sorted(MESSAGE_TYPES)}")
    if cls is Payload:
        return _payload_from_body(body, limits)
    return _message_from_body(cls, body)


_PY_TYPES = {"int": (int,), "float": (float, int), "str": (str,), "bytes": (bytes,), "dict": (dict,)}


def _message_from_body(cls, body: dict):
    names = {f.name for f in fields(cls)}
    unknown = set(body) - names
    if unknown:
        raise ProtocolError("bad_message", f"{cls.TYPE}: unknown fields {sorted(unknown)}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in body:
            if f.default is MISSING:
                raise ProtocolError("bad_message", f"{cls.TYPE}: missing field {f.name!r}")
            continue
        v = body[f.name]
        ok = _PY_TYPES[f.type]
        if not isinstance(v, ok) or isinstance(v, bool):
            raise ProtocolError("bad_message", f"{cls.TYPE}: field {f.name!r} must be {f.type}, "
                                               f"got {type(v).__name__}")
        if f.type == "float" and not math.isfinite(v) and f.name != "sinr_db":
            raise ProtocolError("non_finite", f"{cls.TYPE}: field {f.name!r} is {v}")
        if f.name in _INT_RANGES:
            lo, hi = _INT_RANGES[f.name]
            lo = -1 if (cls is Error and f.name == "seq") else lo
            if not lo <= v <= hi:
                raise ProtocolError("bad_message", f"{cls.TYPE}: field {f.name!r}={v} outside [{lo}, {hi}]")
        kwargs[f.name] = float(v) if f.type == "float" else v
    return cls(**kwargs)


def _payload_from_body(body: dict, limits: DecodeLimits) -> Payload:
    expected = [k for k, _ in _PAYLOAD_LAYOUT if k not in ("v", "type")]
    if sorted(body) != sorted(expected):
        raise ProtocolError("bad_message", f"PAYLOAD fields {sorted(body)} != {sorted(expected)}")
    for key, kind in _PAYLOAD_LAYOUT[2:]:
        want = bytes if kind == "bin" else int
        if not isinstance(body[key], want) or isinstance(body[key], bool):
            raise ProtocolError("bad_message", f"PAYLOAD: field {key!r} must be {want.__name__}")
    try:
        fmt = value_format_by_code(body["value_dtype"])
    except ValueError as e:
        raise ProtocolError("bad_message", f"PAYLOAD: {e}") from e
    alpha, n_test, n_train = body["alpha"], body["n_test"], body["n_train"]
    n = n_test + n_train
    if not 1 <= alpha <= limits.max_alpha:
        raise ProtocolError("alpha", f"PAYLOAD: alpha={alpha} outside [1, {limits.max_alpha}]")
    if n_test < 1 or n_train < 0 or n > limits.max_vectors:
        raise ProtocolError("bad_message", f"PAYLOAD: n_test={n_test}, n_train={n_train}: need "
                                           f"n_test >= 1 and at most {limits.max_vectors} vectors")
    if len(body["fingerprint"]) != FINGERPRINT_BYTES:
        raise ProtocolError("bad_message", f"PAYLOAD: fingerprint has {len(body['fingerprint'])} "
                                           f"bytes, expected {FINGERPRINT_BYTES}")
    sizes = {"ids": n * VECTOR_ID_BYTES, "labels": n * LABEL_BYTES,
             "scales": n * fmt.scale_bytes, "values": n * alpha * fmt.bytes_per_value}
    for key, size in sizes.items():
        if len(body[key]) != size:
            raise ProtocolError("bad_message", f"PAYLOAD: {key} has {len(body[key])} bytes, "
                                               f"expected {size} for n={n}, alpha={alpha}, {fmt.name}")
    for key, (lo, hi) in (("session_id", _INT_RANGES["session_id"]), ("seq", (0, MAX_SEQ))):
        if not lo <= body[key] <= hi:
            raise ProtocolError("bad_message", f"PAYLOAD: {key}={body[key]} outside [{lo}, {hi}]")
    return Payload(body["session_id"], body["seq"], body["fingerprint"], alpha, fmt.name,
                   n_test, n_train, np.frombuffer(body["ids"], "<u4"),
                   np.frombuffer(body["labels"], np.uint8), body["values"], body["scales"])
