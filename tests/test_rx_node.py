"""The RX's answers to good and bad input, driven without sockets."""

import msgpack
import numpy as np
import pytest

from common.wire.protocol import Channel, Error, Hello, Result, decode, encode
from tests.helpers import hello, payload, rx_node


@pytest.fixture
def node(digits_artifacts):
    return rx_node(digits_artifacts, max_message_bytes=50_000)


def open_session(node, peer=b"p1"):
    replies = [decode(f) for f in node.handle(peer, [hello(node.halves["pca-lora"].codec)])]
    assert isinstance(replies[0], Hello) and isinstance(replies[1], Channel) and replies[1].seq == 0
    return replies


def test_hello_estimates_clock_fields(node):
    h, ch = open_session(node)
    assert h.role == "rx" and h.params["d_pre"] == 40 and h.t_receive_ns <= h.t_transmit_ns
    assert ch.rate_bps > 0


def test_valid_round(node, digits):
    open_session(node)
    res, ch = [decode(f) for f in node.handle(b"p1", [encode(payload(node.halves["pca-lora"].codec, digits, alpha=8))])]
    assert isinstance(res, Result) and res.seq == 0 and len(res.predictions) == 20
    assert 0 <= res.fields["acc_pretrained"] <= 1 and 0 <= res.fields["acc_adapted"] <= 1
    assert set(res.timings_ms) >= {"reconstruct", "finetune", "classify", "deliver"}
    assert isinstance(ch, Channel) and ch.seq == 1


def nan_payload(node, digits):
    p = payload(node.halves["pca-lora"].codec, digits, dtype="float16")  # the session's value format
    values = bytearray(p.values)
    values[0:2] = np.float16(np.nan).tobytes()
    return encode(type(p)(**{**p.__dict__, "values": bytes(values)}))


def wrong_version(node, digits):
    body = msgpack.unpackb(encode(payload(node.halves["pca-lora"].codec, digits)))
    body["v"] = 99
    return msgpack.packb(body)


BAD = {
    "truncated": (lambda n, d: encode(payload(n.halves["pca-lora"].codec, d))[:-7], "bad_message"),
    "garbage": (lambda n, d: b"\x93\x01\x02", "bad_message"),
    "not msgpack": (lambda n, d: b"\xc1\xc1\xc1", "bad_message"),
    "wrong version": (wrong_version, "version"),
    "fingerprint": (lambda n, d: encode(payload(n.halves["pca-lora"].codec, d, fingerprint="00" * 32)), "fingerprint"),
    "alpha > d_pre": (lambda n, d: encode(payload(n.halves["pca-lora"].codec, d, alpha=41)), "alpha"),
    "oversize": (lambda n, d: encode(payload(n.halves["pca-lora"].codec, d, n_train=1200, alpha=40)), "oversize"),
    "nan values": (nan_payload, "non_finite"),
    "no session": (lambda n, d: encode(payload(n.halves["pca-lora"].codec, d, session_id=999)), "no_session"),
    "value_dtype not the session's": (lambda n, d: encode(payload(n.halves["pca-lora"].codec, d, dtype="int8")),
                                      "bad_message"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_named_error_and_next_round_succeeds(node, digits, case):
    make, code = BAD[case]
    open_session(node)
    replies = [decode(f) for f in node.handle(b"p1", [make(node, digits)])]
    assert isinstance(replies[0], Error), replies
    assert replies[0].code == code, replies[0]
    assert replies[0].message
    good = [decode(f) for f in node.handle(b"p1", [encode(payload(node.halves["pca-lora"].codec, digits, seq=1))])]
    assert isinstance(good[0], Result) and good[0].seq == 1


def test_multi_frame_message_refused(node):
    (err,) = [decode(f) for f in node.handle(b"p1", [b"a", b"b"])]
    assert isinstance(err, Error) and "1 frame" in err.message


def test_hello_with_other_basis_refused(node):
    (err,) = [decode(f) for f in node.handle(b"p1", [hello(node.halves["pca-lora"].codec, fingerprint="11" * 32)])]
    assert isinstance(err, Error) and err.code == "fingerprint"


def test_rx_refuses_messages_it_does_not_take(node):
    (err,) = [decode(f) for f in node.handle(b"p1", [encode(Error(1, 1, "x", "y"))])]
    assert err.code == "unexpected"


def test_sessions_are_kept_apart(node, digits):
    open_session(node, b"a")
    node.handle(b"b", [hello(node.halves["pca-lora"].codec, session_id=6)])
    (err,) = [decode(f) for f in node.handle(b"b", [encode(payload(node.halves["pca-lora"].codec, digits, session_id=5))])]
    assert err.code == "no_session"  # not round-final: no CHANNEL follows (the TX re-opens with HELLO)


def test_the_idlest_session_is_evicted_first(node, digits):
    """At the session cap a new HELLO evicts the session idle longest, not the oldest live one."""
    codec = node.halves["pca-lora"].codec
    node.max_sessions = 3
    for i, peer in enumerate((b"a", b"b", b"c")):
        node.handle(peer, [hello(codec, session_id=10 + i)])
    res = decode(node.handle(b"a", [encode(payload(codec, digits, session_id=10))])[0])
    assert res.TYPE == "RESULT"  # a is active again; b is now the idlest
    node.handle(b"d", [hello(codec, session_id=13)])
    assert set(node.sessions) == {10, 12, 13}
