"""`semalign demo --mode slf`, `semalign slf-sweep` and the slf extras (what they plot and keep).

Tiny transceivers (8x8 digits, K = 16), pre-trained once per module: "rx"
(decoder + head served), "tx" (encoder + data sent) and "src" (a third
transceiver standing in for the source-dissimilarity RX). Each pool is cut
to 700 images so that the source study finds images outside the pools.
"""

from __future__ import annotations

import json
import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from common.link.sidelink import create_sidelink
from common.modes.base import get_mode
from common.modes.slf.cache import AlignmentCache
from common.modes.slf.configs import TransceiverConfig
from common.modes.slf.messages import DecoderRequest, decoder_bytes
from common.modes.slf.pretrain import pretrain_and_save
from common.modes.slf.recovery import choose_n_frozen, finetune_flops
from common.modes.slf.rx import SlfRx
from common.modes.slf.transceiver import Transceiver, TransceiverShape
from common.net.transport import TxSocket
from common.results.log import ResultsLog
from common.wire.protocol import Error, Hello, decode, encode
from rx_node.daemon import RxNode
from tests.helpers import ServedRx
from tx_node.daemon import TxConfig, TxNode

SHAPE = TransceiverShape(image_size=8, widths=(8, 16), code_dim=8, n_codewords=16, head_channels=(8, 8),
                         head_hidden=32)
COMMON = {"dataset": "digits", "epochs": 20, "head_epochs": 20, "batch_size": 64, "lr": 1e-2, "shape": SHAPE,
          "max_pool": 700, "n_shards": 2}
CONFIGS = (TransceiverConfig("rx", eps=1e-3, seed=1, shard=0, **COMMON),
           TransceiverConfig("tx", eps=0.05, seed=2, shard=1, **COMMON),
           TransceiverConfig("src", eps=1e-3, seed=3, shard=0, **COMMON))
TX_OPTS = {"finetune_epochs": 5, "finetune_lr": 1e-2, "n_images": 100, "n_frozen": 2}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("slf_demo")
    for cfg in CONFIGS:
        pretrain_and_save(cfg, digits, root / cfg.name)
    return root


# ------------------------------------------------------------------ the demo: real processes, the CLI


def test_demo_runs_rx_and_tx_as_processes_and_a_returning_tx_resumes(artifacts, tmp_path):
    from semalign.cli import app

    toml = tmp_path / "tiny.toml"
    # 15 epochs: 0.17 -> 0.73 on an AVX2 EPYC, so the +0.2 below has a margin no CPU's rounding closes
    # (with 5 it was 0.17 -> 0.37 there, on the line)
    toml.write_text("[tx]\nfinetune_epochs = 15\nfinetune_lr = 0.01\nn_images = 100\n")
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--mode", "slf", "--tx-trx", str(artifacts / "tx"), "--rx-trx",
                                      str(artifacts / "rx"), "--n-frozen", "2", "--rounds", "3", "--out", str(out),
                                      "--config", str(toml)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    rx_pid, tx_pid, back_pid = saved["rx_pid"], saved["tx_pid"], saved["returning"]["tx_pid"]
    assert len({rx_pid, tx_pid, back_pid, os.getpid()}) == 4
    assert saved["processes"] == {"rx_pid": rx_pid, "tx_pid": tx_pid, "returning_tx_pid": back_pid}
    rows = saved["rounds"]
    assert [r["status"] for r in rows] == ["ok"] * 3 and [r["kind"] for r in rows] == ["semantic", "align", "semantic"]
    assert all(r["rx_pid"] == rx_pid and r["tx_pid"] == tx_pid for r in rows)
    assert rows[0]["session_id"] != saved["returning"]["rounds"][0]["session_id"]
    s = saved["summary"]
    assert s["acc_after"] > s["acc_before"] + 0.2 and s["mse_after"] < s["mse_before"]
    rec = s["recovery"]
    assert set(rec) == {"emulated", "measured", "table1"}
    assert rec["emulated"]["total_s"] == pytest.approx(rec["emulated"]["download_s"] + rec["emulated"]["finetune_s"]
                                                       + rec["emulated"]["upload_s"])
    assert rec["table1"]["download_s"] == pytest.approx(decoder_bytes(SHAPE) * 8 / 2e6)
    assert s["airtime_floor"]["upload_airtime_s"] >= s["airtime_floor"]["upload_floor_s"] > 0
    # the returning TX skipped steps 1-3 and decodes exactly as the first TX did after its alignment
    back = saved["returning"]
    assert back["summary"]["resumed"] and back["rounds"][1]["resumed"]
    assert back["rounds"][1]["download_frame_bytes"] == 0 == back["rounds"][1]["upload_frame_bytes"]
    assert back["rounds"][2]["accuracy"] == rows[2]["accuracy"] and back["rounds"][2]["mse"] == rows[2]["mse"]
    assert back["summary"]["recovery_wall_s"] < rec["measured"]["total_s"]
    # the printed report
    for text in ("before -> after alignment", "recovery time of the alignment", "Table I model",
                 "returning TX: resumed the kept alignment", f"RX pid {rx_pid}, TX pid {tx_pid}"):
        assert text in result.output, result.output


