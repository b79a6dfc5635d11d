"""The batched dense trainer: K sessions trained in one loop = K unbatched runs (steps, losses, weights,
accuracy); and a smoke run of its benchmark."""

from __future__ import annotations

import pytest
import torch

from common.learn import fastlora
from common.learn.batched_dense import train_dense_batched


def _mlp(sizes=(12, 32, 16, 10), seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(o, i, generator=g) * 0.3 for i, o in zip(sizes[:-1], sizes[1:])]
    bs = [torch.randn(o, generator=g) * 0.1 for o in sizes[1:]]
    return ws, bs


def _data(k, n=300, d=12):
    g = torch.Generator().manual_seed(100 + k)
    x = torch.randn(n, d, generator=g)
    return x, (x[:, :3].sum(1) > 0).long() * 3 + (x[:, 3] > 0).long()  # a learnable labelling


def _copies(ws, bs):
    return [w.clone() for w in ws], [b.clone() for b in bs]


@pytest.mark.parametrize("trained", [1, 2, 3])
@pytest.mark.parametrize("batch", [0, 64])
def test_each_member_equals_its_unbatched_run(trained, batch):
    """Same steps, the same losses and weights to float32 rounding as train_dense with the same generator."""
    ws, bs = _mlp()
    k_members = 4
    data = [_data(k) for k in range(k_members)]
    alone = []
    for k, (x, y) in enumerate(data):
        w, b = _copies(ws, bs)
        steps, loss, cut = fastlora.train_dense(w, b, x, y, trained=trained, steps=30, lr=1e-2, batch=batch,
                                                gen=torch.Generator().manual_seed(k))
        assert steps == 30 and not cut
        alone.append((w, b, loss))
    members = [_copies(ws, bs) for _ in range(k_members)]
    steps, losses, cut = train_dense_batched(members, [x for x, _ in data], [y for _, y in data],
                                             [torch.Generator().manual_seed(k) for k in range(k_members)],
                                             trained=trained, steps=30, lr=1e-2, batch=batch)
    assert steps == 30 and not cut
    for (w, b), (w1, b1, loss1), loss in zip(members, alone, losses):
        assert loss == pytest.approx(loss1, rel=1e-5, abs=1e-6)
        for a, r in zip(w + b, w1 + b1):
            torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)
        for l in range(trained, 3):
            assert torch.equal(w[l], ws[l]) and torch.equal(b[l], bs[l])  # frozen layers untouched
    # the members did learn different things (their own data), not one shared model
    assert not torch.allclose(members[0][0][0], members[1][0][0])


@pytest.mark.parametrize("trained", [1, 2])
def test_frozen_layers_in_bf16_as_unbatched(trained):
    """The frozen layers in bfloat16 (the first-layer recipe's precision where it pays): the same as
    train_dense's bf16 run, to bf16 rounding of the frozen products."""
    ws, bs = _mlp()
    data = [_data(k) for k in range(3)]
    alone = []
    for k, (x, y) in enumerate(data):
        w, b = _copies(ws, bs)
        fastlora.train_dense(w, b, x, y, trained=trained, steps=20, lr=1e-2, batch=64,
                             gen=torch.Generator().manual_seed(k), frozen_dtype=torch.bfloat16)
        alone.append((w, b))
    members = [_copies(ws, bs) for _ in range(3)]
    steps, _, _ = train_dense_batched(members, [x for x, _ in data], [y for _, y in data],
                                      [torch.Generator().manual_seed(k) for k in range(3)], trained=trained,
                                      steps=20, lr=1e-2, batch=64, frozen_dtype=torch.bfloat16)
    assert steps == 20
    for (w, b), (w1, b1) in zip(members, alone):
        for a, r in zip(w + b, w1 + b1):
            torch.testing.assert_close(a, r, atol=1e-3, rtol=1e-3)


