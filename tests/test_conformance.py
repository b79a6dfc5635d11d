"""Conformance: each row of docs/conformance/<mode>.toml sent over a real socket to a real RX serving loop.

The RX is an :class:`~rx_node.daemon.RxNode` served by :func:`rx_node.serving.serve` on a loopback
TCP port (``tests.helpers.ServedRx``); the client is a raw ZeroMQ DEALER that speaks the wire protocol.
Each row gets its own session and connection. After the row's message the client sends a probe (a
message of an unknown type, always answered ERROR ``bad_message`` with seq -1 and never round-final):
everything that arrives before the probe's answer is the reply to the row, so "no CHANNEL follows"
is checked without any timing. The tables must name every ERROR code each mode can send.
"""

from __future__ import annotations

import os
import time
import tomllib
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from common.link.sidelink import PayloadLost, Sidelink, create_sidelink
from common.wire.protocol import PROTOCOL_VERSION, Channel, DecodeLimits, Error, Hello, Result, decode, encode
from rx_node.daemon import RxNode
from semalign.campaigns.pca_lora.refusal_bench import object_bomb
from tests.helpers import ServedRx, payload

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT / "docs" / "conformance"
PROBE = msgpack.packb({"v": PROTOCOL_VERSION, "type": "CONFORMANCE_PROBE"})
CRED = b"k" * 16


def table(mode: str) -> list[dict]:
    rows = tomllib.loads((TABLES / f"{mode}.toml").read_text())["case"]
    for row in rows:
        assert set(row) == {"id", "message", "mutation", "code", "final", "seq"}, row
        assert row["seq"] in ("request", "next", -1), row
    assert len({r["id"] for r in rows}) == len(rows), f"{mode}.toml: duplicate ids"
    return rows


class FaultyLink(Sidelink):
    """The loopback emulator, with faults a test switches on for the next use: ``lose`` (deliver raises
    PayloadLost), ``crash`` (deliver raises a bug), ``no_state`` (channel_state raises)."""

    name = "faulty"

    def __init__(self):
        self.inner = create_sidelink("loopback", trace="demo")
        self.lose = self.crash = self.no_state = False

    def channel_state(self, seq):
        if self.no_state:
            self.no_state = False
            raise OSError("the radio does not answer")
        return self.inner.channel_state(seq)

    def deliver(self, nbytes, state, received_ns, wait=True):
        if self.lose:
            self.lose = False
            raise PayloadLost("HARQ gave up after 4 transmissions")
        if self.crash:
            self.crash = False
            raise ZeroDivisionError("a bug in the link")
        return self.inner.deliver(nbytes, state, received_ns, wait)

    def close(self):
        self.inner.close()


class Client:
    """A raw DEALER: send frames, collect what comes back up to the probe's answer."""

    def __init__(self, address: str, security=None):
        from common.net.security import apply_client

        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if security is not None:
            apply_client(self.sock, security)
        self.sock.connect(address)

    def send(self, frame) -> None:
        if isinstance(frame, list):
            self.sock.send_multipart(frame)
        else:
            self.sock.send(frame)

    def settle(self, timeout_s: float = 60.0) -> list:
        """Send the probe; return every message received before its answer (decoded)."""
        self.sock.send(PROBE)
        got, end = [], time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.sock.poll(200):
                m = decode(self.sock.recv())
                if isinstance(m, Error) and m.seq == -1 and "CONFORMANCE_PROBE" in m.message:
                    return got
                got.append(m)
        raise AssertionError(f"no answer to the probe within {timeout_s} s; got {got}")

    def ask(self, frame, first: str | None = None, timeout_s: float = 60.0) -> list:
        """Send ``frame``; what comes back up to the probe's answer. ``first``: wait for a reply of this type
        before probing (a reply the RX holds for an emulated air time would arrive after the probe's)."""
        self.send(frame)
        got, end = [], time.monotonic() + timeout_s
        while first and not any(m.TYPE == first for m in got):
            assert time.monotonic() < end, f"no {first} within {timeout_s} s; got {got}"
            if self.sock.poll(200):
                got.append(decode(self.sock.recv()))
        return got + self.settle()

    def close(self):
        self.sock.close()


