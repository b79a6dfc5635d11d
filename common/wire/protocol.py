"""Wire protocol: the common envelope every mode shares, and the message registry.

Every message is one ZeroMQ frame holding one msgpack map with ``v``
(protocol version) and ``type``, then the message's fields. The common
messages are HELLO (opens a session and names its mode), CHANNEL (feedback
for a round), RESULT (the RX's answer to a round, with mode-specific
``fields``) and ERROR. Each mode registers its own request/reply types with
:func:`register_message` (``common/modes/<mode>/messages.py``); a type with a
fixed byte layout (pca-lora's PAYLOAD) brings its own ``encode_frame`` /
``decode_body``. ``docs/protocol.md`` is the byte layout of all of them; keep
the two in step (``PROTOCOL_VERSION`` changes with any layout change).

Pure functions: :func:`encode` (message -> bytes) and :func:`decode`
(bytes -> message), tested without sockets.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import ClassVar

import msgpack

PROTOCOL_VERSION = 3  # 3: HELLO's credential; sessions bound to the key/credential, not the connection
MAX_SEQ = 2**63 - 2  # sequence numbers (and seq + 1, the next round's) fit a signed 64-bit int
MAX_SESSION_ID = 2**63 - 1
CONTROL_MAX_BYTES = 1 << 20  # HELLO, CHANNEL, RESULT, ERROR: at most 1 MiB each
# fields whose range the decoder checks: name -> (lowest, highest); ERROR's seq may be -1
_INT_RANGES = {"session_id": (0, MAX_SESSION_ID), "seq": (0, MAX_SEQ + 1), "next_seq": (0, MAX_SEQ)}


class ProtocolError(ValueError):
    """A message that cannot be accepted. ``code`` is a short machine-readable class."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DecodeLimits:
    """Hard limits checked before and while decoding (no memory blow-up from a length field).

    ``max_message_bytes``: any frame; ``max_vectors``/``max_alpha``: pca-lora
    payloads; ``max_str_len``/``max_container_len``: msgpack strings, arrays, maps;
    ``max_objects``: msgpack objects in one frame (every value, key and container
    counts one; see :func:`check_msgpack_cost`).
    """

    max_message_bytes: int = 64 * 2**20
    max_vectors: int = 200_000
    max_alpha: int = 4096
    max_str_len: int = 4096
    max_container_len: int = 256
    max_objects: int = 16384

    def __post_init__(self):
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"{f.name} must be positive, got {getattr(self, f.name)}")


# ---------------------------------------------------------------- common messages


@dataclass(frozen=True)
class Hello:
    """Handshake, both ways. TX -> RX opens a session in ``mode``; RX -> TX accepts it.

    ``params``: the mode's session parameters (``docs/protocol.md`` lists them
    per mode; the RX answers with its own). ``fingerprint``: hex digest of the
    artifacts both ends must share. Clock fields follow NTP: the TX sets
    ``t_origin_ns``; the RX echoes it and adds ``t_receive_ns``/``t_transmit_ns``
    (its wall clock, ns since epoch). ``credential``: TX -> RX, 16..64 random
    bytes the TX keeps for the session's life; on a plain socket the session
    is bound to it (whoever presents it may continue the session from any
    connection; not authenticated: it travels in clear). Empty from the RX.
    """

    TYPE: ClassVar[str] = "HELLO"
    max_bytes: ClassVar[int] = CONTROL_MAX_BYTES
    role: str
    session_id: int
    mode: str
    fingerprint: str
    params: dict
    next_seq: int = 0
    max_message_bytes: int = 0
    pid: int = 0
    t_origin_ns: int = 0
    t_receive_ns: int = 0
    t_transmit_ns: int = 0
    credential: bytes = b""


@dataclass(frozen=True)
class Channel:
    """RX -> TX channel feedback for round ``seq`` (units in the names; rate in bit/s)."""

    TYPE: ClassVar[str] = "CHANNEL"
    max_bytes: ClassVar[int] = CONTROL_MAX_BYTES
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
    """RX -> TX outcome of round ``seq`` (any mode).

    ``fields``: the mode's per-round result fields (``docs/protocol.md``).
    ``predictions``: uint8 bytes, one class id per test item (may be empty).
    ``timings_ms``: RX stage durations. ``t_*_ns``: RX wall clock at receipt,
    delivery (after the link's air time), end of decoding the received
    representation, and reply. ``request_digest``: :func:`request_digest` of
    the request this answers, filled in by the RX daemon; the TX accepts a
    reply only when it matches what it sent.
    """

    TYPE: ClassVar[str] = "RESULT"
    max_bytes: ClassVar[int] = CONTROL_MAX_BYTES
    session_id: int
    seq: int
    fields: dict
    predictions: bytes
    timings_ms: dict
    rx_pid: int
    t_receive_ns: int
    t_delivered_ns: int
    t_decoded_ns: int
    t_transmit_ns: int
    request_digest: bytes = b""


