"""The slf mode over the real daemons: download, layer-frozen fine-tuning, upload, semantic rounds.

Two tiny transceivers (8x8 digits, K = 16) are pre-trained apart (different
seeds and channel eps) into artifacts once per module: "rx" (its decoder and
task head serve) and "tx" (its encoder and data send). Misaligned, the RX
decodes the TX's indices near chance; one alignment round repairs that.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from common.link.sidelink import create_sidelink
from common.modes.base import get_mode
from common.modes.slf.configs import TransceiverConfig
from common.modes.slf.messages import (
    MAX_DECODER_FRAME_BYTES,
    DecoderReply,
    DecoderRequest,
    Semantic,
    Upload,
    arch_fingerprint,
    arch_params,
    decoder_bytes,
    decoder_param_count,
    tensors_from_wire,
    tensors_to_wire,
)
from common.wire.tensors import TensorError
from common.modes.slf.pretrain import pretrain_and_save
from common.modes.slf.recovery import state_bytes
from common.modes.slf.rx import DECODER, SlfRx
from common.modes.slf.transceiver import DECODER_LAYERS, Transceiver, TransceiverShape, frozen_layers
from common.modes.slf.tx import SlfTx
from common.net.transport import RepliesUnread, RxSocket, TxSocket
from common.results.log import ResultsLog, load_results
from common.wire.protocol import DecodeLimits, Error, Hello, ProtocolError, decode, encode, request_ids
from rx_node.daemon import RxNode
from tests.helpers import ServedRx, start_rx, stop
from tx_node.daemon import HandshakeFailed, TxConfig, TxNode

SHAPE = TransceiverShape(image_size=8, widths=(8, 16), code_dim=8, n_codewords=16, head_channels=(8, 8),
                         head_hidden=32)
COMMON = dict(dataset="digits", epochs=20, head_epochs=20, batch_size=64, lr=1e-2, shape=SHAPE)
RX_CFG = TransceiverConfig("rx", eps=1e-3, seed=1, **COMMON)
TX_CFG = TransceiverConfig("tx", eps=0.05, seed=2, **COMMON)
# fine-tuning fast enough for a test: lr 1e-2 (the paper's 1e-4 needs far more steps on 1150 images)
TX_OPTS = {"finetune_epochs": 5, "finetune_lr": 1e-2, "n_images": 200, "n_frozen": 2}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("slf")
    for cfg in (RX_CFG, TX_CFG):
        pretrain_and_save(cfg, digits, root / cfg.name)
    return root


def rx_half(artifacts) -> SlfRx:
    return get_mode("slf").build_rx({"artifacts": artifacts / "rx", "eps": 0.01})


def tx_half(artifacts, cls=SlfTx, **opts) -> SlfTx:
    half = get_mode("slf").build_tx({"artifacts": artifacts / "tx", **TX_OPTS, **opts})
    return half if cls is SlfTx else cls(half.own, half.trx_config, half.data, half.config, half.artifacts)


@pytest.fixture
def rx_thread(artifacts):
    """An slf RX over real sockets in a thread of this process (loopback emulator, demo trace)."""
    served = ServedRx(RxNode({"slf": rx_half(artifacts)}, create_sidelink("loopback", trace="demo")))
    yield served.node, served.address
    served.stop()


def run(address, half, rounds, out, **cfg):
    cfg = {"hello_timeout_s": 1.0, "hello_attempts": 10, "clock_samples": 1, "result_timeout_s": 20.0,
           "round_attempts": 1, **cfg}
    node = TxNode(half, TxSocket(address), TxConfig(**cfg))
    try:
        return node.run(rounds, ResultsLog(out, {"mode": "slf", **half.config_record()}))
    finally:
        node.sock.close()


# ------------------------------------------------------------------ the four steps over real sockets


def test_alignment_round_repairs_a_misaligned_pair(rx_thread, artifacts, tmp_path):
    node, address = rx_thread
    half = tx_half(artifacts)
    records = run(address, half, 4, tmp_path)
    assert [r.status for r in records] == ["ok"] * 4, [r.error for r in records]
    before, align, after, again = (r.fields for r in records)
    assert [before["kind"], align["kind"], after["kind"]] == ["semantic", "align", "semantic"]
    assert before["decoder"] == "original" and after["decoder"] == "aligned"
    assert after["accuracy"] > before["accuracy"] + 0.2, (before, after)
    assert after["mse"] < 0.7 * before["mse"]
    # the upload carries exactly the changed layers: l = 2 freezes decoder.1 and decoder.2
    assert align["changed_layers"] == ["codebook", "decoder.0"] == align["installed_layers"]
    rx_state = node.halves["slf"].trx.decoder_state()
    changed = {k: t for k, t in rx_state.items() if k.rsplit(".", 1)[0] in align["changed_layers"]}
    assert align["upload_tensor_bytes"] == state_bytes(changed)
    assert 0 < align["upload_frame_bytes"] - align["upload_tensor_bytes"] < 400
    assert align["download_tensor_bytes"] == decoder_bytes(SHAPE) == state_bytes(rx_state)
    # recovery time: link-rate model at the announced rate, measured fine-tuning, Table I's model
    assert align["download_airtime_s"] == pytest.approx(align["download_frame_bytes"] * 8 / records[1].rate_bps)
    assert align["recovery_s"] == pytest.approx(align["download_airtime_s"] + align["finetune_s"]
                                                + align["upload_airtime_s"])
    t1 = align["table1"]
    assert t1["download_s"] == pytest.approx(align["download_tensor_bytes"] * 8 / 2e6)
    assert t1["total_s"] == pytest.approx(t1["download_s"] + t1["finetune_s"] + t1["upload_s"])
    assert align["acc_before"] == before["accuracy"] and align["finetune_steps"] > 0
    # the first semantic round after the alignment carries the whole recovery record
    row = load_results(tmp_path)["rounds"][2]
    assert row["recovery"]["acc_before"] == before["accuracy"] and row["recovery"]["acc_after"] == after["accuracy"]
    assert row["recovery"]["n_frozen"] == 2 and row["recovery"]["align_round"] == 1
    assert "recovery" not in again
    # the RX's own transceiver is untouched; the aligned decoder lives in the session
    session = next(iter(node.sessions.values()))
    assert not torch.equal(session.store[DECODER].decoder_state()["decoder.0.weight"],
                           node.halves["slf"].trx.decoder_state()["decoder.0.weight"])
    assert node.stats.ok == 4 and node.stats.failed == 0


class RefusesTheFirstDownload(RxSocket):
    """An RX socket with no room for the first decoder download, as when the key's earlier large replies
    sit unread (``--max-reply-bytes-per-key``)."""

    refused = 0

    def send(self, peer, frame, key=None):
        if not self.refused and (request_ids(frame) or ("",))[0] == DecoderReply.TYPE:
            self.refused += 1
            raise RepliesUnread(peer, "no room for it (test)", len(frame))
        super().send(peer, frame, key)


def test_a_download_answered_replies_unread_is_sent_again(artifacts, tmp_path):
    """ERROR replies_unread takes the download's place; the TX counts the reply as lost, sends the request
    again on a fresh connection and gets the reply from the RX's record: the round is not lost."""
    served = ServedRx(RxNode({"slf": rx_half(artifacts)}, create_sidelink("loopback", trace="demo")),
                      sock_cls=RefusesTheFirstDownload)
    try:
        records = run(served.address, tx_half(artifacts), 2, tmp_path, round_attempts=2, backoff_s=0.05)
    finally:
        served.stop()
    assert [r.status for r in records] == ["ok", "ok"], [r.error for r in records]
    align = records[1]
    assert align.fields["kind"] == "align" and "did not queue the reply" in align.error  # its download sent twice
    assert served.sock.refused == 1 and served.node.stats.replies_dropped == {"replies_unread": 1}
    assert served.node.stats.replayed == 1  # the download sent again: answered from the record


