import numpy as np
import pytest
import torch

from common.modes.pca_lora.adapt_config import AdaptConfig
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.codec import PcaCodec
from common.learn.lora import LoraConfig, LoraLinear, LoraMergeError, init_adapters, merge_into
from common.learn.models import accuracy, build_mlp, predict


def test_pca_reconstruction_error_falls_with_alpha(digits):
    codec = PcaCodec.fit(digits.x_train, 64)
    errors = [np.mean((codec.reconstruct(digits.x_test, a) - digits.x_test) ** 2) for a in (5, 10, 20, 40, 64)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-9  # full rank reconstructs exactly
    np.testing.assert_allclose(codec.components @ codec.components.T, np.eye(64), atol=1e-5)


def test_pca_fingerprint_is_deterministic(digits):
    assert PcaCodec.fit(digits.x_train, 20).fingerprint == PcaCodec.fit(digits.x_train, 20).fingerprint


def test_pca_alpha_range(digits):
    codec = PcaCodec.fit(digits.x_train, 10)
    with pytest.raises(ValueError, match="alpha=11"):
        codec.encode(digits.x_test, 11)


def _model(seed=0):
    torch.manual_seed(seed)
    return build_mlp(16, (12, 8), 10)


def _wrapped(model, config):
    return torch.nn.Sequential(*(LoraLinear(m, config) if isinstance(m, torch.nn.Linear) else m for m in model))


def test_fresh_adapter_changes_nothing():
    model, x = _model(), torch.randn(5, 16)
    torch.testing.assert_close(_wrapped(model, LoraConfig(rank=4))(x), model(x))


def test_merged_equals_unmerged():
    model, x = _model(), torch.randn(5, 16)
    wrapped = _wrapped(model, LoraConfig(rank=4, lora_alpha=8))
    with torch.no_grad():
        for m in wrapped:
            if isinstance(m, LoraLinear):
                m.lora_B.normal_()
    merged = torch.nn.Sequential(*(m.merged() if isinstance(m, LoraLinear) else m for m in wrapped))
    torch.testing.assert_close(merged(x), wrapped(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(wrapped(x), model(x))


def test_state_merge_equals_module_form():
    """The two forms of an adapter (LoraState merged into the MLP, LoraLinear modules) agree."""
    model, x = _model(), torch.randn(5, 16)
    weights = [m.weight.detach() for m in model if isinstance(m, torch.nn.Linear)]
    state = init_adapters(weights, (0, 1, 2), LoraConfig(4, 8.0), False, torch.Generator().manual_seed(1))
    for b in state.B:
        b.normal_()
    wrapped = _wrapped(model, LoraConfig(rank=4, lora_alpha=8))
    with torch.no_grad():
        for i, m in enumerate(m for m in wrapped if isinstance(m, LoraLinear)):
            m.lora_A.copy_(state.A[i])
            m.lora_B.copy_(state.B[i])
    torch.testing.assert_close(merge_into(model, state)(x), wrapped(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rank, layers, r", [(9, (1, 2), 8), (11, (2,), 8), (20, (0,), 12)])
def test_clamped_rank_forms_agree(rank, layers, r):
    """A rank above a layer's min(in, out) is clamped; both forms then scale by lora_alpha / (clamped r)."""
    model, x = _model(), torch.randn(5, 16)
    config = LoraConfig(rank=rank, lora_alpha=6.0)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    state = init_adapters([m.weight.detach() for m in linears], layers, config, False,
                          torch.Generator().manual_seed(1))
    assert [a.shape[0] for a in state.A] == [r] * len(layers) and state.scaling == 6.0 / r
    for b in state.B:
        b.normal_()
    wrapped = torch.nn.Sequential(*(LoraLinear(m, config) if m in [linears[l] for l in layers] else m
                                    for m in model))
    modules = [m for m in wrapped if isinstance(m, LoraLinear)]
    assert [m.scaling for m in modules] == [state.scaling] * len(layers)
    with torch.no_grad():
        for i, m in enumerate(modules):
            m.lora_A.copy_(state.A[i])
            m.lora_B.copy_(state.B[i])
    torch.testing.assert_close(merge_into(model, state)(x), wrapped(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(wrapped(x), model(x))


def test_merge_refuses_non_finite():
    layer = LoraLinear(torch.nn.Linear(4, 3), LoraConfig(rank=2))
    with torch.no_grad():
        layer.lora_B.fill_(float("inf"))
    with pytest.raises(LoraMergeError, match="not finite"):
        layer.merged()


@pytest.mark.parametrize("part", ["B", "d"])
def test_production_merge_refuses_non_finite(part):
    """The merge the RX uses (merge_into) refuses an adapter whose weights or bias deltas overflow."""
    model = _model()
    weights = [m.weight.detach() for m in model if isinstance(m, torch.nn.Linear)]
    state = init_adapters(weights, (1, 2), LoraConfig(4, 8.0), True, torch.Generator().manual_seed(0))
    getattr(state, part)[0].fill_(float("nan"))
    with pytest.raises(LoraMergeError, match="not finite"):
        merge_into(model, state)


def test_base_model_is_not_modified(digits):
    model = _model()
    codec = PcaCodec.fit(np.random.default_rng(1).normal(size=(100, 16)), 8)
    before = [p.clone() for p in model.parameters()]
    z = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    LoraAlignment(adapt=AdaptConfig(steps=5)).adapt(model, z, np.zeros(32, np.uint8), codec)
    for a, b in zip(before, model.parameters()):
        torch.testing.assert_close(a, b)


def test_lora_recovers_misaligned_accuracy(digits, digits_artifacts):
    """Pre-trained on 40 dims, fed 6: LoRA on 300 received vectors must beat the frozen model."""
    from common.modes.pca_lora.artifacts import load_codec, load_model

    codec, meta = load_codec(digits_artifacts)
    model = load_model(digits_artifacts, meta)
    z_train = codec.encode(digits.x_train[:300], 6)
    x_test = codec.reconstruct(digits.x_test, 6)
    before = accuracy(predict(model, x_test), digits.y_test)
    adapted, report = LoraAlignment(adapt=AdaptConfig(steps=100, lr=1e-2, max_epochs=0, budget_ms=None)).adapt(
        model, z_train, digits.y_train[:300], codec)
    after = accuracy(predict(adapted, x_test), digits.y_test)
    assert report.complete and report.steps == 100
    assert after > before + 0.03, (before, after)


class StepClock:
    """A fake clock: every reading is ``tick_s`` later than the one before, whatever the CPU."""

    def __init__(self, tick_s: float):
        self.t, self.tick_s = 0.0, tick_s

    def __call__(self) -> float:
        self.t += self.tick_s
        return self.t


@pytest.mark.parametrize("recipe", ["lora", "first-layer", "staged"])
def test_time_budget_stops_early(digits, recipe):
    """The wall-clock cap cuts a run at the step its clock says, on any CPU (the clock is injected:
    1 ms per reading; 50 ms cap, of which the training gets 0.9)."""
    model = build_mlp(64, (256, 256), 10)
    codec = PcaCodec.fit(digits.x_train, 64)
    z = np.random.default_rng(0).normal(size=(4000, 64)).astype(np.float32)
    config = AdaptConfig(recipe=recipe, steps=100000, budget_ms=50, max_epochs=0, holdout=0)
    _, report = LoraAlignment(adapt=config, clock=StepClock(1e-3)).adapt(model, z, np.zeros(4000, np.uint8), codec)
    assert report.cut_by_cap and not report.complete
    assert 20 <= report.steps <= 45, report  # about one clock reading per step within 0.9 x 50 ms


@pytest.mark.parametrize("recipe", ["lora", "first-layer", "staged"])
def test_a_run_the_cap_cut_is_repeated_exactly_from_its_report(digits, digits_artifacts, recipe):
    """A run the wall-clock cap cut (a fake clock: the same cut on any CPU) followed the schedule of its planned
    steps; `--steps-from`'s Replay, given the report's stage_steps and stage_plan, repeats it to the last bit
    with no cap at all, where the steps alone (a schedule of the run's length) give another model."""
    from common.modes.pca_lora.artifacts import load_codec, load_model
    from semalign.campaigns.pca_lora.replay import Replay

    codec, meta = load_codec(digits_artifacts)
    model = load_model(digits_artifacts, meta)
    z = codec.encode(digits.x_train[:600], 10)
    y = digits.y_train[:600]
    config = AdaptConfig(recipe=recipe, steps=400, budget_ms=60, deep_budget_ms=60, max_epochs=0, holdout=0)
    cut, report, _ = LoraAlignment(adapt=config, clock=StepClock(1e-3)).adapt_state(model, z, y, codec)
    assert report.cut_by_cap and 0 < sum(report.stage_steps) < sum(report.stage_plan), report

    def replayed(plan):
        replay = Replay(config)
        replay.set({"stage_steps": report.stage_steps, "stage_plan": plan, "cut_by_cap": True,
                    "precision": report.precision})
        return replay.adapt_state(model, z, y, codec)

    again, rep, _ = replayed(report.stage_plan)
    assert not rep.cut_by_cap and rep.steps == report.steps  # (a stage the cut never reached counts 0)
    weights = lambda m: [p.detach() for p in m.parameters()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(weights(cut), weights(again)))
    shorter, _, _ = replayed(None)  # a file without stage_plan: the steps, on a schedule of their own length
    assert not all(torch.equal(a, b) for a, b in zip(weights(cut), weights(shorter)))


def test_folded_training_equals_unfolded(digits, digits_artifacts):
    """Training LoRA on z through the folded first layer gives the same W* as training on x_hat."""
    from common.modes.pca_lora.artifacts import load_codec, load_model

    codec, meta = load_codec(digits_artifacts)
    model = load_model(digits_artifacts, meta)
    z = codec.encode(digits.x_train[:200], 12)
    config = AdaptConfig(steps=10, lr=1e-2)
    torch.manual_seed(3)
    folded, _ = LoraAlignment(adapt=config, fold=True).adapt(model, z, digits.y_train[:200], codec)
    torch.manual_seed(3)
    plain, _ = LoraAlignment(adapt=config, fold=False).adapt(model, z, digits.y_train[:200], codec)
    for a, b in zip(folded.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3)


def test_deep_alpha_gets_more_steps(digits, digits_artifacts):
    """Below deep_fraction * d_pre (here 0.25 * 40 = 10) the strategy asks for deep_steps."""
    from common.modes.pca_lora.artifacts import load_codec, load_model

    codec, meta = load_codec(digits_artifacts)
    model = load_model(digits_artifacts, meta)
    cfg = AdaptConfig(steps=5, deep_fraction=0.25, deep_steps=12, budget_ms=None, deep_budget_ms=None,
                      max_epochs=0, holdout=0.0)
    for alpha, want in ((8, 12), (10, 5)):
        z = codec.encode(digits.x_train[:300], alpha)
        _, report = LoraAlignment(adapt=cfg).adapt(model, z, digits.y_train[:300], codec)
        assert report.steps_requested == want and report.steps == want
