"""Hostile input: property tests of decode() and RxNode.handle (no crash, named ERROR, next round ok).

The coverage-guided run is ``tests/fuzz/fuzz_decode.py`` (atheris); see docs/security.md.
"""

import struct
import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.wire.protocol import (MESSAGE_TYPES, PROTOCOL_VERSION, DecodeLimits, Error, Hello, ProtocolError, Result,
                                  check_msgpack_cost, decode, encode)

from common.modes.pca_lora.messages import Payload
from semalign.campaigns.pca_lora.refusal_bench import object_bomb
from tests.helpers import hello, payload, rx_node

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def node(digits_artifacts):
    return rx_node(digits_artifacts, max_message_bytes=200_000)


@pytest.fixture(scope="module")
def good_frame(node, digits):
    return encode(payload(node.halves["pca-lora"].codec, digits, alpha=8, n_test=5, n_train=10))


def check_decode(frame: bytes, limits=DecodeLimits()):
    """decode() either refuses with a named ProtocolError or returns a well-formed message."""
    try:
        msg = decode(frame, limits)
    except ProtocolError as e:
        assert e.code and str(e)
        return None
    assert type(msg) in MESSAGE_TYPES.values()
    if isinstance(msg, Payload):
        assert msg.n_test >= 1 and 1 <= msg.alpha <= limits.max_alpha and msg.n <= limits.max_vectors
        assert msg.features().shape == (msg.n, msg.alpha)
    return msg


def check_round_after(node, digits, peer, seq):
    """After whatever came before, a HELLO + valid PAYLOAD from ``peer`` gives a RESULT."""
    node.handle(peer, [hello(node.halves["pca-lora"].codec, session_id=77)])
    res = decode(node.handle(peer, [encode(payload(node.halves["pca-lora"].codec, digits, seq=seq, session_id=77, alpha=6,
                                                   n_test=5, n_train=8))])[0])
    assert isinstance(res, Result) and res.seq == seq, res


# ---------------------------------------------------------------- decode


@FUZZ
@given(st.binary(max_size=512))
def test_decode_any_bytes(frame):
    check_decode(frame)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@st.composite
def message_bodies(draw):
    """msgpack maps shaped like our messages, with fields of any type, missing, or extra."""
    kind = draw(st.sampled_from(sorted(MESSAGE_TYPES)) | st.text(max_size=8))
    cls = MESSAGE_TYPES.get(kind)
    body = {"v": draw(st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION]) | msgpack_values), "type": kind}
    names = list(cls.__dataclass_fields__) if cls else []
    for name in names:
        if draw(st.integers(0, 9)) > 0:
            body[name] = draw(msgpack_values)
    body.update(draw(st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), msgpack_values, max_size=2)))
    return msgpack.packb(body, use_bin_type=True)


@FUZZ
@given(message_bodies())
def test_decode_structured_bodies(frame):
    check_decode(frame)


def _fields(frame: bytes) -> dict[str, tuple[int, int]]:
    """Offsets of each PAYLOAD value: key -> (start of the value's type byte, its length)."""
    out, i = {}, 3
    sizes = {0xCE: 5, 0xCF: 9}
    while i < len(frame):
        klen = frame[i] & 0x1F
        key = frame[i + 1:i + 1 + klen].decode()
        i += 1 + klen
        t = frame[i]
        if t in sizes:
            n = sizes[t]
        elif t & 0xE0 == 0xA0:
            n = 1 + (t & 0x1F)
        else:
            n = 5 + struct.unpack(">I", frame[i + 1:i + 5])[0]
        out[key] = (i, n)
        i += n
    return out