class Tampering(SlfTx):
    """Sends a bad upload in alignment rounds listed in ``BAD`` (seq -> how), a good one otherwise."""

    BAD = {0: "nan", 2: "shape", 4: "unknown", 6: "frozen"}

    def upload_tensors(self, res):
        items = super().upload_tensors(res)
        how = self.BAD.get(self._seq)
        if how == "nan":
            a = np.frombuffer(items[0]["data"], "<f4").copy()
            a[3] = np.nan
            items[0]["data"] = a.tobytes()
        elif how == "shape":
            items[0]["shape"] = items[0]["shape"][::-1] + [1]
        elif how == "unknown":
            items.append({**items[-1], "name": "encoder.0.weight"})
        elif how == "frozen":
            items += tensors_to_wire(res.model.decoder_state(["decoder.2"]))
        return items

    def align(self, seq, channel, rec, io):
        self._seq = seq
        return super().align(seq, channel, rec, io)


def test_bad_uploads_are_refused_and_the_rx_keeps_serving(rx_thread, artifacts, tmp_path):
    node, address = rx_thread
    half = tx_half(artifacts, Tampering, align_first=0, align_every=2, finetune_epochs=1)
    records = run(address, half, 10, tmp_path)
    codes = {0: "non_finite", 2: "shape", 4: "unknown_layer", 6: "frozen_layer"}
    for seq, code in codes.items():
        assert records[seq].status == "failed" and f"RX error {code}:" in records[seq].error, records[seq].error
        # the next round works, still on the RX's original decoder
        assert records[seq + 1].status == "ok" and records[seq + 1].fields["decoder"] == "original"
    assert records[8].status == "ok" and records[9].fields["decoder"] == "aligned"
    assert node.stats.errors_by_code == {c: 1 for c in codes.values()}
    assert node.stats.ok == 6