@dataclass(frozen=True)
class Error:
    """Refusal of a message; ``seq`` is -1 when it could not be read."""

    TYPE: ClassVar[str] = "ERROR"
    max_bytes: ClassVar[int] = CONTROL_MAX_BYTES
    session_id: int
    seq: int
    code: str
    message: str


REQUEST_DIGEST_BYTES = 16


def request_digest(frame: bytes) -> bytes:
    """The first 16 bytes of sha256 of a request frame: binds a reply to the request it answers."""
    return hashlib.sha256(frame).digest()[:REQUEST_DIGEST_BYTES]


MESSAGE_TYPES: dict[str, type] = {}


def register_message(cls: type) -> type:
    """Add a message class (a frozen dataclass with ``TYPE``) to the wire registry.

    A class may define ``encode_frame(self) -> bytes`` and a classmethod
    ``decode_body(body: dict, limits) -> msg`` for a fixed layout; otherwise
    its fields are written as a msgpack map and checked against their
    annotations (int, float, str, bytes, dict, list, bool). ``max_bytes``
    (class attribute, optional) caps its frame size below the RX's limit.
    """
    known = MESSAGE_TYPES.get(cls.TYPE)
    if known is not None and known is not cls:
        raise ValueError(f"message type {cls.TYPE!r} is already registered by {known.__module__}")
    MESSAGE_TYPES[cls.TYPE] = cls
    return cls


for _cls in (Hello, Channel, Result, Error):
    register_message(_cls)


# ---------------------------------------------------------------- encode / decode


def encode(msg) -> bytes:
    """Serialize one message to a single frame."""
    custom = getattr(msg, "encode_frame", None)
    if custom is not None:
        return custom()
    body = {"v": PROTOCOL_VERSION, "type": msg.TYPE}
    body.update(asdict(msg))
    return msgpack.packb(body, use_bin_type=True)


DECODE_SLACK_BYTES = 1 << 20  # strings and bins may decode to 2 x the frame + this (small frames' non-ASCII text)
# msgpack type bytes 0xc0..0xdf -> (kind, bytes of the length or value after the type byte)
_SKIP, _BIN, _STR, _ARRAY, _MAP, _BAD = range(6)
_HEADS = [(_SKIP, 0), (_BAD, 0), (_SKIP, 0), (_SKIP, 0),  # nil, never used, false, true
          (_BIN, 1), (_BIN, 2), (_BIN, 4),  # bin 8/16/32
          (_BAD, 0), (_BAD, 0), (_BAD, 0),  # ext 8/16/32: unpackb refuses every ext (max_ext_len 0)
          (_SKIP, 4), (_SKIP, 8),  # float 32/64
          (_SKIP, 1), (_SKIP, 2), (_SKIP, 4), (_SKIP, 8), (_SKIP, 1), (_SKIP, 2), (_SKIP, 4), (_SKIP, 8),  # u/int
          (_BAD, 0), (_BAD, 0), (_BAD, 0), (_BAD, 0), (_BAD, 0),  # fixext 1/2/4/8/16: refused likewise
          (_STR, 1), (_STR, 2), (_STR, 4), (_ARRAY, 2), (_ARRAY, 4), (_MAP, 2), (_MAP, 4)]


def check_msgpack_cost(frame, limits: DecodeLimits) -> None:
    """Refuse a frame whose msgpack decoding would build too much, reading its headers only.

    ``bad_message`` when it announces more than ``limits.max_objects`` objects
    (a container's entries count as soon as its header is read, so a nesting
    of small arrays is refused before its contents are walked), or when its
    strings and bins would take more than twice the frame plus
    :data:`DECODE_SLACK_BYTES` (a non-ASCII string counts 4 bytes per byte:
    its worst case as a Python str). Decoding what passes allocates at most
    that plus ~100 B per object. Builds nothing; costs at most ``max_objects`` header reads.
    Malformed input (truncated, byte 0xc1, an ext type, a length over the limits) stops the
    walk and is left to ``msgpack.unpackb``, which refuses it where the walk
    stopped, having built no more objects than were counted.
    """
    n, pos, pending, objects, data = len(frame), 0, 1, 0, 0
    while pending and pos < n:
        b = frame[pos]
        pos += 1
        pending -= 1
        objects += 1
        if b <= 0x7f or b >= 0xe0:  # fixint
            continue
        if b <= 0x9f:  # fixmap, fixarray
            pending += (b & 0x0f) * (2 if b <= 0x8f else 1)
            kind = _ARRAY
        elif b <= 0xbf:  # fixstr
            kind, size = _STR, b & 0x1f
        else:
            kind, width = _HEADS[b - 0xc0]
            if kind == _SKIP:
                pos += width
                continue
            if kind == _BAD:
                return
            size = int.from_bytes(frame[pos:pos + width], "big")
            pos += width
            if kind == _ARRAY or kind == _MAP:
                pending += size * (2 if kind == _MAP else 1)
        if kind == _ARRAY or kind == _MAP:
            if objects + pending > limits.max_objects:
                raise ProtocolError("bad_message", f"message of {n} bytes announces more than "
                                                   f"{limits.max_objects} msgpack objects")
            continue
        if pos + size > n or (kind == _STR and size > limits.max_str_len):
            return
        data += size if kind == _BIN or bytes(frame[pos:pos + size]).isascii() else 4 * size
        pos += size
        if data > 2 * n + DECODE_SLACK_BYTES:
            raise ProtocolError("bad_message", f"message of {n} bytes would decode to more than "
                                               f"{2 * n + DECODE_SLACK_BYTES} bytes of strings and bins")