def test_demo_refuses_too_few_rounds(tmp_path):
    from semalign.cli import app

    result = CliRunner().invoke(app, ["demo", "--mode", "slf", "--rounds", "2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "error: --rounds 2: the slf demo needs at least 3" in result.output


# ------------------------------------------------------------------ the sweep: files and numbers


def test_sweep_writes_tables_figures_and_json(artifacts, tmp_path):
    from semalign.cli import app

    out = tmp_path / "sweep"
    args = ["slf-sweep", "--out", str(out), "--tx-trx", str(artifacts / "tx"), "--rx-trx", str(artifacts / "rx"),
            "--source-rx-trx", str(artifacts / "src"), "--layers", "0,2,4", "--table-epochs", "2",
            "--fig3-layers", "0,4", "--fig3-epochs", "1", "--eps", "1e-3,0.1", "--dissimilarity", "0,0.5,1",
            "--head-epochs", "2", "--finetune-images", "200", "--eval-images", "100", "--finetune-lr", "1e-2",
            "--deadlines", "0.2,1", "--rates", "2e6", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("table1.png", "fig3_eps.png", "fig3_dissimilarity.png", "reconstructions.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    sweep = json.loads((out / "slf_sweep.json").read_text())
    t1 = {r["n_frozen"]: r for r in sweep["table1"]}
    assert sorted(t1) == [0, 2, 4]
    assert t1[0]["upload_tensor_bytes"] == t1[0]["download_tensor_bytes"] == decoder_bytes(SHAPE)
    assert t1[4]["upload_tensor_bytes"] == 0 and t1[4]["layers_uploaded"] == "-"
    assert t1[2]["layers_uploaded"] == "codebook decoder.0"
    for r in t1.values():
        assert r["recovery_model_s"] == pytest.approx(r["download_model_s"] + r["finetune_model_s"]
                                                      + r["upload_model_s"])
        assert r["mse_reduction"] == pytest.approx(1 - r["mse"] / sweep["table1_reference"]["misaligned"]["mse"])
        assert r["paper_download_kb"] == 114
    half = {r["n_frozen"]: r for r in sweep["table1_fp16"]}
    assert sorted(half) == [2, 4]
    assert half[2]["download_tensor_bytes"] * 2 == t1[2]["download_tensor_bytes"]
    assert half[2]["download_bytes_saved"] > 0.45 * t1[2]["download_frame_bytes"]
    eps_rows = sweep["fig3_eps"]
    assert {(r["eps"], r["case"]) for r in eps_rows} == {(e, c) for e in (1e-3, 0.1)
                                                         for c in ("misaligned", "SLF l=0", "SLF l=4")}
    src = sweep["fig3_dissimilarity"]
    assert {r["dissimilarity"] for r in src} == {0.0, 0.5, 1.0} and src[0]["head_classes"] == 20
    assert {r["deadline_s"] for r in sweep["deadline"]} == {0.2, 1.0}
    # every number is also in a CSV
    header = (out / "table1.csv").read_text().splitlines()
    assert len(header) == 4 and "recovery_model_s" in header[0] and "paper_accuracy" in header[0]
    for name in ("table1_fp16.csv", "fig3_eps.csv", "fig3_dissimilarity.csv", "deadline.csv"):
        assert len((out / name).read_text().splitlines()) > 1, name
    assert "| l | layers uploaded |" in result.output and "Fig. 3 vs dissimilarity" in result.output


# ------------------------------------------------------------------ l from a recovery-time deadline


def test_choose_n_frozen_trades_accuracy_for_the_deadline():
    model = Transceiver(TransceiverShape())
    uploads = {0: 171_396, 1: 169_344, 2: 38_144, 3: 1_024, 4: 0}  # the paper's architecture, float32
    flops = {l: finetune_flops(model, l, 10_000, 4.0) for l in uploads}

    def pick(deadline, rate=2e6, compute=30e12):
        return choose_n_frozen(deadline, 171_396, uploads, flops, rate, compute)

    assert [pick(d).n_frozen for d in (2.0, 1.0, 0.75, 0.71)] == [0, 2, 3, 4]
    miss = pick(0.5)
    assert miss.n_frozen == 4 and not miss.met  # nothing fits: the fastest l
    assert pick(0.2, rate=20e6).n_frozen == 0  # a faster link affords the full retraining
    assert pick(2.0, compute=1e11).n_frozen == 4  # a slow TX: fine-tuning dominates, freezing saves compute
    chosen = pick(1.0)
    assert chosen.predicted[2].total_s == pytest.approx(171_396 * 8 / 2e6 + flops[2] / 30e12 + 38_144 * 8 / 2e6)
    assert chosen.to_dict()["predicted"]["2"]["upload_bytes"] == 38_144
    with pytest.raises(ValueError, match="deadline_s"):
        pick(0)


def test_tx_plans_l_from_the_channel_rate(artifacts):
    half = get_mode("slf").build_tx({"artifacts": artifacts / "tx", **TX_OPTS, "recovery_deadline_s": 0.02,
                                     "compute_flops": 1e15})
    download, uploads = half.frame_sizes()
    assert download > decoder_bytes(SHAPE) and uploads[0] > uploads[2] > uploads[3] > uploads[4] > 0
    f = {}
    slow, fast = SimpleNamespace(rate_bps=2e6), SimpleNamespace(rate_bps=200e6)
    assert half.plan(fast, f)[0] == 0 and f["deadline"]["met"]
    n_frozen, _ = half.plan(slow, f)  # 2 Mb/s: the download alone misses 0.02 s
    assert n_frozen == 4 and not f["deadline"]["met"]
    assert f["deadline"]["rate_bps"] == 2e6 and set(f["deadline"]["predicted"]) == {"0", "1", "2", "3", "4"}
    calibrating = get_mode("slf").build_tx({"artifacts": artifacts / "tx", **TX_OPTS, "recovery_deadline_s": 5.0})
    f = {}
    assert calibrating.plan(fast, f)[0] == 0 and f["deadline"]["compute_flops_per_s"] > 1e6
    assert f["compute_calibration_s"] > 0 and f["deadline"]["finetune_budget_s"] < 5.0


# ------------------------------------------------------------------ kept alignments over real sockets


@pytest.fixture
def rx_server(artifacts):
    """An slf RX over real sockets in a thread; yields (node, address, restart)."""
    state = {}

    def start(keep=None):
        opts = {"artifacts": artifacts / "rx", "eps": 0.01}
        if keep is not None:
            opts["keep_alignments"] = keep
        served = ServedRx(RxNode({"slf": get_mode("slf").build_rx(opts)}, create_sidelink("loopback", trace="demo")))
        state.update(node=served.node, address=served.address, served=served)
        return served.node, served.address

    def halt():
        if state:
            state["served"].stop()
            state.clear()

    def restart(keep=None):
        halt()
        return start(keep)

    start()
    yield state, restart
    halt()


def run(address, half, rounds, out):
    node = TxNode(half, TxSocket(address), TxConfig(hello_timeout_s=1.0, hello_attempts=10, clock_samples=1,
                                                     result_timeout_s=20.0, round_attempts=1))
    try:
        return node.run(rounds, ResultsLog(out, {"mode": "slf", **half.config_record()}))
    finally:
        node.sock.close()


def tx_half(artifacts, **opts):
    return get_mode("slf").build_tx({"artifacts": artifacts / "tx", **TX_OPTS, **opts})


def test_a_returning_tx_reuses_its_aligned_decoder_and_no_other_tx_gets_it(rx_server, artifacts, tmp_path):
    state, restart = rx_server
    address, rx = state["address"], state["node"].halves["slf"]
    first = run(address, tx_half(artifacts, alignment_cache=str(tmp_path / "a")), 3, tmp_path / "a1")
    assert [r.status for r in first] == ["ok"] * 3 and first[1].fields["kept"] and not first[1].fields["resumed"]
    assert len(rx.kept) == 1
    files = sorted((tmp_path / "a").iterdir())
    assert [p.suffix for p in files] == [".json", ".pt"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert "credential" not in json.dumps(json.loads((tmp_path / "a1" / "results.json").read_text()))

    # another TX (its own cache) aligns by itself; its upload neither reads nor replaces the first's
    other = run(address, tx_half(artifacts, alignment_cache=str(tmp_path / "b"), n_frozen=4), 2, tmp_path / "b1")
    assert other[1].status == "ok" and not other[1].fields["resumed"] and other[1].fields["download_frame_bytes"] > 0
    assert len(rx.kept) == 2

    # the first TX returns (new process state, new session, same cache): steps 1-3 skipped
    again = run(address, tx_half(artifacts, alignment_cache=str(tmp_path / "a")), 3, tmp_path / "a2")
    assert [r.status for r in again] == ["ok"] * 3
    a = again[1].fields
    assert a["resumed"] and a["download_frame_bytes"] == 0 == a["upload_frame_bytes"] and a["finetune_s"] == 0
    assert a["installed_layers"] == ["codebook", "decoder.0"] and a["resume_frame_bytes"] < 200
    assert again[2].fields["decoder"] == "aligned"
    assert (again[2].fields["accuracy"], again[2].fields["mse"]) == (first[2].fields["accuracy"], first[2].fields["mse"])
    assert again[2].fields["recovery"]["resumed"] and again[1].fields["recovery_wall_s"] < first[1].fields["recovery_wall_s"]

    # a forged credential names nothing: the RX answers found = False and the TX aligns anew in the same round
    cache = AlignmentCache(tmp_path / "a")
    for p in (tmp_path / "a").glob("*.json"):
        meta = json.loads(p.read_text())
        meta["credential"] = bytes(32).hex()
        p.write_text(json.dumps(meta))
    forged = run(address, tx_half(artifacts, alignment_cache=str(cache.dir)), 2, tmp_path / "a3")
    assert forged[1].status == "ok" and not forged[1].fields["resumed"]
    assert "no longer holds" in forged[1].fields["resume"] and forged[1].fields["kept"]

    # an RX restart forgets kept alignments: the returning TX aligns anew, in the same round
    _, address = restart()
    back = run(address, tx_half(artifacts, alignment_cache=str(tmp_path / "a")), 2, tmp_path / "a4")
    assert back[1].status == "ok" and not back[1].fields["resumed"] and back[1].fields["download_frame_bytes"] > 0
    # an RX that keeps none: nothing is cached
    _, address = restart(keep=0)
    none = run(address, tx_half(artifacts, alignment_cache=str(tmp_path / "c")), 2, tmp_path / "c1")
    assert none[1].status == "ok" and not none[1].fields["kept"] and not list((tmp_path / "c").iterdir())


def test_rx_keeps_a_bounded_number_of_alignments(artifacts):
    rx = get_mode("slf").build_rx({"artifacts": artifacts / "rx", "keep_alignments": 2})
    assert isinstance(rx, SlfRx) and rx.keep_alignments == 2
    ctx = [SimpleNamespace(session={}) for _ in range(3)]
    creds = [rx._keep(rx.trx, 2, ("codebook",), c) for c in ctx]
    assert len(set(creds)) == 3 and all(len(c) == 32 for c in creds)
    assert len(rx.kept) == 2  # the oldest went
    rx._keep(rx.trx, 2, ("codebook",), ctx[2])  # the same session re-aligns: its previous entry is retired
    assert len(rx.kept) == 2


# ------------------------------------------------------------------ float16 download


def test_float16_download_halves_the_bytes(rx_server, artifacts, tmp_path):
    state, _ = rx_server
    records = run(state["address"], tx_half(artifacts, download_dtype="float16"), 3, tmp_path)
    assert [r.status for r in records] == ["ok"] * 3
    align = records[1].fields
    assert align["download_dtype"] == "float16" and align["download_tensor_bytes"] * 2 == decoder_bytes(SHAPE)
    assert align["upload_tensor_bytes"] > 0 and records[2].fields["accuracy"] > records[0].fields["accuracy"]
    # an RX asked for another dtype refuses with ERROR dtype
    node = RxNode({"slf": get_mode("slf").build_rx({"artifacts": artifacts / "rx"})},
                  create_sidelink("loopback", trace="demo"))
    rx = node.halves["slf"]
    hello = Hello("tx", 77, "slf", rx.fingerprint, tx_half(artifacts).hello_params())
    opened = decode(node.handle(b"peer", [encode(hello)])[0])
    assert isinstance(opened, Hello), opened
    err = decode(node.handle(b"peer", [encode(DecoderRequest(77, 0, "int8"))])[0])
    assert isinstance(err, Error) and err.code == "dtype"


def test_float16_tensors_round_trip_within_half_precision():
    from common.modes.slf.messages import tensors_from_wire, tensors_to_wire
    from common.wire.tensors import TensorError

    state = Transceiver(SHAPE).decoder_state()
    wire = tensors_to_wire(state, "float16")
    back = tensors_from_wire(wire, state, ("float16",))
    for k, t in state.items():
        assert back[k].dtype == torch.float32
        assert torch.allclose(back[k], t, rtol=1e-3, atol=1e-4)
    with pytest.raises(TensorError) as e:  # uploads stay float32
        tensors_from_wire(wire, state)
    assert e.value.code == "dtype"
    np.testing.assert_array_equal(back["codebook.weight"].numpy(),
                                  state["codebook.weight"].numpy().astype(np.float16).astype(np.float32))


def test_quick_sweep_runs_the_reduced_studies(monkeypatch):
    from semalign.campaigns.slf import sweep, sweep_config
    from semalign.cli import app

    seen = {}

    def capture(cfg, out, data_dir, progress):
        seen["cfg"] = cfg
        raise RuntimeError("captured")

    monkeypatch.setattr(sweep, "run_slf_sweep", capture)
    result = CliRunner().invoke(app, ["slf-sweep", "--quick", "--table-epochs", "9", "--seed", "3", "--no-progress"])
    assert "captured" in result.output and result.exit_code != 0
    cfg = seen["cfg"]
    assert {k: getattr(cfg, k) for k in sweep_config.QUICK} == sweep_config.QUICK  # the reduced studies win
    assert cfg.seed == 3 and cfg.tx_trx == "trx1"  # the other options stay as given