def test_same_predictions_as_unbatched_at_the_rx_shape():
    """At a folded MNIST-like shape (alpha 20 -> 64 -> 32 -> 10), first layer then all layers (the staged
    recipe's two stages): the members' accuracies on held-out vectors equal the unbatched runs' within
    0.1 pp (here: the same predictions up to a handful of near-ties)."""
    ws, bs = _mlp((20, 64, 32, 10), seed=3)
    k_members = 3
    data = [_data(k, n=600, d=20) for k in range(k_members)]
    test = [_data(50 + k, n=2000, d=20) for k in range(k_members)]
    alone, members = [], [_copies(ws, bs) for _ in range(k_members)]
    gens_b = [torch.Generator().manual_seed(k) for k in range(k_members)]
    for k, (x, y) in enumerate(data):
        w, b = _copies(ws, bs)
        gen = torch.Generator().manual_seed(k)
        fastlora.train_dense(w, b, x, y, trained=1, steps=40, lr=3e-2, batch=128, gen=gen)
        fastlora.train_dense(w, b, x, y, trained=3, steps=40, lr=1e-2, batch=128, gen=gen)
        alone.append((w, b))
    xs, ys = [x for x, _ in data], [y for _, y in data]
    assert train_dense_batched(members, xs, ys, gens_b, trained=1, steps=40, lr=3e-2, batch=128)[0] == 40
    assert train_dense_batched(members, xs, ys, gens_b, trained=3, steps=40, lr=1e-2, batch=128)[0] == 40

    def acc(w, b, x, y):
        h = x
        for l in range(3):
            h = h @ w[l].t() + b[l]
            h = h.clamp(min=0) if l < 2 else h
        return float((h.argmax(1) == y).float().mean())

    for (w, b), (w1, b1), (xt, yt) in zip(members, alone, test):
        assert abs(acc(w, b, xt, yt) - acc(w1, b1, xt, yt)) <= 1e-3


def test_cap_cuts_every_member_at_the_same_step():
    ws, bs = _mlp()
    ticks = iter(range(1000))
    members = [_copies(ws, bs) for _ in range(2)]
    data = [_data(k) for k in range(2)]
    steps, losses, cut = train_dense_batched(members, [x for x, _ in data], [y for _, y in data],
                                             [torch.Generator().manual_seed(k) for k in range(2)], trained=1,
                                             steps=50, lr=1e-2, batch=64, cap_s=5, clock=lambda: next(ticks))
    assert cut and steps == 4 and all(loss == loss for loss in losses)


@pytest.mark.parametrize("change, text", [
    (lambda m, xs, ys, g: (m, xs[:1], ys, g), r"one \(x, y, generator\) per member"),
    (lambda m, xs, ys, g: (m, [xs[0], xs[1][:100]], [ys[0], ys[1][:100]], g), "same number of vectors"),
    (lambda m, xs, ys, g: ([m[0], (m[1][0][:2] + [m[1][0][2] + 1], m[1][1])], xs, ys, g), "frozen layers"),
])
def test_bad_input_is_one_line_error(change, text):
    ws, bs = _mlp()
    data = [_data(k) for k in range(2)]
    args = change([_copies(ws, bs) for _ in range(2)], [x for x, _ in data], [y for _, y in data],
                  [torch.Generator() for _ in range(2)])
    with pytest.raises(ValueError, match=text):
        train_dense_batched(*args, trained=1, steps=2, lr=1e-2, batch=64)


# ---------------------------------------------------------------- the benchmark


def test_batch_bench_writes_its_figures(digits_artifacts, tmp_path, capsys, monkeypatch):
    """The benchmark on digits (N = 2, one repeat, fp32): the single runs are the RX's own (bit-equal
    loss), and the batched ones ran the same steps to the same weights and accuracy. No timing asserted."""
    from semalign.campaigns.pca_lora import batch_bench

    monkeypatch.setenv("SEMALIGN_PRECISION", "fp32")

    result = batch_bench.main(["--artifacts", str(digits_artifacts), "--dataset", "digits", "--sessions", "2",
                               "--n-train", "0", "--repeats", "1", "--out", str(tmp_path)])
    row, = result["rows"]
    assert row["n_sessions"] == 2 and len(row["sessions"]) == 2 and sum(row["plan"]) > 0
    assert row["same_steps"] and row["rx_same_loss"] and row["precision"] == "fp32"
    assert row["max_weight_diff"] <= 1e-4 and row["max_abs_acc_diff_pp"] <= 0.1
    for s in row["sessions"]:
        assert s["loss_batched"] == pytest.approx(s["loss_single"], rel=1e-4, abs=1e-5)
    assert row["single_ms"] > 0 and row["batched_ms"] > 0 and row["loadavg_start"]
    out = capsys.readouterr().out
    assert (tmp_path / "batch_bench.json").exists() and "/proc/loadavg" in out and "| N |" in out


def test_batch_bench_refuses_bad_counts_in_one_line(capsys):
    from semalign.campaigns.pca_lora import batch_bench

    with pytest.raises(SystemExit):
        batch_bench.main(["--sessions", "two"])
    assert "comma-separated ints" in capsys.readouterr().err