def check_row(row: dict, replies: list, seq: int) -> None:
    errors = [m for m in replies if isinstance(m, Error)]
    assert errors, f"{row['id']}: no ERROR, got {replies}"
    err = errors[0]
    assert err.code == row["code"], f"{row['id']}: {err}"
    assert err.message, row["id"]
    want_seq = {"request": seq, "next": seq + 1, -1: -1}[row["seq"]]
    assert err.seq == want_seq, f"{row['id']}: ERROR seq {err.seq}, table says {row['seq']} ({want_seq}); {err}"
    channels = [m.seq for m in replies if isinstance(m, Channel)]
    assert (seq + 1 in channels) == row["final"], \
        f"{row['id']}: CHANNELs {channels} after the ERROR; table says final={row['final']}"


def covers_every_code(mode: str, codes: set[str]) -> None:
    in_table = {r["code"] for r in table(mode)}
    assert codes <= in_table, f"{mode}.toml lacks rows for {sorted(codes - in_table)}"


# replies_unread is no one message's answer (a key's connections must leave replies untaken):
# tests/test_reply_budget.py checks it
COMMON_CODES = {"bad_message", "version", "oversize", "mode", "fingerprint", "params", "session_owner",
                "too_many_sessions", "no_session", "unexpected", "lost", "link", "internal"}

# ------------------------------------------------------------------ pca-lora

PCA_CODES = COMMON_CODES | {"alpha", "non_finite", "bad_label", "over_budget", "too_much_work", "parts_held"}
PCA_MAX_BYTES = 1 << 20
PCA_MAX_TEST = 30


@pytest.fixture(scope="module")
def pca_rx(digits_artifacts, digits):
    from common.modes.pca_lora.alignment import AdaptConfig, LoraAlignment
    from common.modes.pca_lora.artifacts import load_codec, load_model
    from common.modes.pca_lora.limits import RxLimits
    from common.modes.pca_lora.rx import PcaLoraRx

    codec, meta = load_codec(digits_artifacts)
    model = load_model(digits_artifacts, meta)
    link = FaultyLink()
    half = PcaLoraRx(codec, model, LoraAlignment(adapt=AdaptConfig(steps=5)), meta.n_classes,
                     RxLimits(max_test_vectors=PCA_MAX_TEST))
    node = RxNode({half.mode: half}, link, DecodeLimits(max_message_bytes=PCA_MAX_BYTES))
    served = ServedRx(node, PCA_MAX_BYTES)
    yield served, codec, link
    served.stop()


def pca_hello(codec, sid, credential=CRED, mode="pca-lora", fingerprint=None, **params) -> bytes:
    p = {"codec": codec.name, "d_raw": codec.d_raw, "d_pre": codec.d_max, "value_dtype": "float16",
         "deadline_s": 1.0, **params}
    p = {k: v for k, v in p.items() if v is not None}
    return encode(Hello("tx", sid, mode, fingerprint or codec.fingerprint, p, 0, 0, os.getpid(), time.time_ns(),
                        credential=credential))


def _repack(frame: bytes, **changes) -> bytes:
    body = msgpack.unpackb(frame, raw=False)
    body.update(changes)
    return msgpack.packb(body, use_bin_type=True)


