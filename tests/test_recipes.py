"""Adaptation recipes, deterministic step counts, and rounds with nothing to align."""

from __future__ import annotations

import itertools

import time

import pytest
import torch

from common.modes.pca_lora.artifacts import load_codec, load_model
from common.learn import fastlora
from common.learn.lora import merge_into
from common.learn.models import accuracy, predict
from common.link.channel.emulator import LinkParams, state_from_mcs
from common.link.channel.nr import max_mcs
from common.link.sidelink.ip import undelayed_delivery
from common.modes.base import RoundContext, RoundIO
from common.modes.pca_lora.adapter_bank import AdapterBank, model_digest
from common.modes.pca_lora.banked_alignment import BankedAlignment
from common.learn.reference import train_dense_reference
from common.modes.pca_lora.adapt_config import DEFAULT_RECIPE, RECIPES, AdaptConfig
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.folded_mlp import dense_state
from common.modes.pca_lora.mode import PcaLora
from common.modes.pca_lora.policy import AccuracyTable, get_policy, lean_n_train
from common.modes.pca_lora.rx import PcaLoraRx
from common.modes.pca_lora.tx import PcaLoraTx, PcaLoraTxConfig
from common.results.log import RoundRecord
from common.wire.protocol import encode


@pytest.fixture(scope="module")
def setup(digits_artifacts):
    codec, meta = load_codec(digits_artifacts)
    return codec, load_model(digits_artifacts, meta)


def _mlp(seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(32, 12, generator=g) * 0.3, torch.randn(16, 32, generator=g) * 0.3,
          torch.randn(10, 16, generator=g) * 0.3]
    bs = [torch.randn(32, generator=g) * 0.1, torch.randn(16, generator=g) * 0.1, torch.randn(10, generator=g) * 0.1]
    return ws, bs


