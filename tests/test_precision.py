"""The frozen layers' precision (fp32 / bf16 / auto) and the RX's warm-up, on any CPU.

Each precision is forced here, so both paths run on every machine (bf16 emulated, slowly, where
the CPU has no bf16 arithmetic); ``pytest --precision {fp32,bf16}`` forces it for the whole suite.
"""

from __future__ import annotations

import pytest

from common.modes.pca_lora.artifacts import load_codec, load_model
from common.learn import fastlora
from common.learn.models import accuracy, predict
from common.modes.pca_lora.adapter_bank import AdapterBank, model_digest
from common.modes.pca_lora.adapt_config import AdaptConfig, requested_precision
from common.modes.pca_lora import alignment
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.calibration import frozen_precision
from common.modes.pca_lora.folded_mlp import mlp_weights
from common.modes.pca_lora.rx import PcaLoraRx


@pytest.fixture
def served(digits_artifacts):
    codec, meta = load_codec(digits_artifacts)
    return codec, load_model(digits_artifacts, meta), meta


def _weights(model):
    return mlp_weights(model)[0]


def test_environment_forces_auto_only(monkeypatch):
    monkeypatch.setenv("SEMALIGN_PRECISION", "bf16")
    assert requested_precision(AdaptConfig()) == "bf16"
    assert requested_precision(AdaptConfig(precision="fp32")) == "fp32"  # an explicit choice stays
    monkeypatch.setenv("SEMALIGN_PRECISION", "fp64")
    with pytest.raises(ValueError, match="SEMALIGN_PRECISION='fp64'"):
        requested_precision(AdaptConfig())


def test_auto_picks_fp32_without_bf16_arithmetic(monkeypatch, served):
    """Where /proc/cpuinfo shows no bf16 arithmetic, auto is fp32 without a measurement."""
    _, model, _ = served
    monkeypatch.delenv("SEMALIGN_PRECISION", raising=False)
    monkeypatch.setattr(fastlora, "native_bf16", lambda: False)
    monkeypatch.setattr(alignment, "PRECISION_CHOICES", {})
    assert frozen_precision(AdaptConfig(recipe="staged"), _weights(model)) == "fp32"
    choice = LoraAlignment(adapt=AdaptConfig(recipe="staged")).precision_choice(model, served[0])
    assert choice == {"precision": "fp32", "by": "no bf16 arithmetic", "step_ms": None}
    assert alignment.PRECISION_CHOICES == {}  # nothing was timed


@pytest.mark.parametrize("fp32_ms, bf16_ms, pick", [(1.0, 0.84, "bf16"), (1.0, 0.86, "fp32"), (1.0, 1.5, "fp32")])
def test_auto_picks_bf16_only_when_the_step_is_15_percent_faster(monkeypatch, digits, served, fp32_ms, bf16_ms,
                                                                  pick):
    """auto times the recipe's own step in each precision (a fake clock here) and picks bf16 only at
    <= 0.85 of fp32's time; the choice and both times reach the calibration and every adapt report."""
    codec, model, _ = served
    monkeypatch.delenv("SEMALIGN_PRECISION", raising=False)
    monkeypatch.setattr(fastlora, "native_bf16", lambda: True)
    monkeypatch.setattr(alignment, "PRECISION_CHOICES", {})
    monkeypatch.setattr(alignment, "CALIBRATIONS", {})
    cost = {"fp32": fp32_ms, "bf16": bf16_ms}
    timed = []
    strategy = LoraAlignment(adapt=AdaptConfig(recipe="staged"))
    original = strategy._train_synthetic

    def fake_train(weights, biases, z, y, codec_, stage, k, precision):
        original(weights, biases, z, y, codec_, stage, 1, precision)  # the real path, once, untimed
        timed.append(cost[precision] * k / 1e3)

    monkeypatch.setattr(strategy, "_train_synthetic", fake_train)
    monkeypatch.setattr(alignment, "timed", lambda fn: (fn(), timed[-1])[1])
    choice = strategy.precision_choice(model, codec)
    assert choice == {"precision": pick, "by": "measured", "step_ms": {"fp32": fp32_ms, "bf16": bf16_ms}}
    info = strategy.calibrate(model, codec)
    assert info["precision"] == pick and info["precision_step_ms"] == choice["step_ms"]
    rep = strategy.adapt(model, codec.encode(digits.x_train[:300], 4), digits.y_train[:300], codec)[1]
    assert rep.precision == pick and rep.precision_by == "measured" and rep.precision_step_ms == choice["step_ms"]
    monkeypatch.setenv("SEMALIGN_PRECISION", "fp32")  # forcing still wins, without a measurement
    assert LoraAlignment(adapt=AdaptConfig(recipe="staged")).precision_choice(model, codec)["by"] == "forced"


