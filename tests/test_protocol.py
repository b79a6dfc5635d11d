import msgpack
import numpy as np
import pytest

from common.modes.pca_lora.budget import PayloadLayout
from common.wire.protocol import PROTOCOL_VERSION, Channel, DecodeLimits, Error, Hello, ProtocolError, Result, decode, encode
from common.modes.pca_lora.messages import Payload, payload_header_bytes

FP = "ab" * 32

MESSAGES = [
    Hello("tx", 7, "pca-lora", FP, {"codec": "pca", "d_raw": 784, "d_pre": 200, "value_dtype": "float16"},
          3, 0, 42, 1, 2, 3),
    Channel(7, 3, 12.5, 27, "qam256", "256QAM", 226.9e6, 0.01),
    Result(7, 3, {"alpha": 50, "n_test": 2, "acc_adapted": 1.0, "adapt": {"steps": 60}}, b"\x01\x02",
           {"finetune": 1.5}, 9, 1, 2, 3, 4),
    Error(7, -1, "bad_message", "nope"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.TYPE)
def test_round_trip(msg):
    assert decode(encode(msg)) == msg


def make_payload(rng, dtype="float16", n_test=3, n_train=5, alpha=7):
    z = rng.normal(size=(n_test + n_train, alpha)).astype(np.float32)
    labels = rng.integers(0, 10, n_test + n_train)
    return Payload.build(7, 11, FP, dtype, z, np.arange(len(z)), labels, n_test), z


@pytest.mark.parametrize("dtype,tol", [("float32", 0.0), ("float16", 2e-3), ("int8", 1.0 / 127)])
def test_payload_round_trip_each_dtype(rng, dtype, tol):
    p, z = make_payload(rng, dtype)
    frame = encode(p)
    q = decode(frame)
    assert (q.session_id, q.seq, q.alpha, q.n_test, q.n_train, q.value_dtype) == (7, 11, 7, 3, 5, dtype)
    assert q.fingerprint.hex() == FP
    np.testing.assert_array_equal(q.ids, np.arange(8))
    np.testing.assert_array_equal(q.labels, p.labels)
    peak = np.abs(z).max(axis=1, keepdims=True)
    assert np.all(np.abs(q.features() - z) <= tol * np.maximum(peak, 1) + 1e-7)
    # the frame is plain msgpack that any decoder reads
    body = msgpack.unpackb(frame)
    assert body["v"] == PROTOCOL_VERSION and body["type"] == "PAYLOAD"


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("n_test,n_train,alpha", [(1, 0, 1), (3, 300, 7), (500, 70000, 200)])
def test_payload_size_is_exactly_H_plus_n_vectors(rng, dtype, n_test, n_train, alpha):
    layout = PayloadLayout.for_dtype(dtype)
    z = np.zeros((n_test + n_train, alpha), np.float32)
    p = Payload.build(2**62, 2**40, FP, dtype, z, np.zeros(len(z)), np.zeros(len(z)), n_test)
    assert len(encode(p)) == layout.payload_bytes(alpha, n_test + n_train)
    assert layout.header_bytes == payload_header_bytes()


def test_version_mismatch_is_refused():
    body = msgpack.unpackb(encode(MESSAGES[0]))
    body["v"] = PROTOCOL_VERSION + 1
    with pytest.raises(ProtocolError, match="version") as e:
        decode(msgpack.packb(body))
    assert e.value.code == "version"


@pytest.mark.parametrize("frame,code,match", [
    (b"", "bad_message", "msgpack"),
    (b"\xc1garbage", "bad_message", "msgpack"),
    (msgpack.packb([1, 2]), "bad_message", "map"),
    (msgpack.packb({"v": PROTOCOL_VERSION, "type": "NOPE"}), "bad_message", "unknown message type"),
    (msgpack.packb({"v": PROTOCOL_VERSION, "type": "ERROR", "session_id": 1}), "bad_message", "missing"),
    (msgpack.packb({"v": PROTOCOL_VERSION, "type": "ERROR", "session_id": "x", "seq": 1, "code": "a",
                    "message": "b"}), "bad_message", "session_id"),
])
def test_garbage_is_named(frame, code, match):
    with pytest.raises(ProtocolError, match=match) as e:
        decode(frame)
    assert e.value.code == code


def test_truncated_payload(rng):
    frame = encode(make_payload(rng)[0])
    for cut in (1, 10, len(frame) // 2, len(frame) - 1):
        with pytest.raises(ProtocolError):
            decode(frame[:cut])


def test_payload_inconsistent_lengths(rng):
    body = msgpack.unpackb(encode(make_payload(rng)[0]))
    body["n_train"] += 1
    with pytest.raises(ProtocolError, match="expected"):
        decode(msgpack.packb(body))


def test_limits_refuse_oversize_and_huge_counts(rng):
    frame = encode(make_payload(rng)[0])
    with pytest.raises(ProtocolError, match="exceeds") as e:
        decode(frame, DecodeLimits(max_message_bytes=len(frame) - 1))
    assert e.value.code == "oversize"
    body = msgpack.unpackb(frame)
    body["n_train"] = 10**9
    with pytest.raises(ProtocolError, match="at most"):
        decode(msgpack.packb(body))


def test_alpha_outside_limits(rng):
    body = msgpack.unpackb(encode(make_payload(rng)[0]))
    body["alpha"] = 0
    with pytest.raises(ProtocolError) as e:
        decode(msgpack.packb(body))
    assert e.value.code == "alpha"


def test_non_finite_float_field():
    frame = msgpack.packb({"v": PROTOCOL_VERSION, "type": "CHANNEL", "session_id": 1, "seq": 0,
                           "sinr_db": 1.0, "mcs": 1, "mcs_table": "qam64", "modulation": "QPSK",
                           "rate_bps": float("nan"), "bler": 0.0})
    with pytest.raises(ProtocolError, match="rate_bps") as e:
        decode(frame)
    assert e.value.code == "non_finite"


def test_protocol_doc_states_the_real_header_sizes():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    assert f"H = {payload_header_bytes()} bytes" in doc
    assert f"version {PROTOCOL_VERSION}" in doc.splitlines()[0]