@pytest.mark.parametrize("trained", [1, 2, 3])
def test_dense_trainer_matches_autograd_fit(trained):
    """The hand-written dense trainer (first layer, or all layers) = autograd through fit, same batches."""
    ws, bs = _mlp()
    z, y = torch.randn(700, 12, generator=torch.Generator().manual_seed(1)), torch.arange(700) % 10
    w1, b1 = [w.clone() for w in ws], [b.clone() for b in bs]
    w2, b2 = [w.clone() for w in ws], [b.clone() for b in bs]
    n1, l1, cut = fastlora.train_dense(w1, b1, z, y, trained=trained, steps=20, lr=1e-2, batch=64,
                                       gen=torch.Generator().manual_seed(5))
    n2, l2 = train_dense_reference(w2, b2, z, y, trained=trained, steps=20, lr=1e-2, batch=64, schedule="cosine",
                                   gen=torch.Generator().manual_seed(5))
    assert n1 == n2 == 20 and not cut and l1 == pytest.approx(l2, rel=1e-4)
    for a, b in zip(w1 + b1, w2 + b2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for l in range(trained, 3):  # frozen layers untouched
        assert torch.equal(w1[l], ws[l]) and torch.equal(b1[l], bs[l])


@pytest.mark.parametrize("trained", [1, 3])
def test_training_in_stretches_continues_adam_and_the_schedule(trained):
    """A run split over several calls with a Resume (a round's training parts) = one call, step for step
    (full batch, so the batches are the same): Adam's moments and the cosine continue across calls."""
    ws, bs = _mlp()
    z, y = torch.randn(300, 12, generator=torch.Generator().manual_seed(3)), torch.arange(300) % 10
    w1, b1 = [w.clone() for w in ws], [b.clone() for b in bs]
    w2, b2 = [w.clone() for w in ws], [b.clone() for b in bs]
    fastlora.train_dense(w1, b1, z, y, trained=trained, steps=24, lr=1e-2, batch=0)
    resume = fastlora.Resume(24)
    for k in (7, 9, 8):
        fastlora.train_dense(w2, b2, z, y, trained=trained, steps=k, lr=1e-2, batch=0, resume=resume)
    assert resume.done == 24
    for a, b in zip(w1 + b1, w2 + b2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # without the Resume each call restarts Adam and the schedule: a different model
    w3, b3 = [w.clone() for w in ws], [b.clone() for b in bs]
    for k in (7, 9, 8):
        fastlora.train_dense(w3, b3, z, y, trained=trained, steps=k, lr=1e-2, batch=0)
    assert not torch.allclose(w1[0], w3[0], atol=1e-4)


def test_lora_training_in_stretches_continues_adam_and_the_schedule():
    """The same for the folded LoRA trainer (the paper's recipe)."""
    from common.learn.lora import LoraConfig, init_adapters

    ws, bs = _mlp()
    m, c = torch.randn(8, 12, generator=torch.Generator().manual_seed(4)) * 0.3, torch.zeros(12)  # x = z m + c
    ws = [torch.randn(32, 12, generator=torch.Generator().manual_seed(6)) * 0.3, *ws[1:]]
    z, y = torch.randn(200, 8, generator=torch.Generator().manual_seed(3)), torch.arange(200) % 10
    states = [init_adapters(ws, (0, 1, 2), LoraConfig(4, 8.0), True, torch.Generator().manual_seed(7)) for _ in range(2)]
    fastlora.train(ws, bs, z, y, m, c, states[0], steps=20, lr=1e-2, batch=0)
    resume = fastlora.Resume(20)
    for k in (5, 15):
        fastlora.train(ws, bs, z, y, m, c, states[1], steps=k, lr=1e-2, batch=0, resume=resume)
    for a, b in zip(states[0].A + states[0].B + states[0].d, states[1].A + states[1].B + states[1].d):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_bf16_frozen_layers_track_fp32():
    """bfloat16 frozen layers (where the CPU has it) train to nearly the same first layer."""
    ws, bs = _mlp()
    z, y = torch.randn(512, 12, generator=torch.Generator().manual_seed(2)), torch.arange(512) % 10
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        w, b = [t.clone() for t in ws], [t.clone() for t in bs]
        fastlora.train_dense(w, b, z, y, trained=1, steps=10, lr=1e-2, batch=128, frozen_dtype=dtype)
        out[dtype] = w[0]
    rel = (out[torch.bfloat16] - out[torch.float32]).norm() / (out[torch.float32] - ws[0]).norm()
    assert rel < 0.1, rel  # measured 0.058 (bf16 keeps 8 bits of mantissa)


@pytest.mark.parametrize("trained", [1, 3])
def test_dense_merge_is_exact(setup, digits, trained):
    """The trained folded layers merge into the d_raw model exactly (on every x_hat at this alpha)."""
    codec, model = setup
    alpha = 12
    m, c = (torch.as_tensor(a) for a in codec.linear_decoder(alpha))
    weights = [l.weight.detach() for l in model if isinstance(l, torch.nn.Linear)]
    biases = [l.bias.detach() for l in model if isinstance(l, torch.nn.Linear)]
    g = torch.Generator().manual_seed(3)
    ws = [weights[0] @ m.t() + 0.1 * torch.randn(weights[0].shape[0], alpha, generator=g),
          *[w + 0.05 * torch.randn(w.shape, generator=g) * (trained > 1) for w in weights[1:]]]
    bs = [weights[0] @ c + biases[0] + 0.1, *[b + 0.05 * (trained > 1) for b in biases[1:]]]
    merged = merge_into(model, dense_state(ws, bs, weights, biases, m, c, m, trained))
    z = torch.as_tensor(codec.encode(digits.x_test[:200], alpha))
    h = z
    for l in range(3):
        h = torch.addmm(bs[l], h, ws[l].t())
        h = h.clamp(min=0) if l < 2 else h
    with torch.no_grad():
        torch.testing.assert_close(merged(torch.as_tensor(codec.decode(z.numpy()))), h, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_recover_misaligned_accuracy(setup, digits, recipe):
    """Pre-trained on 40 dims, fed 6: every recipe (fixed steps) beats the frozen model."""
    codec, model = setup
    x_test = codec.reconstruct(digits.x_test, 6)
    before = accuracy(predict(model, x_test), digits.y_test)
    cfg = AdaptConfig(recipe=recipe, steps=400 if recipe == "staged" else 100, stage1_steps=100,
                      stage2_min_steps=50, budget_ms=None, deep_budget_ms=None, max_epochs=0, holdout=0.0)
    adapted, rep = LoraAlignment(adapt=cfg).adapt(model, codec.encode(digits.x_train[:600], 6),
                                                  digits.y_train[:600], codec)
    after = accuracy(predict(adapted, x_test), digits.y_test)
    assert rep.strategy == recipe and rep.complete and rep.steps_by == "fixed"
    assert rep.stage_steps == ([100, 300] if recipe == "staged" else [100])
    assert after > before + 0.05, (before, after)


def test_default_is_deterministic(setup, digits):
    """Default config: a step count calibrated once, not the clock; the same payload gives the same model.

    The wall-clock safety cap is held still (a clock that does not move): on a slow or loaded machine, or
    with bf16 forced on a CPU without it, the real clock's cap cut these runs at different steps."""
    codec, model = setup
    z, y = codec.encode(digits.x_train[:900], 16), digits.y_train[:900]
    strategy = LoraAlignment()
    assert strategy.name == DEFAULT_RECIPE
    info = strategy.calibrate(model, codec)
    assert info["precision"] in ("fp32", "bf16") and info["per_step_ms"][0][0] > 0
    strategy.clock = lambda: 0.0
    a, ra = strategy.adapt(model, z, y, codec)
    other = LoraAlignment(clock=lambda: 0.0)  # another instance shares the process's calibration
    b, rb = other.adapt(model, z, y, codec)
    assert ra.steps_by == "calibrated" and ra.steps == rb.steps > 0 and not ra.cut_by_cap and ra.complete
    assert ra.steps_requested % 10 == 0 or ra.steps_requested == ra.steps  # a round number, or the epoch cap
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)


def test_cap_cuts_and_is_reported(setup, digits):
    codec, model = setup
    z, y = codec.encode(digits.x_train[:1000], 20), digits.y_train[:1000]
    cfg = AdaptConfig(recipe="first-layer", steps=10**6, budget_ms=30.0, max_epochs=0)
    ticks = itertools.count()  # an injected clock: 1 ms per reading, whatever the machine's speed
    _, rep = LoraAlignment(adapt=cfg, clock=lambda: next(ticks) * 1e-3).adapt(model, z, y, codec)
    assert rep.cut_by_cap and not rep.complete and 0 < rep.steps < 10**6


def test_staged_plan_moves_on_only_when_the_budget_allows():
    from common.modes.pca_lora.calibration import Calibration

    cal = Calibration("staged", ((0.4, 0.0), (0.6, 0.0)), 10.0, "fp32", (120.0, 400.0))
    cfg = AdaptConfig()
    assert cal.plan(cfg, 20, 120.0) == [200]                 # 0.75 * 120 - 10 = 80 ms: first layer only
    assert cal.plan(cfg, 20, 400.0) == [150, 380]            # 290 ms: 150 first-layer, then all layers


def test_bank_reuses_a_returning_alpha_without_training(setup, digits):
    codec, model = setup
    cfg = AdaptConfig(steps=60, budget_ms=None)
    bank = AdapterBank(4, codec.fingerprint, model_digest(model)).owner("tx-key")
    strategy = BankedAlignment(LoraAlignment(adapt=cfg), bank)
    z, y = codec.encode(digits.x_train[:800], 10), digits.y_train[:800]
    first, rep = strategy.adapt(model, z, y, codec)
    assert rep.kept == "adapted" and strategy.aligned_alphas() == [10]
    again, rep2 = strategy.adapt(model, codec.encode(digits.x_train[800:1400], 10), digits.y_train[800:1400], codec)
    assert rep2.reused and rep2.steps == 0 and rep2.warm_from_alpha == 10 and rep2.kept == "adapted"
    lean, info = strategy.without_training(model, 10, codec)
    assert info["reused"] and info["steps"] == 0
    for p, q in zip(first.state_dict().values(), lean.state_dict().values()):
        assert torch.equal(p, q)
    frozen, info = strategy.without_training(model, 12, codec)  # nothing stored: the frozen model
    assert frozen is model and info["strategy"] == "none"


def test_lean_n_train_from_the_table():
    table = AccuracyTable({40: [(0, 0.98), (100, 0.98), (1000, 0.981)], 20: [(0, 0.90), (500, 0.95)]})
    assert lean_n_train(table, 40, 2000) == 0                     # within 0.1 pp with none
    assert lean_n_train(table, 20, 2000) == 500                   # training still pays at 20
    assert lean_n_train(None, 20, 2000) == 0 and lean_n_train(table, 30, 2000) == 0


class _LocalIO(RoundIO):
    """The TX's round I/O straight into an in-process RX half, as a session of ``owner``."""

    def __init__(self, rx: PcaLoraRx, state, link=None):
        self.rx, self.state, self.session_id, self.clock_offset_ns = rx, state, 1, 0
        self.session: dict = {}
        self.link = link or type("Link", (), {"deliver": staticmethod(
            lambda n, s, r, wait=True: undelayed_delivery(n, s, r))})

    def exchange_all(self, msgs, reply_types):
        self.sent_ns = time.time_ns()
        handlers, replies = self.rx.handlers(), []
        for msg in msgs:
            ctx = RoundContext(1, msg.seq, self.state, self.link, len(encode(msg)), self.sent_ns, 0, self.session,
                               owner="tx-key")
            replies.append(handlers[msg.TYPE](msg, ctx).message)
        self.replied_ns = time.time_ns()
        return replies


def _round(tx, io, seq):
    io.session["hello_params"] = tx.hello_params()  # what the RX daemon keeps from the TX's HELLO
    rec = RoundRecord(seq)
    tx.run_round(seq, io.state, rec, io)
    return rec.fields, rec


def test_round_with_nothing_to_align_is_lean(setup, digits, digits_artifacts):
    """alpha = d_pre: no training vectors, no adaptation; an alpha the RX banked: the same once announced;
    fill_payload: the paper's full payload."""
    codec, model = setup
    state = state_from_mcs(max_mcs("qam64"), "qam64", LinkParams())
    rx = PcaLora.build_rx({"artifacts": digits_artifacts, "adapt_steps": 30, "bank_size": 4})
    io = _LocalIO(rx, state)
    tx = PcaLoraTx(codec, digits, PcaLoraTxConfig(n_test=50))
    f, _ = _round(tx, io, 0)
    assert f["alpha"] == codec.d_max and f["nothing_to_align"] == "d_pre" and f["payload_rule"] == "lean"
    assert f["n_train"] == 0 and f["n_train_max"] > 0 and f["adapt"]["steps"] == 0
    assert f["acc_adapted"] == f["acc_pretrained"]
    full = PcaLoraTx(codec, digits, PcaLoraTxConfig(n_test=50, fill_payload=True))
    g, _ = _round(full, io, 1)
    assert g["payload_rule"] == "fill" and g["n_train"] == min(g["n_train_max"], len(digits.y_train))
    # a banked alpha: trained once, announced in RESULT, then lean
    # (one PAYLOAD: the hold-out check's verdict on these 600 vectors depends on which 60 are held out)
    fixed = PcaLoraTx(codec, digits, PcaLoraTxConfig(n_test=50, max_train=600, train_parts=0), get_policy("fixed:10"))
    h, _ = _round(fixed, io, 2)
    assert h["n_train"] == 600 and h["nothing_to_align"] is None and h["adapt"]["kept"] == "adapted"
    assert fixed.aligned == {10}
    k, _ = _round(fixed, io, 3)
    assert k["nothing_to_align"] == "bank" and k["n_train"] == 0 and k["adapt"]["reused"]
    assert k["acc_adapted"] > k["acc_pretrained"]  # the stored adapter, not the frozen model


def test_rx_options_choose_the_recipe(digits_artifacts):
    half = PcaLora.build_rx({"artifacts": digits_artifacts, "adapt_recipe": "lora", "adapt_steps": 5})
    assert half.strategy.name == "lora" and half.strategy.config.steps == 5
    assert PcaLora.build_rx({"artifacts": digits_artifacts}).strategy.name == DEFAULT_RECIPE
    with pytest.raises(ValueError, match="recipe"):
        PcaLora.build_rx({"artifacts": digits_artifacts, "adapt_recipe": "magic"})
    names = {o.name for o in PcaLora.rx_options} | {o.name for o in PcaLora.tx_options}
    assert {"adapt_recipe", "adapt_precision", "fill_payload"} <= names


class _AirLink:
    """An emulated link of ``rate_bps``: a frame counts as delivered its air time after receipt."""

    def __init__(self, rate_bps: float):
        self.rate_bps = rate_bps

    def deliver(self, nbytes, state, received_ns, wait=True):
        from common.link.sidelink.base import DeliveryReport

        air_s = nbytes * 8 / self.rate_bps
        return DeliveryReport(air_s, 1, air_s, received_ns + int(air_s * 1e9))


def test_parts_overlap_adaptation_with_the_air_time(setup, digits, digits_artifacts):
    """On the RX timeline: one PAYLOAD adapts after all of it arrived; training parts first adapt while the
    later parts are on air, so when the test part's air time exceeds the last part's adaptation,
    classification waits for nothing; the parts share the link in turn (the test part arrives after all of
    them, like the single frame). One part trains exactly as one PAYLOAD does."""
    codec, _ = setup
    state = state_from_mcs(max_mcs("qam64"), "qam64", LinkParams())
    link = _AirLink(100e3)  # 100 kb/s: the 60 test vectors take ~0.2 s on air, each adaptation ~0.05 s
    rx = PcaLora.build_rx({"artifacts": digits_artifacts, "adapt_steps": 30})
    cfg = {"n_test": 60, "n_min_train": 300, "max_train": 300, "deadline_s": 2.0, "fill_payload": True}
    recs = {}
    for k in (0, 1, 3):
        tx = PcaLoraTx(codec, digits, PcaLoraTxConfig(train_parts=k, **cfg))
        _, recs[k] = _round(tx, _LocalIO(rx, state, link), 0)
    single = recs[0]
    assert all(r.fields["n_train"] == 300 and r.fields["alpha"] == single.fields["alpha"] for r in recs.values())
    waits = {k: r.latency_ms["fine_tuning"] - r.latency_ms["communication"] for k, r in recs.items()}
    assert waits[0] == pytest.approx(single.latency_ms["finetune"], abs=1e-3) and waits[0] > 0
    assert waits[1] == 0.0 == waits[3]
    adapt = recs[3].fields["adapt"]  # the parts' report sums them: the round ran the steps one PAYLOAD does
    assert recs[3].fields["parts"] == 4 and adapt["steps"] == adapt["steps_requested"] == single.fields["adapt"]["steps"]
    for k in (1, 3):
        assert recs[k].latency_ms["transfer"] >= single.latency_ms["transfer"] - 1.0
    assert recs[1].fields["acc_adapted"] == single.fields["acc_adapted"]
    assert recs[3].fields["acc_adapted"] >= single.fields["acc_pretrained"] - 0.05