def _pca_case(case: str, served, codec, link, digits, sid: int, client: Client):
    """Open what the case needs; return (frame(s) to send, the request's seq, a clean-up or None)."""
    def opened(**params):
        replies = client.ask(pca_hello(codec, sid, **params))
        assert any(isinstance(m, Hello) for m in replies), replies

    def p(**kw):
        return payload(codec, digits, session_id=sid, **{"seq": 0, **kw})

    hello_body = msgpack.unpackb(pca_hello(codec, sid), raw=False)
    if case.startswith("hello_"):
        frames = {
            "hello_not_msgpack_map": lambda: msgpack.packb([1, 2, 3]),
            "hello_missing_fingerprint": lambda: msgpack.packb({k: v for k, v in hello_body.items()
                                                                if k != "fingerprint"}),
            "hello_unknown_field": lambda: msgpack.packb({**hello_body, "color": "red"}),
            "hello_role_rx": lambda: msgpack.packb({**hello_body, "role": "rx"}),
            "hello_short_credential": lambda: pca_hello(codec, sid, credential=b"x" * 8),
            "hello_version": lambda: msgpack.packb({**hello_body, "v": 2}),
            "hello_mode": lambda: pca_hello(codec, sid, mode="slf"),
            "hello_fingerprint": lambda: pca_hello(codec, sid, fingerprint="ab" * 32),
            "hello_unknown_param": lambda: pca_hello(codec, sid, colour="red"),
            "hello_other_d_pre": lambda: pca_hello(codec, sid, d_pre=codec.d_max - 1),
            "hello_missing_deadline": lambda: pca_hello(codec, sid, deadline_s=None),
            "hello_deadline_true": lambda: pca_hello(codec, sid, deadline_s=True),
            "hello_train_parts_17": lambda: pca_hello(codec, sid, train_parts=17),
            "hello_value_dtype_float64": lambda: pca_hello(codec, sid, value_dtype="float64"),
        }
        if case == "hello_other_credential":
            opened()
            return pca_hello(codec, sid, credential=b"o" * 16), 0, None
        if case == "hello_too_many_sessions":
            cred = os.urandom(16)
            served.node.max_sessions_per_owner = 1
            assert any(isinstance(m, Hello) for m in client.ask(pca_hello(codec, sid, credential=cred)))
            return pca_hello(codec, sid + 1, credential=cred), 0, \
                lambda: setattr(served.node, "max_sessions_per_owner", 64)
        return frames[case](), 0, None
    if case == "payload_no_session":
        return encode(p()), 0, None
    if case == "payload_over_budget":
        opened(deadline_s=1e-6)
        return encode(p()), 0, None
    if case == "train_part_parts_held":
        import dataclasses

        from common.modes.pca_lora.messages import TrainPart
        half = served.node.halves["pca-lora"]
        limits, half.limits = half.limits, dataclasses.replace(half.limits, max_held_bytes_per_key=100)
        opened(train_parts=1)
        part = encode(TrainPart.build(sid, 3, codec.fingerprint, "float16", codec.encode(digits.x_train[:70], 10),
                                      np.arange(70), digits.y_train[:70], 0))
        return part, 3, lambda: setattr(half, "limits", limits)
    opened()
    seq = 3
    good = encode(p(seq=seq))
    if case == "raw_not_msgpack":
        return b"\xc1", -1, None
    if case == "two_frames":
        return [good, good], seq, None
    if case == "payload_truncated":
        return good[:-7], seq, None
    if case == "object_bomb":
        return object_bomb(64, session_id=sid, seq=seq), seq, None
    if case == "frame_over_limit":
        rest = len(good) - len(msgpack.unpackb(good)["values"])
        frame = _repack(good, values=bytes(PCA_MAX_BYTES + 100 - rest))
        assert PCA_MAX_BYTES < len(frame) <= PCA_MAX_BYTES + 200
        return frame, seq, None
    if case == "payload_version":
        return _repack(good, v=99), seq, None
    if case == "payload_extra_field":
        return _repack(good, colour="red"), seq, None
    if case == "payload_values_short":
        return _repack(good, values=msgpack.unpackb(good)["values"][:-1]), seq, None
    if case == "payload_unknown_value_dtype":
        return _repack(good, value_dtype=7), seq, None
    if case == "payload_value_dtype_not_the_sessions":
        return encode(p(seq=seq, dtype="int8")), seq, None
    if case == "payload_no_test_vectors":
        return _repack(good, n_test=0, n_train=70), seq, None
    if case == "train_part_without_parts":
        from common.modes.pca_lora.messages import TrainPart
        return _repack(good, type=TrainPart.TYPE, n_test=0, n_train=70), seq, None
    if case == "payload_alpha_zero":
        return _repack(good, alpha=0, values=b""), seq, None
    if case == "payload_alpha_above_d_pre":
        return encode(p(seq=seq, alpha=codec.d_max + 1)), seq, None
    if case == "payload_fingerprint":
        return encode(p(seq=seq, fingerprint="00" * 32)), seq, None
    if case == "payload_nan":
        body = msgpack.unpackb(good)
        values = bytearray(body["values"])
        values[0:2] = np.float16(np.nan).tobytes()
        return _repack(good, values=bytes(values)), seq, None
    if case == "payload_bad_label":
        body = msgpack.unpackb(good)
        labels = bytearray(body["labels"])
        labels[-1] = 10
        return _repack(good, labels=bytes(labels)), seq, None
    if case == "payload_too_much_work":
        return encode(p(seq=seq, n_test=PCA_MAX_TEST + 1, n_train=0)), seq, None
    if case == "result_to_the_rx":
        return encode(Result(sid, seq, {}, b"", {}, 1, 0, 0, 0, 0)), seq, None
    if case == "payload_lost":
        link.lose = True
        return good, seq, None
    if case == "payload_internal":
        link.crash = True
        return good, seq, None
    if case == "payload_link_state":  # round 0, whose state HELLO's CHANNEL announced: the link is asked
        link.no_state = True  # only for the CHANNEL of round 1, after the RESULT
        return encode(p(seq=0)), 0, None
    raise KeyError(f"pca-lora.toml case {case!r} has no implementation in tests/test_conformance.py")