@FUZZ
@given(data=st.data())
def test_decode_mutated_payload_fields(good_frame, data):
    """Lengths, counts and types of a valid PAYLOAD overwritten with hostile values."""
    fields = _fields(good_frame)
    frame = bytearray(good_frame)
    for key in data.draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True)):
        start, n = fields[key]
        how = data.draw(st.sampled_from(["u32", "len", "type", "bytes"]))
        if how == "u32" and frame[start] in (0xCE, 0xCF):
            width = 4 if frame[start] == 0xCE else 8
            frame[start + 1:start + 1 + width] = data.draw(st.binary(min_size=width, max_size=width))
        elif how == "len" and frame[start] == 0xC6:
            frame[start + 1:start + 5] = struct.pack(">I", data.draw(
                st.sampled_from([0, 1, max(n - 6, 0), n - 4, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)))
        elif how == "type":
            frame[start] = data.draw(st.integers(0, 255))
        else:
            k = data.draw(st.integers(0, n - 1))
            frame[start + k] = data.draw(st.integers(0, 255))
    check_decode(bytes(frame))
    check_decode(bytes(frame)[:data.draw(st.integers(0, len(frame)))])


BOMBS = {
    "bin32 4 GiB": b"\xc6\xff\xff\xff\xff" + b"x" * 10,
    "str32 4 GiB": b"\xdb\xff\xff\xff\xff" + b"x" * 10,
    "array32 4G items": b"\xdd\xff\xff\xff\xff" + b"\x00" * 10,
    "map32 4G pairs": b"\xdf\xff\xff\xff\xff" + b"\x00" * 10,
    "ext32": b"\xc9\xff\xff\xff\xff\x01" + b"x" * 10,
    "nested arrays": b"\x91" * 100_000,
    "nested maps": b"\x81\xa1a" * 50_000,
    "map of 65535 keys": b"\xde\xff\xff" + b"\xa1a\xc0" * 65535,
    "payload bin 4 GiB": None,
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_length_field_bombs_allocate_nothing(good_frame, name):
    frame = BOMBS[name]
    if frame is None:  # a valid PAYLOAD whose values blob claims 4 GiB
        start, _ = _fields(good_frame)["values"]
        frame = good_frame[:start + 1] + b"\xff\xff\xff\xff" + good_frame[start + 5:]
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * len(frame) + 2**20, f"{name}: {peak} bytes allocated for a {len(frame)}-byte frame"


@pytest.mark.parametrize("limits,code,needle", [
    (DecodeLimits(max_message_bytes=100), "oversize", "limit of 100 bytes"),
    (DecodeLimits(max_vectors=10), "bad_message", "at most 10 vectors"),
    (DecodeLimits(max_alpha=7), "alpha", "outside [1, 7]"),
])
def test_configured_limits_name_the_problem(good_frame, limits, code, needle):
    with pytest.raises(ProtocolError) as e:
        decode(good_frame, limits)
    assert e.value.code == code and needle in str(e.value)


def test_str_and_container_limits():
    h = msgpack.packb({"v": 1, "type": "HELLO", "role": "x" * 5000})
    with pytest.raises(ProtocolError, match="bad_message|exceeds"):
        decode(h, DecodeLimits(max_str_len=4096))
    lst = msgpack.packb({"v": 1, "type": "HELLO", "role": list(range(300))})
    with pytest.raises(ProtocolError):
        decode(lst, DecodeLimits(max_container_len=256))



def _objects(value) -> int:
    """msgpack objects in ``value`` as :func:`check_msgpack_cost` counts them: every value, key and container."""
    if isinstance(value, dict):
        return 1 + sum(_objects(k) + _objects(v) for k, v in value.items())
    if isinstance(value, list):
        return 1 + sum(_objects(v) for v in value)
    return 1


_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=40)
                       | st.binary(max_size=300),
                       lambda kids: st.lists(kids, max_size=20) | st.dictionaries(st.text(max_size=8), kids, max_size=8),
                       max_leaves=200)


@FUZZ
@given(_VALUES)
def test_the_object_count_is_exact(value):
    """The header walk counts what unpackb builds: a budget of exactly that passes, one less is refused."""
    frame, n = msgpack.packb(value, use_bin_type=True), _objects(value)
    check_msgpack_cost(frame, DecodeLimits(max_objects=n))
    if n > 1 and isinstance(value, (list, dict)):
        with pytest.raises(ProtocolError, match="more than"):
            check_msgpack_cost(frame, DecodeLimits(max_objects=n - 1))


def _nested_bomb() -> bytes:  # 256 x 256 x 256 two-character strings (50.5 MB), no container over 256
    return object_bomb(256)


def _flat_bomb() -> bytes:  # a map of 255 keys, each an array of 255 floats: 65 536 objects
    return msgpack.packb({"v": PROTOCOL_VERSION, "type": "HELLO", **{f"k{i}": [0.5] * 255 for i in range(254)}})


def _wide_strings() -> bytes:  # 250 strings of 4 KB, each with one 4-byte character: 4x the frame as Python strs
    return msgpack.packb({"v": PROTOCOL_VERSION, "type": "ERROR", "x": ["\U0001F600" + "a" * 4000] * 250})


@pytest.mark.parametrize("build,needle", [(_nested_bomb, "announces more than 16384"),
                                          (_flat_bomb, "announces more than 16384"),
                                          (_wide_strings, "bytes of strings and bins")])
def test_object_and_allocation_bombs_build_nothing(build, needle):
    """Length limits let these through (no container over 256, no string over 4096 B); unpacked they took 26x
    their size (the nested one: 1.25 GiB and 2.4 s at the RX). Refused from their headers, building nothing."""
    frame = build()
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match=needle) as e:
            decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.code == "bad_message"
    assert peak < 2**16, f"{peak} bytes allocated refusing a {len(frame)}-byte frame"

@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_floats_refused(value):
    body = msgpack.unpackb(encode(Error(1, 1, "x", "y")))
    body.update(type="CHANNEL", session_id=1, seq=1, sinr_db=1.0, mcs=1, mcs_table="qam64", modulation="QPSK",
                rate_bps=value)
    del body["code"], body["message"]
    with pytest.raises(ProtocolError) as e:
        decode(msgpack.packb(body))
    assert e.value.code == "non_finite"