@pytest.mark.parametrize("recipe", ["first-layer", "staged"])
def test_bf16_and_fp32_learn_alike(monkeypatch, digits, served, recipe):
    """The same payload and step count in each precision: same step counts, accuracies within 2 pp
    on the digits test set (bf16 rounds the frozen layers' products to 8 bits of mantissa)."""
    codec, model, _ = served
    z = codec.encode(digits.x_train[:600], 4)
    y = digits.y_train[:600]
    z_test = codec.encode(digits.x_test, 4)
    out = {}
    for precision in ("fp32", "bf16"):
        monkeypatch.setenv("SEMALIGN_PRECISION", precision)
        cfg = AdaptConfig(recipe=recipe, steps=40, stage1_steps=20, stage2_min_steps=20, budget_ms=None,
                          deep_budget_ms=None, holdout=0, max_epochs=0)
        adapted, report = LoraAlignment(adapt=cfg).adapt(model, z, y, codec)
        assert report.precision == precision and report.complete and report.steps == 40
        out[precision] = (report, accuracy(predict(adapted, codec.decode(z_test)), digits.y_test))
    (r32, acc32), (r16, acc16) = out["fp32"], out["bf16"]
    assert r32.stage_steps == r16.stage_steps
    assert acc32 > accuracy(predict(model, codec.decode(z_test)), digits.y_test) + 0.03  # the adaptation did something
    assert abs(acc32 - acc16) <= 0.02, (acc32, acc16)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_first_round_after_warm_up_gets_its_planned_steps(monkeypatch, digits, served, precision):
    """After the RX's warm-up the first round runs the same steps as the second on the same payload,
    uncut: the one-time costs were paid before serving. (The plan fills 0.3 of a 400 ms budget, so
    only a one-time cost, not a busy CPU, could cut it.)"""
    codec, model, meta = served
    monkeypatch.setenv("SEMALIGN_PRECISION", precision)
    cfg = AdaptConfig(recipe="staged", fill=0.3, budget_ms=400, deep_budget_ms=400, seed=3)
    half = PcaLoraRx(codec, model, LoraAlignment(adapt=cfg), meta.n_classes)
    half.warm_up()
    z, y = codec.encode(digits.x_train[:1200], 3), digits.y_train[:1200]
    first = half.strategy.adapt(model, z, y, codec)[1]
    second = half.strategy.adapt(model, z, y, codec)[1]
    assert first.steps_by == "calibrated" and first.precision == precision
    assert first.complete and not first.cut_by_cap, first
    assert first.steps == second.steps and first.stage_steps == second.stage_steps


def test_warm_up_leaves_the_adapter_bank_empty(tmp_path, served):
    codec, model, meta = served
    bank = AdapterBank(4, codec.fingerprint, model_digest(model), tmp_path / "bank")
    half = PcaLoraRx(codec, model, LoraAlignment(adapt=AdaptConfig(steps=5)), meta.n_classes, bank=bank,
                     bank_shared=True)  # even a bank every session shares
    half.warm_up()
    assert len(bank) == 0 and len(AdapterBank(4, codec.fingerprint, model_digest(model), tmp_path / "bank")) == 0


def test_cpu_flags_and_model_from_cpuinfo_text():
    from common.cpu import cpu_flags, cpu_model

    text = "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    assert cpu_model(text) == "Some CPU 9000"
    assert cpu_flags(text) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags("processor : 0\n") is None