def test_pca_lora_table_covers_every_code():
    covers_every_code("pca-lora", PCA_CODES)


@pytest.mark.parametrize("row", table("pca-lora"), ids=lambda r: r["id"])
def test_pca_lora_conformance(row, pca_rx, digits):
    served, codec, link = pca_rx
    sid = 50_000 + table("pca-lora").index(row) * 2
    client = Client(served.address)
    cleanup = None
    try:
        frame, seq, cleanup = _pca_case(row["id"], served, codec, link, digits, sid, client)
        replies = client.ask(frame, first="RESULT" if row["id"] == "payload_link_state" else None)
        check_row(row, replies, seq)
    finally:
        if cleanup:
            cleanup()
        link.lose = link.crash = link.no_state = False
        client.close()


# ------------------------------------------------------------------ slf

SLF_CODES = {"fingerprint", "params", "dtype", "bad_message", "oversize", "no_download", "wrong_session", "n_frozen",
             "bad_tensor", "unknown_layer", "duplicate", "shape", "size", "non_finite", "partial_layer",
             "frozen_layer", "stale_alignment", "bad_label"}


@pytest.fixture(scope="module")
def slf_rx(tmp_path_factory, digits):
    from common.modes.base import get_mode
    from common.modes.slf.pretrain import pretrain_and_save
    from tests.test_slf_mode import RX_CFG

    root = tmp_path_factory.mktemp("slf-conf")
    pretrain_and_save(RX_CFG, digits, root / "rx")
    half = get_mode("slf").build_rx({"artifacts": root / "rx", "eps": 0.01})
    served = ServedRx(RxNode({"slf": half}, FaultyLink()))
    yield served, half
    served.stop()