# ---------------------------------------------------------------- RxNode.handle


def check_handle(node, frames, peer=b"fuzz"):
    replies = node.handle(peer, frames)  # must not raise
    assert replies, "every message gets a reply"
    msgs = [decode(r) for r in replies]
    first = msgs[0]
    assert isinstance(first, (Error, Result, Hello)), first
    if isinstance(first, Error):
        assert first.code and first.message
    return msgs


@FUZZ
@given(st.lists(st.binary(max_size=300), min_size=0, max_size=3))
def test_handle_any_frames(node, digits, frames):
    check_handle(node, frames)


@FUZZ
@given(data=st.data())
def test_handle_mutated_payloads_then_valid_round(node, digits, good_frame, data):
    node.handle(b"m", [hello(node.halves["pca-lora"].codec)])
    frame = bytearray(good_frame)
    for _ in range(data.draw(st.integers(1, 4))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    check_handle(node, [bytes(frame)], peer=b"m")
    check_handle(node, [bytes(frame)[:data.draw(st.integers(0, len(frame)))]], peer=b"m")


@FUZZ
@given(st.fixed_dictionaries({
    "role": st.sampled_from(["tx", "rx"]) | st.text(max_size=5),
    "session_id": st.integers(0, 2**64 - 1),
    "mode": st.sampled_from(["pca-lora"]) | st.text(max_size=8),
    "params": st.fixed_dictionaries({
        "codec": st.sampled_from(["pca"]) | st.text(max_size=5),
        "d_raw": st.integers(-2**63, 2**64 - 1),
        "d_pre": st.integers(-2**63, 2**64 - 1),
        "value_dtype": st.sampled_from(["float16", "int8"]) | st.text(max_size=5),
        "deadline_s": st.floats(allow_nan=True) | st.integers(-2**63, 2**64 - 1) | st.text(max_size=3),
    }),
    "next_seq": st.integers(-2**63, 2**64 - 1),
    "max_message_bytes": st.integers(-2**63, 2**64 - 1),
}))
def test_handle_hello_fields(node, fields):
    body = {"v": PROTOCOL_VERSION, "type": "HELLO", "fingerprint": node.halves["pca-lora"].codec.fingerprint, **fields}
    check_handle(node, [msgpack.packb(body)], peer=b"h")


def test_valid_round_after_fuzzing(node, digits):
    for junk in (b"", b"\xc1", b"\xc6\xff\xff\xff\xff", b"\x91" * 5000):
        check_handle(node, [junk], peer=b"after")
    check_round_after(node, digits, b"after", seq=3)


def test_int8_payload_with_infinite_scale_refused(node, digits):
    node.handle(b"i8", [hello(node.halves["pca-lora"].codec, session_id=88, value_dtype="int8")])
    p = payload(node.halves["pca-lora"].codec, digits, dtype="int8", session_id=88, alpha=6, n_test=5, n_train=8)
    scales = bytearray(p.scales)
    scales[0:4] = np.float32(np.inf).tobytes()
    frame = encode(type(p)(**{**p.__dict__, "scales": bytes(scales)}))
    err = decode(node.handle(b"i8", [frame])[0])
    assert isinstance(err, Error) and err.code == "non_finite"


@pytest.mark.parametrize("seq", [2**63 - 1, 2**64 - 1])
def test_seq_at_the_top_of_its_range_refused(node, digits, seq):
    """Found by atheris: seq = 2**64-1 made the RX's CHANNEL for seq + 1 overflow msgpack."""
    start, _ = _fields(encode(payload(node.halves["pca-lora"].codec, digits)))["seq"]
    node.handle(b"top", [hello(node.halves["pca-lora"].codec)])
    frame = bytearray(encode(payload(node.halves["pca-lora"].codec, digits)))
    frame[start + 1:start + 9] = struct.pack(">Q", seq)
    (err,) = check_handle(node, [bytes(frame)], peer=b"top")
    assert err.code == "bad_message" and "seq" in err.message


def test_highest_seq_still_answered_with_decodable_replies(node, digits):
    """Found by atheris: the CHANNEL for seq + 1 must itself pass the decoder's range check."""
    node.handle(b"top", [hello(node.halves["pca-lora"].codec)])
    res, ch = check_handle(node, [encode(payload(node.halves["pca-lora"].codec, digits, seq=2**63 - 2))], peer=b"top")
    assert isinstance(res, Result) and ch.seq == 2**63 - 1


def test_binary_map_keys_refused(good_frame):
    """Found by atheris: a bin key beside str keys made the field check compare bytes with str."""
    body = msgpack.unpackb(good_frame)
    body[b"seq"] = 1
    with pytest.raises(ProtocolError, match="keys must be strings"):
        decode(msgpack.packb(body, use_bin_type=True))