class ForeignToken(SlfTx):
    """Quotes another session's alignment token in its semantic rounds."""

    foreign = b""

    def check_hello_reply(self, params):
        problem = super().check_hello_reply(params)
        self.token = self.foreign
        return problem


def test_a_second_session_keeps_the_original_decoder(rx_thread, artifacts, tmp_path):
    _, address = rx_thread
    first = tx_half(artifacts, n_frozen=3)
    a = run(address, first, 3, tmp_path / "a")
    assert [r.status for r in a] == ["ok"] * 3 and a[2].fields["decoder"] == "aligned"
    # another session asks for the first session's alignment: refused, it is not installed there
    thief = tx_half(artifacts, ForeignToken)
    thief.foreign = first.token
    b = run(address, thief, 1, tmp_path / "b")
    assert b[0].status == "failed" and "stale_alignment" in b[0].error
    # a plain second session decodes with the original decoder: the same numbers as the first's round 0
    c = run(address, tx_half(artifacts), 1, tmp_path / "c")
    assert c[0].fields["decoder"] == "original"
    assert (c[0].fields["accuracy"], c[0].fields["mse"]) == (a[0].fields["accuracy"], a[0].fields["mse"])


def test_rx_refuses_an_slf_hello_with_another_k(rx_thread, artifacts, tmp_path):
    _, address = rx_thread
    other = dataclasses.replace(SHAPE, n_codewords=8)
    half = SlfTx(Transceiver(other), TransceiverConfig("k8", "digits", 0.0, 0, shape=other),
                 tx_half(artifacts).data)
    with pytest.raises(HandshakeFailed, match="fingerprint"):
        run(address, half, 1, tmp_path)
    # a HELLO that claims the RX's fingerprint but K = 8 is refused by the params check, naming K
    node = RxNode({"slf": rx_half(artifacts)}, create_sidelink("loopback", trace="demo"))
    params = {**arch_params(SHAPE), "n_codewords": 8}
    err = decode(node.handle(b"p", [encode(Hello("tx", 3, "slf", arch_fingerprint(SHAPE), params))])[0])
    assert isinstance(err, Error) and err.code == "params" and "n_codewords=8 != RX n_codewords=16" in err.message


def test_rx_daemon_process_aligns(artifacts, tmp_path):
    """The RX as a real `semalign rx --mode slf` process; l = 0 retrains the decoder from scratch."""
    proc, address = start_rx(artifacts / "rx", "--mode", "slf", "--eps", "0.01")
    try:
        records = run(address, tx_half(artifacts, n_frozen=0), 3, tmp_path, hello_attempts=60)
    finally:
        out = stop(proc)
    assert [r.status for r in records] == ["ok"] * 3, ([r.error for r in records], out)
    before, align, after = (r.fields for r in records)
    assert align["changed_layers"] == list(DECODER_LAYERS) and align["upload_tensor_bytes"] == decoder_bytes(SHAPE)
    assert after["accuracy"] > before["accuracy"] + 0.2
    assert records[1].rx_pid == proc.pid != records[1].tx_pid
    assert "installed codebook, decoder.0, decoder.1, decoder.2 (l=0" in out


# ------------------------------------------------------------------ messages and limits (no sockets)