def _slf_case(case: str, half, sid: int, client: Client):
    from common.modes.slf.dmc import packed_size_bytes
    from common.modes.slf.messages import DecoderRequest, Resume, Semantic, Upload, arch_params
    from common.modes.slf.transceiver import DECODER_LAYERS

    params = {**arch_params(half.shape), "n_frozen": 2, "trx": "tx"}

    def hello(**over):
        p = {**params, **over}
        return encode(Hello("tx", sid, "slf", over.pop("_fp", half.fingerprint), p, 0, 0, os.getpid(),
                            time.time_ns(), credential=CRED))

    if case == "hello_fingerprint":
        return encode(Hello("tx", sid, "slf", "ab" * 32, params, credential=CRED)), 0
    if case == "hello_other_n_codewords":
        return hello(n_codewords=half.shape.n_codewords * 2), 0
    if case == "hello_unknown_param":
        return hello(colour="red"), 0
    assert any(isinstance(m, Hello) for m in client.ask(hello()))
    seq = 2
    s = half.shape
    count = s.indices_per_image * 2
    semantic = dict(session_id=sid, seq=seq, token=b"", n=2, indices=bytes(packed_size_bytes(count, s.n_codewords)),
                    labels=bytes([1, 2]), pixels=b"")
    if case == "semantic_no_images":
        return encode(Semantic(**{**semantic, "n": 0})), seq
    if case == "semantic_indices_short":
        return encode(Semantic(**{**semantic, "indices": semantic["indices"][:-1]})), seq
    if case == "semantic_no_labels_field":
        body = msgpack.unpackb(encode(Semantic(**semantic)), raw=False)
        del body["labels"]
        return msgpack.packb(body, use_bin_type=True), seq
    if case == "semantic_stale_token":
        return encode(Semantic(**{**semantic, "token": b"t" * 16})), seq
    if case == "semantic_bad_label":
        return encode(Semantic(**{**semantic, "labels": bytes([1, s.n_classes])})), seq
    if case == "resume_short_credential":
        return encode(Resume(sid, seq, b"c" * 8)), seq
    if case == "download_dtype":
        return encode(DecoderRequest(sid, seq, "int8")), seq
    if case == "download_unknown_field":
        return _repack(encode(DecoderRequest(sid, seq)), colour="red"), seq
    if case == "upload_no_download":
        return encode(Upload(sid, seq, b"t" * 16, 0, [])), seq
    got = client.ask(encode(DecoderRequest(sid, seq)), first="SLF_DECODER")
    reply = next(m for m in got if m.TYPE == "SLF_DECODER")
    token, wire = reply.token, [dict(t) for t in reply.tensors]
    up = lambda tensors, n_frozen=0, tok=token: encode(Upload(sid, seq, tok, n_frozen, tensors))  # noqa: E731
    if case == "upload_oversize":
        return up([{"name": "x", "dtype": "float32", "shape": [1], "data": bytes(half.upload_limit)}]), seq
    if case == "upload_wrong_token":
        return up(wire, tok=b"w" * 16), seq
    if case == "upload_n_frozen_5":
        return up(wire, n_frozen=len(DECODER_LAYERS) + 1), seq
    first = wire[0]
    edits = {
        "upload_bad_tensor": lambda: [{k: v for k, v in first.items() if k != "dtype"}, *wire[1:]],
        "upload_unknown_layer": lambda: [{**first, "name": "decoder.9.weight"}, *wire[1:]],
        "upload_duplicate_tensor": lambda: [first, first, *wire[1:]],
        "upload_float64": lambda: [{**first, "dtype": "float64", "data": first["data"] * 2}, *wire[1:]],
        "upload_shape": lambda: [{**first, "shape": [1, 2]}, *wire[1:]],
        "upload_size": lambda: [{**first, "data": first["data"][:-4]}, *wire[1:]],
        "upload_non_finite": lambda: [{**first, "data": np.full(len(first["data"]) // 4, np.inf, "<f4").tobytes()},
                                      *wire[1:]],
        "upload_partial_layer": lambda: [t for t in wire if t["name"] != "decoder.0.bias"],
    }
    if case in edits:
        return up(edits[case]()), seq
    if case == "upload_frozen_layer":
        return up(wire, n_frozen=1), seq
    raise KeyError(f"slf.toml case {case!r} has no implementation in tests/test_conformance.py")


def test_slf_table_covers_every_code():
    covers_every_code("slf", SLF_CODES)


@pytest.mark.parametrize("row", table("slf"), ids=lambda r: r["id"])
def test_slf_conformance(row, slf_rx):
    served, half = slf_rx
    sid = 60_000 + table("slf").index(row) * 2
    client = Client(served.address)
    try:
        frame, seq = _slf_case(row["id"], half, sid, client)
        check_row(row, client.ask(frame), seq)
    finally:
        client.close()


# ------------------------------------------------------------------ fed-lora

FED_CODES = {"params", "fingerprint", "device_key", "bad_message", "device", "round_closed", "wait", "round",
             "not_planned", "late", "duplicate", "module", "n_samples", "bad_tensor", "unknown_layer", "dtype",
             "shape", "size", "non_finite", "missing"}


@pytest.fixture
def federation(tmp_path):
    """A fresh base station of 2 devices (policy fixed) served over a real socket; ``start(curve=...)``."""
    from common.modes.base import get_mode
    from common.net.security import RxSecurity, TxSecurity, generate_keypair, load_public, load_secret

    served = []

    def start(curve: bool = False):
        mode = get_mode("fed-lora")
        sec, client_sec = None, None
        if curve:
            allow = tmp_path / "allow"
            allow.mkdir()
            generate_keypair(tmp_path, "rx")
            generate_keypair(allow, "dev0")
            pub, _ = generate_keypair(tmp_path, "other")
            os.replace(pub, allow / pub.name)
            sec = RxSecurity(load_secret(tmp_path / "rx.key_secret"), allow)
            client_sec = TxSecurity(load_secret(tmp_path / "other.key_secret"), load_public(tmp_path / "rx.key"))
        half = mode.build_rx({"fed_devices": 2, "fed_policy": "fixed", **({"curve_allow": str(tmp_path / "allow")}
                                                                         if curve else {})})
        if curve:
            half.allow_dir = tmp_path / "allow"
        kw = {"security": sec} if sec else {}
        served.append(ServedRx(RxNode({"fed-lora": half}, FaultyLink()), 1 << 26, **kw))
        devs = [mode.build_tx({"fed_devices": 2, "device_id": k}) for k in range(2)]
        return served[-1], half, devs, client_sec

    yield start
    for s in served:
        s.stop()


def _fed_case(case: str, start, sid: int):
    from common.modes.fed_lora.messages import FedUpdate, adapter_from_wire, adapter_to_wire

    served, half, devs, client_sec = start(curve=case == "hello_device_key")
    client = Client(served.address, client_sec)

    def hello(dev, s, **over):
        params = {**dev.hello_params(), **over}
        params = {k: v for k, v in params.items() if v is not None}
        return encode(Hello("tx", s, "fed-lora", over.pop("_fp", None) or dev.fingerprint, params, 0, 0, 1, 0,
                            credential=CRED))

    d0, d1 = devs
    if case == "hello_no_fed_version":
        return client, hello(d0, sid, fed_version=None), 0
    if case == "hello_unknown_param":
        return client, hello(d0, sid, colour="red"), 0
    if case == "hello_wrong_n_samples":
        return client, hello(d0, sid, n_samples=len(d0.y) + 1), 0
    if case == "hello_fingerprint":
        return client, encode(Hello("tx", sid, "fed-lora", "ab" * 32, d0.hello_params(), credential=CRED)), 0
    if case == "hello_device_key":
        return client, hello(d0, sid), 0
    assert any(isinstance(m, Hello) for m in client.ask(hello(d0, sid)))
    if case not in ("poll_unknown_device", "plan_poll_wait"):
        other = Client(served.address)
        assert any(isinstance(m, Hello) for m in other.ask(hello(d1, sid + 1)))
        other.close()
    raw = lambda seq, attempt, want="plan", k=0: msgpack.packb(  # noqa: E731
        {"v": PROTOCOL_VERSION, "type": "FED_POLL", "session_id": sid, "seq": seq, "device_id": k,
         "attempt": attempt, "want": want, "waited_ms": 0})
    if case == "poll_attempt_64":
        return client, raw(0, 64), 0
    if case == "poll_attempt_jump":
        return client, raw(0, 5), 0
    if case == "poll_want_other":
        return client, raw(0, 0, "model"), 0
    if case == "poll_unknown_device":
        return client, raw(0, 0, k=1), 0
    if case == "poll_other_device":
        client.ask(raw(0, 0))
        return client, raw(0, 1, k=1), 0
    if case == "plan_poll_round_closed":
        half.station.next_round = 5
        return client, raw(2, 0), 2
    if case == "plan_poll_wait":
        for a in range(63):
            got = client.ask(raw(0, a))
            assert any(m.TYPE == "FED_WAIT" for m in got), got
        return client, raw(0, 63), 0
    if case == "result_poll_unknown_round":
        return client, raw(3, 0, "result"), 3
    arrays = d0.task.get_adapter("all-r8")

    def update(seq, module="all-r8", tensors=None, n=None):
        return encode(FedUpdate(sid, seq, 0, module, len(d0.y) if n is None else n, 1.0, 0.1,
                                adapter_to_wire(arrays) if tensors is None else tensors))

    if case == "update_ahead":
        return client, update(1), 1
    if case == "update_before_plan":
        return client, update(0), 0
    if case == "update_late":
        half.station.next_round = 50
        return client, update(3), 3
    got = client.ask(raw(0, 0), first="FED_PLAN")
    plan = next(m for m in got if m.TYPE == "FED_PLAN")
    start_arrays = adapter_from_wire(plan.tensors, d0.shapes[plan.module])
    wire = adapter_to_wire({k: (v + np.float32(0.01)).astype(np.float32) for k, v in start_arrays.items()})

    def up(tensors=None, **kw):
        return update(0, plan.module, wire if tensors is None else tensors, **kw)

    first = wire[0]
    if case == "update_duplicate":
        got = client.ask(up(), first="FED_ACK")
        assert any(m.TYPE == "FED_ACK" for m in got), got
        return client, up(adapter_to_wire({k: (v + np.float32(0.02)).astype(np.float32)
                                           for k, v in start_arrays.items()})), 0
    other_module = next(m for m in d0.modules if m != plan.module)
    edits = {
        "update_module": lambda: update(0, other_module, wire),
        "update_n_samples": lambda: up(n=len(d0.y) + 1),
        "update_bad_tensor": lambda: up([{k: v for k, v in first.items() if k != "dtype"}, *wire[1:]]),
        "update_unknown_layer": lambda: up([*wire, {**first, "name": "extra.lora_A"}]),
        "update_float64": lambda: up([{**first, "dtype": "float64", "data": first["data"] * 2}, *wire[1:]]),
        "update_shape": lambda: up([{**first, "shape": [1, 1]}, *wire[1:]]),
        "update_size": lambda: up([{**first, "data": first["data"][:-4]}, *wire[1:]]),
        "update_non_finite": lambda: up([{**first, "data": np.full(len(first["data"]) // 4, np.nan,
                                                                   "<f4").tobytes()}, *wire[1:]]),
        "update_missing": lambda: up(wire[:-1]),
    }
    if case in edits:
        return client, edits[case](), 0
    raise KeyError(f"fed-lora.toml case {case!r} has no implementation in tests/test_conformance.py")


def test_fed_lora_table_covers_every_code():
    covers_every_code("fed-lora", FED_CODES)


@pytest.mark.parametrize("row", table("fed-lora"), ids=lambda r: r["id"])
def test_fed_lora_conformance(row, federation):
    sid = 70_000 + table("fed-lora").index(row) * 2
    client, frame, seq = _fed_case(row["id"], federation, sid)
    try:
        check_row(row, client.ask(frame), seq)
    finally:
        client.close()