def unpack(frame, limits: DecodeLimits = DecodeLimits(), strict_map_key: bool = True):
    """``msgpack.unpackb`` of one frame (bytes or a buffer) under ``limits``, after
    :func:`check_msgpack_cost`; any failure is ``ProtocolError("bad_message")``."""
    check_msgpack_cost(frame, limits)
    try:
        return msgpack.unpackb(
            frame, raw=False, strict_map_key=strict_map_key, max_bin_len=limits.max_message_bytes,
            max_str_len=limits.max_str_len, max_array_len=limits.max_container_len,
            max_map_len=limits.max_container_len, max_ext_len=0)
    except Exception as e:  # msgpack raises several unrelated classes for bad bytes
        raise ProtocolError("bad_message", f"not a msgpack message ({type(e).__name__}: {e})") from e


IDS_PREFIX_BYTES = 4096  # a request's type, session_id and seq are read from this much of its frame


def request_ids(frame) -> tuple[str, int, int] | None:
    """``(type, session_id, seq)`` of a request or reply frame (bytes or a buffer), read from the head of its
    msgpack map (the first :data:`IDS_PREFIX_BYTES`; every message's envelope is written before its payload,
    whose values are skipped, not built), or None when they are not all there as a str and two ints in range.
    What the RX's front end reads of a request, and of a reply it could not queue (no message is built)."""
    u = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=IDS_PREFIX_BYTES)
    u.feed(memoryview(frame)[:IDS_PREFIX_BYTES])
    found: dict = {}
    try:
        for _ in range(u.read_map_header()):
            key = u.unpack()
            if key in ("type", "session_id", "seq") and key not in found:
                found[key] = u.unpack()
                if len(found) == 3:
                    break
            else:
                u.skip()
    except Exception:  # msgpack raises several classes for a cut or bad head
        return None
    kind, sid, seq = found.get("type"), found.get("session_id"), found.get("seq")
    if isinstance(kind, str) and type(sid) is int and type(seq) is int and 0 <= sid <= MAX_SESSION_ID \
            and 0 <= seq <= MAX_SEQ:
        return kind, sid, seq
    return None


def decode(frame: bytes, limits: DecodeLimits = DecodeLimits()):
    """Parse one frame (bytes or a buffer); raises :class:`ProtocolError` naming what is wrong."""
    if len(frame) > limits.max_message_bytes:
        raise ProtocolError("oversize", f"message of {len(frame)} bytes exceeds the limit of "
                                        f"{limits.max_message_bytes} bytes")
    body = unpack(frame, limits)
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
    cap = getattr(cls, "max_bytes", None)
    if cap is not None and len(frame) > cap:
        raise ProtocolError("oversize", f"{kind} of {len(frame)} bytes exceeds its limit of {cap} bytes")
    custom = getattr(cls, "decode_body", None)
    if custom is not None:
        return custom(body, limits)
    return message_from_body(cls, body)


_PY_TYPES = {"int": (int,), "float": (float, int), "str": (str,), "bytes": (bytes,), "dict": (dict,),
             "list": (list,), "bool": (bool,)}


def message_from_body(cls, body: dict):
    """Build ``cls`` from a decoded map, checking field names, types, ranges and finiteness."""
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
        if not isinstance(v, ok) or (isinstance(v, bool) and f.type != "bool"):
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


def check_range(kind: str, key: str, value: int, lo: int, hi: int) -> None:
    """Raise ``bad_message`` when ``value`` of field ``key`` is outside ``[lo, hi]``."""
    if not lo <= value <= hi:
        raise ProtocolError("bad_message", f"{kind}: {key}={value} outside [{lo}, {hi}]")
