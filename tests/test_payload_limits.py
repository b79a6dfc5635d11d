"""A valid payload cannot stall the RX or cost more than its round allows."""

from __future__ import annotations

import time

import numpy as np

from common.modes.pca_lora.artifacts import load_codec, load_model
from common.link.sidelink import create_sidelink
from common.modes.pca_lora.adapt_config import AdaptConfig
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.messages import Payload
from common.modes.pca_lora.limits import RxLimits
from common.modes.pca_lora.rx import PcaLoraRx
from common.net.transport import TxSocket
from common.wire.protocol import Error, Result, decode, encode
from rx_node.daemon import RxNode
from tests.helpers import ServedRx, ask, hello, payload

DEEP_FADE_SEQ = 6  # the demo trace's QPSK MCS1 rounds (9.4 Mb/s) are 6 and 7


def _node(artifacts, **limits) -> RxNode:
    codec, meta = load_codec(artifacts)
    half = PcaLoraRx(codec, load_model(artifacts, meta), LoraAlignment(adapt=AdaptConfig(steps=20)),
                     meta.n_classes, RxLimits(**limits))
    return RxNode({half.mode: half}, create_sidelink("loopback", trace="demo", rounds=9))


def test_payload_over_the_announced_budget_is_refused(digits_artifacts, digits):
    node = _node(digits_artifacts)
    codec = node.halves["pca-lora"].codec
    node.handle(b"p", [hello(codec, deadline_s=0.0001)])  # 226.9 Mb/s x 0.1 ms = 2836 B
    small = decode(node.handle(b"p", [encode(payload(codec, digits, n_test=20, n_train=30))])[0])
    assert isinstance(small, Result)  # 203 + 50 x 25 B fits
    big = decode(node.handle(b"p", [encode(payload(codec, digits, seq=1, n_test=20, n_train=500))])[0])
    assert isinstance(big, Error) and big.code == "over_budget" and "exceeds the round's budget" in big.message
    again = decode(node.handle(b"p", [encode(payload(codec, digits, seq=2, n_test=20, n_train=30))])[0])
    assert isinstance(again, Result)  # the RX keeps serving


def test_a_deadline_above_the_rx_limit_is_refused_at_hello(digits_artifacts):
    node = _node(digits_artifacts, max_deadline_s=0.5)
    err = decode(node.handle(b"p", [hello(node.halves["pca-lora"].codec, deadline_s=2.0)])[0])
    assert isinstance(err, Error) and err.code == "params" and "deadline_s=2.0" in err.message


def test_more_test_vectors_than_the_rx_classifies_are_refused(digits_artifacts, digits):
    node = _node(digits_artifacts, max_test_vectors=100)
    codec = node.halves["pca-lora"].codec
    node.handle(b"p", [hello(codec)])
    err = decode(node.handle(b"p", [encode(payload(codec, digits, n_test=200, n_train=0))])[0])
    assert isinstance(err, Error) and err.code == "too_much_work"


def _ask(sock: TxSocket, frame: bytes, want: str, timeout_s: float = 10.0):
    return ask(sock, frame, (want,), timeout_s)[1]


def test_one_peers_air_time_does_not_hold_another(digits_artifacts, digits):
    """A 1.6 MB payload in a deep fade (1.4 s of emulated air time) must not delay another peer's round."""
    node = _node(digits_artifacts, max_deadline_s=5.0)
    codec = node.halves["pca-lora"].codec
    served = ServedRx(node, 64 << 20)
    address = served.address
    slow, fast = TxSocket(address), TxSocket(address)
    try:
        assert _ask(slow, hello(codec, session_id=1, next_seq=DEEP_FADE_SEQ, deadline_s=2.0, value_dtype="float32"), "HELLO")
        assert _ask(fast, hello(codec, session_id=2, next_seq=0), "HELLO")
        z = np.random.default_rng(0).normal(size=(10_000, codec.d_max)).astype(np.float32)
        big = Payload.build(1, DEEP_FADE_SEQ, codec.fingerprint, "float32", z, np.arange(len(z)),
                            np.resize(digits.y_train, len(z)), 100)
        big_frame = encode(big)
        assert len(big_frame) > 1_600_000
        t0 = time.monotonic()
        slow.send(big_frame)
        time.sleep(0.05)  # the slow round is in the RX first
        fast_result = _ask(fast, encode(payload(codec, digits, session_id=2, seq=0)), "RESULT")
        t_fast = time.monotonic() - t0
        slow_result = None
        while slow_result is None and time.monotonic() - t0 < 10:
            got = slow.recv(20)
            if got is not None and decode(got).TYPE == "RESULT":
                slow_result = decode(got)
        t_slow = time.monotonic() - t0
    finally:
        slow.close()
        fast.close()
        served.stop()
    airtime_s = slow_result.timings_ms["airtime"] / 1e3
    assert airtime_s > 1.3  # 1.6 MB at 9.4 Mb/s
    # order, not speed: the other peer's RESULT came while the slow one was still held for its air time
    # (the slow round's own work is bounded by its 400 ms wall-clock cap, so this holds on a loaded CPU too)
    assert t_fast < t_slow and t_slow >= airtime_s, (t_fast, t_slow, airtime_s)
    assert isinstance(fast_result, Result) and fast_result.seq == 0