def test_messages_round_trip():
    state = Transceiver(SHAPE).decoder_state()
    wire = tensors_to_wire(state)
    msgs = [DecoderRequest(1, 2), DecoderReply(1, 2, b"t" * 16, 16, 8, wire, 9, 10, 11),
            Upload(1, 2, b"t" * 16, 2, wire[:3]), Semantic(1, 3, b"", 2, b"\x12" * 16, b"\x01\x02", b"")]
    for msg in msgs:
        got = decode(encode(msg))
        assert type(got) is type(msg) and encode(got) == encode(msg)
    back = tensors_from_wire(decode(encode(msgs[1])).tensors, state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    too_big = Upload(1, 2, b"t" * 16, 0, [{"name": "x", "dtype": "float32", "shape": [1],
                                           "data": bytes(MAX_DECODER_FRAME_BYTES)}])
    with pytest.raises(ProtocolError, match="SLF_UPLOAD of .* exceeds its limit") as e:
        decode(encode(too_big), DecodeLimits(max_message_bytes=1 << 26))
    assert e.value.code == "oversize"


@pytest.mark.parametrize("edit,code", [
    (lambda t: t.__setitem__("dtype", "float16"), "dtype"),
    (lambda t: t.__setitem__("shape", [1, 2]), "shape"),
    (lambda t: t.__setitem__("data", t["data"][:-4]), "size"),
    (lambda t: t.__setitem__("name", "decoder.9.weight"), "unknown_layer"),
    (lambda t: t.__setitem__("data", np.full(len(t["data"]) // 4, np.inf, "<f4").tobytes()), "non_finite"),
    (lambda t: t.pop("dtype"), "bad_tensor"),
    (lambda t: t.__setitem__("shape", "16x8"), "bad_tensor"),
])
def test_tensor_checks_name_the_problem(edit, code):
    state = Transceiver(SHAPE).decoder_state()
    wire = tensors_to_wire(state)
    edit(wire[0])
    with pytest.raises(TensorError) as e:
        tensors_from_wire(wire, state)
    assert e.value.code == code


def test_sizes_follow_the_architecture():
    for shape in (SHAPE, TransceiverShape(), TransceiverShape(channels=3, widths=(16, 8), n_codewords=5)):
        assert decoder_param_count(shape) == sum(t.numel() for t in Transceiver(shape).decoder_state().values())
    assert decoder_bytes(TransceiverShape()) == 171_396  # the paper's architecture, float32
    assert arch_fingerprint(SHAPE) != arch_fingerprint(dataclasses.replace(SHAPE, n_codewords=8))
    assert frozen_layers(2) == ("decoder.1", "decoder.2")


def test_a_reopened_session_realigns(rx_thread, artifacts, tmp_path):
    """The RX's store goes with its session: after a re-HELLO the TX falls back to its own encoder and re-aligns."""
    _, address = rx_thread
    half = tx_half(artifacts, finetune_epochs=1)
    node = TxNode(half, TxSocket(address), TxConfig(hello_timeout_s=1.0, clock_samples=1, round_attempts=1))
    try:
        first = node.run(2, ResultsLog(tmp_path, {}))
        assert [r.fields["kind"] for r in first] == ["semantic", "align"] and half.token
        again = node.run(2, ResultsLog(tmp_path, {}, resume=True), first_seq=2)  # handshakes again
    finally:
        node.sock.close()
    assert [r.status for r in again] == ["ok", "ok"]
    assert [r.fields["kind"] for r in again] == ["align", "semantic"] and again[1].fields["decoder"] == "aligned"


@pytest.mark.parametrize("first,every,aligned", [(1, 0, [1]), (0, 3, [0, 3, 6]), (2, 1, [2, 3, 4, 5, 6, 7])])
def test_alignment_schedule(first, every, aligned):
    from common.modes.slf.tx_config import SlfTxConfig

    cfg = SlfTxConfig(align_first=first, align_every=every)
    assert [s for s in range(8) if cfg.is_alignment(s)] == aligned
    with pytest.raises(ValueError, match="n_frozen"):
        SlfTxConfig(n_frozen=5)


def test_eps_comes_from_the_rx_or_the_bler(artifacts):
    from common.link.channel import build_trace

    channel = build_trace("demo", 9)[6]  # the deep fade: BLER 0.063
    half = tx_half(artifacts)
    half.rx_params = rx_half(artifacts).hello_params()
    assert half.eps_for(channel) == 0.01 and half.rx_params["eps_source"] == "fixed"
    bler_rx = get_mode("slf").build_rx({"artifacts": artifacts / "rx", "eps_from_bler": True})
    half.rx_params = bler_rx.hello_params()
    assert half.rx_params["eps"] is None and half.eps_for(channel) == channel.bler
    assert tx_half(artifacts, finetune_eps=0.2).eps_for(channel) == 0.2
    assert rx_half(artifacts).hello_params()["n_codewords"] == 16


def test_pretrain_cli_writes_slf_artifacts(tmp_path):
    from typer.testing import CliRunner

    from common.data.datasets import DatasetUnavailable, load_dataset
    from common.modes.slf.artifacts import load_transceiver
    from semalign.cli import app

    try:
        load_dataset("mnist")
    except DatasetUnavailable:
        pytest.skip("MNIST is not available here")
    out = tmp_path / "trx2"
    result = CliRunner().invoke(app, ["pretrain", "--mode", "slf", "--trx", "trx2", "--max-pool", "250",
                                      "--epochs", "1", "--head-epochs", "1", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "trx2: mnist, eps 0.1, 200/50 train/test images" in result.output
    trx, head, config, meta = load_transceiver(out)
    assert config.name == "trx2" and config.max_pool == 250 and meta.metrics["train_images"] == 200
    bad = CliRunner().invoke(app, ["pretrain", "--mode", "slf", "--d-pre", "3"])
    assert bad.exit_code == 2 and "--d-pre: not an slf option" in bad.output
