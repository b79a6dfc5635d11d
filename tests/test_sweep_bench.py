"""Measurement campaigns on digits: sweep (with E2E cache), fading policies, bench."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from common.modes.pca_lora.adapt_config import AdaptConfig
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.artifacts import load_codec, load_model
from common.modes.pca_lora.budget import PayloadLayout
from semalign.cli import app
from semalign.campaigns.pca_lora.runner import build_round, reference_rate_bps
from semalign.campaigns.pca_lora.sweep import run_sweep
from semalign.campaigns.pca_lora.sweep_config import DEFAULT_METHOD, E2EConfig, SweepConfig


def test_round_matches_eq2(digits, digits_artifacts):
    codec, _ = load_codec(digits_artifacts)
    layout = PayloadLayout.for_dtype("float16")
    rd = build_round(codec, digits, 10, 0, layout, n_test=50, b_max_bytes=20_000, rate_bps=reference_rate_bps())
    assert rd.payload_bytes == layout.payload_bytes(10, 50 + rd.n_train) <= 20_000
    assert rd.payload_bytes + layout.vector_bytes(10) > 20_000
    assert rd.z_train.shape == (rd.n_train, 10)
    assert rd.timings["communication_ms"] >= rd.timings["airtime_ms"] > 0


def test_sweep_writes_rows_plots_table_and_caches_e2e(tmp_path, digits_artifacts):
    cfg = SweepConfig(dims=(8, 20), seeds=1, b_max_bytes=12_000, n_test=60, ft_steps=10,
                      e2e=E2EConfig(max_epochs=2, patience=1))
    res = run_sweep(digits_artifacts, "digits", cfg, tmp_path, progress=False)
    methods = {r["method"] for r in res["rows"]}
    assert {"pretrained", "lora", "first_layer", "staged", "lora_bank", "end_to_end", "full_ft", "last_layer",
            "default_subset"} <= methods
    # the recipes side by side, the RX default marked, every adaptation bounded by steps, not the clock
    assert {r["method"] for r in res["rows"] if r.get("default")} == {DEFAULT_METHOD}
    recipes = [r for r in res["rows"] if r["method"] in ("lora", "first_layer", "staged")]
    assert all(r["steps_by"] == "calibrated" and r["steps"] > 0 for r in recipes)
    assert "default" in (tmp_path / "sweep.csv").read_text().splitlines()[0].split(",")
    for name in ("sweep.csv", "sweep.json", "policy_table.json", "accuracy_vs_alpha.png", "latency_vs_alpha.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["mode"] == "in-process" and saved["b_max_bytes"] == 12_000
    lora = [r for r in saved["rows"] if r["method"] == "lora"]
    assert all(r["eval_n"] == 360 and r["payload_bytes"] <= 12_000 and r["adapt_ms"] > 0 for r in lora)
    e2e = [r for r in saved["rows"] if r["method"] == "end_to_end"]
    assert all(r["train_ms"] > 0 and r["cached"] is False for r in e2e)
    table = json.loads((tmp_path / "policy_table.json").read_text())
    assert set(table["alphas"]) == {"8", "20"} and table["alphas"]["8"][0][0] == 0
    again = run_sweep(digits_artifacts, "digits", cfg, tmp_path, progress=False)
    e2e2 = [r for r in again["rows"] if r["method"] == "end_to_end"]
    assert all(r["cached"] for r in e2e2)
    assert [r["accuracy"] for r in e2e2] == [r["accuracy"] for r in e2e]


def test_sweep_cli(tmp_path, digits_artifacts):
    out = tmp_path / "sw"
    result = CliRunner().invoke(app, ["sweep", "--dataset", "digits", "--artifacts", str(digits_artifacts),
                                      "--dims", "10,20", "--seeds", "1", "--out", str(out), "--b-max-bytes",
                                      "15000", "--n-test", "50", "--methods", "pretrained,lora,end_to_end",
                                      "--e2e-max-epochs", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "mode: in-process" in result.output
    assert (out / "sweep.csv").read_text().splitlines()[0].startswith("mode,method,alpha,seed,n_train,accuracy")
    bad = CliRunner().invoke(app, ["sweep", "--dataset", "digits", "--artifacts", str(digits_artifacts),
                                   "--methods", "magic", "--out", str(out), "--no-progress"])
    assert bad.exit_code == 2 and "unknown methods" in bad.output


def test_fading_compares_policies(tmp_path, digits_artifacts):
    from semalign.campaigns.pca_lora.fading import run_fading

    table = tmp_path / "t.json"
    table.write_text(json.dumps({"format_version": 1, "alphas": {"10": [[0, 0.8], [1000, 0.9]],
                                                                 "30": [[0, 0.85], [500, 0.88]]}}))
    res = run_fading(digits_artifacts, "digits", tmp_path, table, "fading", 4, 0.9, 50, 0.05, 0,
                     fill_payload=True)
    assert [(r["policy"], r["bank"]) for r in res["runs"]] == [
        ("largest", False), ("largest", True), ("lookahead", False), ("lookahead", True)]
    look = res["runs"][2]
    assert {r["alpha"] for r in look["rounds"] if r["status"] == "ok"} <= {10, 30}
    assert res["runs"][1]["warm_starts"] >= 1 and res["runs"][0]["lean_rounds"] == 0
    assert (tmp_path / "fading.json").exists()
    # by default a round at alpha = d_pre (40 here) carries the test vectors only and is not adapted
    lean = run_fading(digits_artifacts, "digits", tmp_path, table, "fading", 4, 0.9, 50, 0.05, 0)["runs"][0]
    at_d_pre = [r for r in lean["rounds"] if r.get("alpha") == 40]
    assert at_d_pre and all(r["n_train"] == 0 and r["nothing_to_align"] == "d_pre" for r in at_d_pre)
    assert all(r["accuracy"] == r["acc_pretrained"] for r in at_d_pre)
    assert lean["payload_bytes_total"] < res["runs"][0]["payload_bytes_total"]


def test_bench_small(tmp_path, digits_artifacts):
    from semalign.campaigns.pca_lora.bench import run_bench

    from common.modes.pca_lora.adapt_config import DEFAULT_RECIPE, RECIPES

    res = run_bench(digits_artifacts, "digits", tmp_path, repeats=1, live=False)
    rate = res["reference_rate_bps"]
    p = res["payload"]
    # the payload fits the reference budget (50 ms at the reference rate) and its figures agree
    assert p["bytes"] <= int(rate * 0.05 / 8)
    assert p["airtime_ms_at_reference_rate"] == pytest.approx(8 * p["bytes"] / rate * 1e3)
    assert res["zmq_rtt_1mib"]["airtime_ms_at_reference_rate"] == pytest.approx(8 * 2**20 / rate * 1e3)
    # adaptation: the n_train grid the bench promises, every recipe, step counts that add up and repeat
    full_n = res["adapt"][-1]["n_train"]  # the payload's training vectors
    assert 0 < full_n < p["vectors"]
    assert [a["n_train"] for a in res["adapt"]] == sorted({min(k, full_n) for k in (500, 2000, 8000, full_n)})
    for a in res["adapt"]:
        assert a["alpha"] == p["alpha"] and a["default"] == a[DEFAULT_RECIPE]
        for recipe in RECIPES:
            x = a[recipe]
            assert x["steps"] == sum(x["stage_steps"]) and x["deterministic"]
            assert x["ms_per_step"] == pytest.approx(x["ms"] / max(x["steps"], 1))
    assert json.loads((tmp_path / "bench.json").read_text())["adapt"] == json.loads(json.dumps(res["adapt"]))
    # each recipe's step against its floor in fp32, and bf16 (forced) where it has frozen layers
    from common.learn import fastlora

    steps = res["step"]
    assert set(steps) == {"lora", "first-layer", "staged stage 2 (all layers)"}
    dims = [64, 64, 32, 10]  # digits: d_raw 64, hidden (64, 32), 10 classes
    assert steps["first-layer"]["flops"] == fastlora.dense_step_flops([p["alpha"], 64, 32, 10], 1, 256)
    assert steps["lora"]["flops"] == fastlora.gemm_flops(fastlora.lora_step_gemms(p["alpha"], dims, 8, 256))
    for label, x in steps.items():
        assert x["fp32"]["floor_ms_per_step"] > 0 and x["bf16_native"] == fastlora.native_bf16()
        assert (x["bf16"] is not None) == (label == "first-layer")
    assert set(res["precision_choice"]) == {"first-layer", "staged"}
    assert all(c["precision"] in ("fp32", "bf16") for c in res["precision_choice"].values())
    for alpha, x in res["precision_accuracy"].items():  # digits' d_pre is 40: alphas 10, 20, 40
        assert len(x["rows"]) == 3 and x["loss_pp"] == pytest.approx((x["fp32"] - x["bf16"]) * 100)
        assert all(r["stage_steps"] and 0 < r["fp32"] <= 1 for r in x["rows"])


@pytest.mark.slow
def test_sweep_live_through_daemons(tmp_path, digits_artifacts):
    from semalign.campaigns.pca_lora.sweep_live import live_rounds

    cfg = SweepConfig(dims=(10,), seeds=1, b_max_bytes=15_000, n_test=50, methods=("pretrained", DEFAULT_METHOD),
                      live=True)
    res = run_sweep(digits_artifacts, "digits", cfg, tmp_path, progress=False,
                    live_runner=live_rounds(digits_artifacts, "digits", tmp_path))
    assert res["mode"] == "live"
    live = [r for r in res["rows"] if r["mode"] == "live"]
    assert {r["method"] for r in live} == {"pretrained", DEFAULT_METHOD}
    assert all(r["eval_n"] == 50 and r["payload_bytes"] <= 15_000 for r in live)


@pytest.mark.slow
def test_bench_daemon_rss(tmp_path, digits_artifacts):
    from semalign.campaigns.pca_lora.bench_live import daemon_rss

    rss = daemon_rss(digits_artifacts, "digits", tmp_path, None)
    # measured on digits (3 rounds then, 9 now; torch 2.13 CPU): RX 261 MiB, TX 313 MiB, most of it torch itself.
    # 1.7x that means a copy of the data per round or a leak, which this catches; the soak measures growth.
    assert 100 < rss["rx_peak_rss_mib"] < 450 and 100 < rss["tx_peak_rss_mib"] < 550, rss


@pytest.mark.parametrize("bias, frozen", [(True, 0), (False, 1), (True, 2)])
def test_fast_trainer_matches_autograd(digits, digits_artifacts, bias, frozen):
    """The hand-written folded trainer and the autograd reference on x_hat give the same W*."""
    codec, meta = load_codec(digits_artifacts)
    model = load_model(digits_artifacts, meta)
    z = codec.encode(digits.x_train[:300], 12)
    cfg = AdaptConfig(recipe="lora", steps=12, lr=1e-2, batch_size=64, bias=bias, frozen_layers=frozen,
                      budget_ms=None, holdout=0.0, max_epochs=0)
    fast, rf, _ = LoraAlignment(adapt=cfg, fold=True).adapt_state(model, z, digits.y_train[:300], codec)
    ref, rr, _ = LoraAlignment(adapt=cfg, fold=False).adapt_state(model, z, digits.y_train[:300], codec)
    assert rf.steps == rr.steps == 12
    assert rf.final_loss == pytest.approx(rr.final_loss, rel=1e-3)
    for a, b in zip(fast.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3)


def test_holdout_keeps_frozen_model_when_adaptation_hurts(digits, digits_artifacts):
    codec, meta = load_codec(digits_artifacts)
    model = load_model(digits_artifacts, meta)
    z = codec.encode(digits.x_train[:400], 40)
    # a learning rate that wrecks the model: the hold-out check must fall back to the frozen one
    adapted, rep = LoraAlignment(adapt=AdaptConfig(steps=30, lr=1.0, schedule="constant", budget_ms=None,
                                                   max_epochs=0)).adapt(model, z, digits.y_train[:400], codec)
    assert rep.n_holdout == 40
    assert rep.kept == "frozen" and adapted is model
    assert rep.holdout_acc_adapted < rep.holdout_acc_frozen
    _ = np.zeros(1)


def test_bench_train_parts_live(tmp_path, digits_artifacts):
    """The bench's rounds-in-parts figure over real daemons: every K gives successful rounds at alpha 20
    with the same training vectors, and time to classification at least the longest stage."""
    from semalign.campaigns.pca_lora.bench_live import train_parts_rounds

    res = train_parts_rounds(digits_artifacts, "digits", tmp_path, None, parts=(0, 2), rounds=3, passes=1)
    assert set(res) == {"0", "2"}
    for x in res.values():
        assert x["rounds"] == 2 and x["alpha"] == 20
        assert x["acc_adapted"] > 0.5  # digits at alpha 20 after adaptation, chance is 0.1
        # two rounds: each median is their mean, so the medians of the stage sum and of its parts agree
        assert x["sum_ms"] == pytest.approx(x["encode_ms"] + x["airtime_ms"] + x["finetune_ms"], rel=1e-6)
        assert x["to_classification_ms"] >= x["airtime_ms"]
    assert res["2"]["payload_bytes"] == res["0"]["payload_bytes"] + 2 * 209 - (
        res["0"]["n_train"] - res["2"]["n_train"]) * (5 + 2 * 20)  # two more headers, fewer vectors


REPLAY_METHODS = ("pretrained", "lora", "first_layer", "staged", "lora_bank", "lora_nobudget")


def test_sweep_steps_from_repeats_the_accuracies(tmp_path, digits_artifacts):
    """A sweep rerun with --steps-from runs the recorded steps per stage, uncapped, and gives the same
    accuracies to the last digit (whatever the first run's calibration planned on this CPU)."""
    cfg = SweepConfig(dims=(8, 20), seeds=1, methods=REPLAY_METHODS, b_max_bytes=12_000, n_test=60)
    first = run_sweep(digits_artifacts, "digits", cfg, tmp_path / "a", progress=False)
    flags = first["machine"]["cpu_flags"]
    assert flags is None or set(flags) == {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert first["step_counts"]["staged"]["20"]["0"] == next(
        r["stage_steps"] for r in first["rows"] if r["method"] == "staged" and r["alpha"] == 20)
    again = run_sweep(digits_artifacts, "digits", replace(cfg, steps_from=str(tmp_path / "a" / "sweep.json")),
                      tmp_path / "b", progress=False)
    key = lambda r: (r["method"], r["alpha"], r["seed"], r["n_train"])  # noqa: E731
    before, after = {key(r): r for r in first["rows"]}, {key(r): r for r in again["rows"]}
    assert before.keys() == after.keys() and len(before) > 10
    for k, r in after.items():
        assert r["accuracy"] == before[k]["accuracy"], k
        if r["method"] != "pretrained":
            assert r["stage_steps"] == before[k]["stage_steps"] and r["precision"] == before[k]["precision"]
            assert r["steps_by"] in ("fixed", "none") and not r["cut_by_cap"], r
    assert again["steps_from"].endswith("sweep.json") and again["recorded_machine"] == first["machine"]


def test_sweep_steps_from_bad_file_is_one_line(tmp_path, digits_artifacts):
    base = ["sweep", "--dataset", "digits", "--artifacts", str(digits_artifacts), "--dims", "8", "--seeds", "1",
            "--out", str(tmp_path / "out"), "--b-max-bytes", "12000", "--n-test", "60", "--methods",
            "pretrained,staged", "--no-progress", "--steps-from"]
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"rows": [{"mode": "in-process", "method": "staged",
                                                               "alpha": 8, "seed": 0, "n_train": 5,
                                                               "stage_steps": [10]}], "dataset": "mnist"}))
    for name, says in (("missing.json", "no such file"), ("garbage.json", "not JSON"),
                       ("other.json", "recorded with dataset 'mnist'")):
        path = tmp_path / name
        result = CliRunner().invoke(app, base + [str(path)])
        assert result.exit_code == 2, result.output
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: --steps-from {path}: {says}"), result.output
        assert "Traceback" not in result.output


def test_demo_records_machine_and_steps(tmp_path):
    from semalign.campaigns.pca_lora.demo import record_reproduction

    (tmp_path / "results.json").write_text(json.dumps({"config": {}, "rounds": [
        {"round": 0, "alpha": 20, "n_train": 900, "adapt": {"steps": 300, "stage_steps": [150, 150],
                                                           "steps_by": "calibrated", "precision": "fp32",
                                                           "cut_by_cap": False}},
        {"round": 1, "alpha": 200, "n_train": 0}]}))
    res = record_reproduction(tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(res))
    assert res["step_counts"][0] == {"round": 0, "alpha": 20, "n_train": 900, "steps": 300, "stage_steps": [150, 150],
                                     "steps_by": "calibrated", "precision": "fp32", "cut_by_cap": False}
    assert res["step_counts"][1]["steps"] is None and res["machine"]["cores"] >= 1
