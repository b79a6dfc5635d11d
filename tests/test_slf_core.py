"""SLF mode core: DMC, index packing, VQ-VAE loss and training, layer freezing, artifacts, recovery time."""

import copy
import dataclasses
import struct

import numpy as np
import pytest
import torch

from common.data import datasets
from common.data.datasets import Dataset, DatasetUnavailable, load_dataset
from common.modes.slf.artifacts import SlfArtifactError, load_transceiver, save_transceiver
from common.modes.slf.configs import TRX1, TRX2, TransceiverConfig, get_config
from common.modes.slf.dmc import (bits_per_index, dmc_numpy, dmc_torch, pack_indices, packed_size_bytes,
                                  unpack_indices)
from common.modes.slf.recovery import (finetune_flops, forward_flops, recovery_time, state_bytes,
                                       transceiver_forward_flops)
from common.modes.slf.training import (LR_FINETUNE, LR_RETRAIN, SlfConfig, evaluate_link, pretrain_head,
                                       pretrain_transceiver, random_shifts, slf_finetune, vq_loss)
from common.modes.slf.transceiver import DECODER_LAYERS, TaskHead, Transceiver, TransceiverShape, frozen_layers

TINY = TransceiverShape(image_size=8, widths=(4, 8), code_dim=4, n_codewords=8, head_channels=(4, 4),
                        head_hidden=8)
DIGITS_CFG = TransceiverConfig("tiny", "digits", eps=0.05, seed=3, epochs=3, head_epochs=3, batch_size=64,
                               shape=TINY)


@pytest.fixture(scope="module")
def images(digits):
    return torch.from_numpy(digits.x_train[:256])


# ------------------------------------------------------------------ channel

@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("k,eps", [(16, 0.1), (5, 0.3)])
def test_dmc_statistics(backend, k, eps):
    n, sent = 200_000, 3
    if backend == "numpy":
        got = dmc_numpy(np.full(n, sent, np.int64), k, eps, np.random.default_rng(0))
    else:
        got = dmc_torch(torch.full((n,), sent), k, eps, torch.Generator().manual_seed(0)).numpy()
    flipped = got[got != sent]
    assert abs(len(flipped) / n - eps) < 5 * np.sqrt(eps * (1 - eps) / n)
    share = np.bincount(flipped, minlength=k) / len(flipped)
    assert share[sent] == 0
    np.testing.assert_allclose(np.delete(share, sent), 1 / (k - 1), atol=0.02)


def test_dmc_edges_and_seeding():
    x = np.arange(16).repeat(10)
    np.testing.assert_array_equal(dmc_numpy(x, 16, 0.0, np.random.default_rng(1)), x)
    assert not np.any(dmc_numpy(x, 16, 1.0, np.random.default_rng(1)) == x)
    np.testing.assert_array_equal(dmc_numpy(x, 16, 0.5, np.random.default_rng(2)),
                                  dmc_numpy(x, 16, 0.5, np.random.default_rng(2)))
    with pytest.raises(ValueError, match="1.5"):
        dmc_numpy(x, 16, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_symbols"):
        dmc_torch(torch.zeros(3, dtype=torch.long), 1, 0.1)


@pytest.mark.parametrize("k,bits,n_bytes", [(16, 4, 25), (5, 3, 19), (256, 8, 49), (2, 1, 7)])
def test_pack_round_trip_and_size(k, bits, n_bytes):
    idx = np.random.default_rng(k).integers(0, k, (1, 49))
    data = pack_indices(idx, k)
    assert bits_per_index(k) == bits
    assert len(data) == n_bytes == packed_size_bytes(49, k)
    np.testing.assert_array_equal(unpack_indices(data, k, 49), idx.reshape(-1))


def test_pack_bit_layout_and_errors():
    assert pack_indices(np.array([1, 2, 3]), 16) == bytes([0x12, 0x30])
    assert pack_indices(np.array([4, 1]), 5) == bytes([0b10000100])
    with pytest.raises(ValueError, match="16"):
        pack_indices(np.array([16]), 16)
    with pytest.raises(ValueError, match="need 1 bytes, got 2"):
        unpack_indices(b"\x00\x00", 16, 2)
    with pytest.raises(ValueError, match="index 7"):
        unpack_indices(b"\xff", 5, 2)


# ------------------------------------------------------------------ model

def test_default_transceiver_shapes():
    m = Transceiver()
    x = torch.rand(3, 784)
    idx = m.encode(x)
    assert idx.shape == (3, 49) == (3, m.shape.indices_per_image) and idx.dtype == torch.int64 and 0 <= idx.min() and idx.max() < 16
    x_hat = m.decode(idx)
    assert x_hat.shape == (3, 1, 28, 28) and 0 <= x_hat.min() and x_hat.max() <= 1
    assert TaskHead()(x).shape == (3, 10)
    with pytest.raises(ValueError, match="784"):
        m.encode(torch.rand(3, 100))
    with pytest.raises(ValueError, match="image_size"):
        TransceiverShape(image_size=30)


def test_straight_through_gradient_reaches_encoder(images):
    m = Transceiver(TINY, seed=0)
    loss = vq_loss(m, images[:32], eps=1.0, generator=torch.Generator().manual_seed(0))
    loss.reconstruction.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder.parameters())
    assert m.codebook.weight.grad is None  # the codebook learns from its own term only


def test_pretraining_lowers_codebook_loss(images, digits):
    with torch.no_grad():
        before = vq_loss(Transceiver(TINY, seed=DIGITS_CFG.seed), images, 0.0)
    model, report = pretrain_transceiver(images, DIGITS_CFG)
    with torch.no_grad():
        after = vq_loss(model, images, 0.0)
    assert report.steps == 12 and report.complete
    assert float(after.codebook) < 0.5 * float(before.codebook)
    assert float(after.total) < float(before.total)
    clean_cfg = dataclasses.replace(DIGITS_CFG, head_on="clean")
    head, _ = pretrain_head(images, torch.from_numpy(digits.y_train[:256]), clean_cfg)
    assert not any(p.requires_grad for p in head.parameters())
    metrics = evaluate_link(model, model, head, images, torch.from_numpy(digits.y_train[:256]), 0.0)
    assert metrics.n == 256 and 0 < metrics.mse < 0.25 and 0 <= metrics.accuracy <= 1
    before = copy.deepcopy(model.state_dict())
    on_mixed, _ = pretrain_head(images, torch.from_numpy(digits.y_train[:256]), DIGITS_CFG, transceiver=model)
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())  # the transceiver is left alone
    assert not any(p.requires_grad for p in on_mixed.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(head.parameters(), on_mixed.parameters()))
    again, _ = pretrain_head(images, torch.from_numpy(digits.y_train[:256]), DIGITS_CFG, transceiver=model)
    assert all(torch.equal(a, b) for a, b in zip(on_mixed.parameters(), again.parameters()))  # seeded
    with pytest.raises(ValueError, match="head_on='mixed' needs a transceiver"):
        pretrain_head(images, torch.from_numpy(digits.y_train[:256]), DIGITS_CFG)


def test_random_shifts_are_seeded_translations():
    shape = TransceiverShape(channels=2, image_size=8)
    x = torch.rand(50, 2 * 8 * 8) + 0.5  # no zero pixel: a pixel of 0 was shifted in
    a = random_shifts(x, shape, 2, torch.Generator().manual_seed(5))
    b = random_shifts(x, shape, 2, torch.Generator().manual_seed(5))
    assert a.shape == (50, 2, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a, random_shifts(x, shape, 2, torch.Generator().manual_seed(6)))
    assert torch.equal(random_shifts(x, shape, 0, torch.Generator()), x.reshape(50, 2, 8, 8))
    images = x.reshape(50, 2, 8, 8)
    moved = 0
    for got, img in zip(a, images):  # each image is one translation of its own, the same for both channels
        hits = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                if torch.equal(got, torch.roll(img, (-dy, -dx), (1, 2)) * _inside(dy, dx))]
        assert len(hits) == 1
        moved += hits[0] != (0, 0)
    assert moved > 25


def _inside(dy: int, dx: int, side: int = 8) -> torch.Tensor:
    """Mask (side, side) of the pixels that a shift by (dy, dx) takes from inside the image."""
    rows, cols = torch.arange(side) + dy, torch.arange(side) + dx
    ok = lambda r: (r >= 0) & (r < side)
    return (ok(rows)[:, None] & ok(cols)[None, :]).float()


def test_config_schedule_and_head_input_are_checked():
    with pytest.raises(ValueError, match="schedule"):
        dataclasses.replace(DIGITS_CFG, schedule="linear")
    with pytest.raises(ValueError, match="head_schedule"):
        dataclasses.replace(DIGITS_CFG, head_schedule="step")
    with pytest.raises(ValueError, match="head_on"):
        dataclasses.replace(DIGITS_CFG, head_on="noisy")
    with pytest.raises(ValueError, match=r"head_shift must be in 0..3 pixels, got 4"):
        dataclasses.replace(DIGITS_CFG, head_shift=4)  # TINY's images are 8 x 8
    with pytest.raises(ValueError, match="head_shift"):
        dataclasses.replace(DIGITS_CFG, head_shift=-1)
    custom = dataclasses.replace(DIGITS_CFG, head_schedule="constant", head_on="reconstructions", head_shift=1)
    assert TransceiverConfig.from_dict(custom.to_dict()) == custom
    assert {"head_schedule", "head_on", "head_shift"} <= set(custom.to_dict())
    assert TransceiverConfig.from_dict(DIGITS_CFG.to_dict()) == DIGITS_CFG


# ------------------------------------------------------------------ split learning with layer freezing

@pytest.fixture(scope="module")
def pair():
    return Transceiver(TINY, seed=1), Transceiver(TINY, seed=2)


@pytest.mark.parametrize("n_frozen", [1, 2, 3, 4])
def test_freezing_keeps_exactly_the_last_layers(pair, images, n_frozen):
    tx, rx = pair
    tx_before = copy.deepcopy(tx.state_dict())
    download = rx.decoder_state()
    res = slf_finetune(tx, download, images, SlfConfig(n_frozen=n_frozen, eps=0.1, epochs=1, seed=0))
    after = res.model.decoder_state()
    assert res.frozen == DECODER_LAYERS[4 - n_frozen:] == frozen_layers(n_frozen)
    for key, t in after.items():
        frozen = key.rsplit(".", 1)[0] in res.frozen
        assert torch.equal(t, download[key]) == frozen, key
    assert res.changed_layers == DECODER_LAYERS[:4 - n_frozen]
    assert set(res.upload_state()) == {k for k in download if k.rsplit(".", 1)[0] in res.changed_layers}
    assert not torch.equal(res.model.encoder[0].weight, tx.encoder[0].weight)
    assert all(torch.equal(t, tx.state_dict()[k]) for k, t in tx_before.items())  # TX left as it was
    assert SlfConfig(n_frozen, 0.1).lr == LR_FINETUNE
    # the RX, given the upload, decodes exactly as the TX's virtual transceiver does
    rx_new = copy.deepcopy(rx)
    assert rx_new.load_decoder_state(res.upload_state()) == res.changed_layers
    idx = res.model.encode(images[:8])
    assert torch.equal(rx_new.decode(idx), res.model.decode(idx))


def test_l0_reinitialises_the_decoder(pair, images):
    tx, rx = pair
    download = rx.decoder_state()
    config = SlfConfig(n_frozen=0, eps=0.1, epochs=0.25, seed=0)
    res = slf_finetune(tx, download, images, config)
    assert res.report.steps == 1 and config.lr == LR_RETRAIN
    assert res.changed_layers == DECODER_LAYERS
    # one Adam step moves a weight by about lr; a re-initialised conv is far away
    for i in range(3):
        key = f"decoder.{i}.weight"
        assert (res.model.decoder_state()[key] - download[key]).abs().max() > 20 * LR_RETRAIN
    # the codebook starts from the TX's own
    assert (res.model.codebook.weight - tx.codebook.weight).abs().max() <= 2 * LR_RETRAIN


def test_decoder_state_validation(pair):
    _, rx = pair
    state = rx.decoder_state(["decoder.1"])
    assert set(state) == {"decoder.1.weight", "decoder.1.bias"}
    with pytest.raises(ValueError, match="without 'decoder.1.bias'"):
        rx.load_decoder_state({"decoder.1.weight": state["decoder.1.weight"]})
    with pytest.raises(ValueError, match="decoder.1.bias"):
        rx.load_decoder_state({**state, "decoder.1.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="encoder.0.weight"):
        rx.load_decoder_state({"encoder.0.weight": rx.encoder[0].weight})
    with pytest.raises(ValueError, match="unknown decoder layers"):
        rx.decoder_state(["encoder.0"])
    with pytest.raises(ValueError, match="whole decoder"):
        slf_finetune(rx, state, torch.rand(4, 64), SlfConfig(1, 0.1))
    with pytest.raises(ValueError, match="5"):
        SlfConfig(n_frozen=5, eps=0.1)
    with pytest.raises(ValueError, match="epochs=0"):
        SlfConfig(n_frozen=1, eps=0.1, epochs=0)


# ------------------------------------------------------------------ artifacts

def test_artifacts_round_trip_and_refuse_corruption(tmp_path, pair):
    model, _ = pair
    head = TaskHead(TINY, seed=4)
    meta = save_transceiver(tmp_path, model, head, DIGITS_CFG, {"mse": 0.02, "accuracy": 0.9})
    m2, h2, cfg, meta2 = load_transceiver(tmp_path)
    assert cfg == DIGITS_CFG and meta2 == meta and (meta.codec, meta.mode) == ("vqvae", "slf")
    assert all(torch.equal(t, m2.state_dict()[k]) for k, t in model.state_dict().items())
    assert all(torch.equal(t, h2.state_dict()[k]) for k, t in head.state_dict().items())
    raw = bytearray((tmp_path / "model.pt").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (tmp_path / "model.pt").write_bytes(bytes(raw))
    with pytest.raises(SlfArtifactError, match="sha256") as err:
        load_transceiver(tmp_path)
    assert isinstance(err.value, ValueError)
    with pytest.raises(SlfArtifactError, match="missing meta.json"):
        load_transceiver(tmp_path / "nowhere")


# ------------------------------------------------------------------ recovery time

def test_recovery_time_by_hand():
    rt = recovery_time(download_bytes=114_000, finetune_flops=64.28e12, upload_bytes=76_000)
    assert rt.download_s == pytest.approx(0.456)
    assert rt.finetune_s == pytest.approx(64.28 / 30)
    assert rt.upload_s == pytest.approx(0.304)
    assert rt.total_s == pytest.approx(0.456 + 64.28 / 30 + 0.304) and rt.upload_kb == 76
    with pytest.raises(ValueError, match="-1"):
        recovery_time(-1, 0, 0)


def test_flop_counter_by_hand():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ConvTranspose2d(2, 1, 4, 2, 1),
                              torch.nn.Flatten(), torch.nn.Linear(64, 3))
    flops = forward_flops(net, lambda: net(torch.zeros(1, 1, 4, 4)))
    # conv: 2x4x4 outputs x 9 MACs; transposed: 2x4x4 inputs x 16 MACs; linear: 64 x 3 MACs
    assert flops == {"0": 2 * 288, "1": 2 * 512, "3": 2 * 192}
    m = Transceiver(TINY)
    fwd = sum(transceiver_forward_flops(m).values())
    assert finetune_flops(m, 0, samples=10, epochs=2) == 3 * fwd * 20
    costs = [finetune_flops(m, n, 10, 2) for n in range(5)]
    assert costs == sorted(costs, reverse=True) and costs[3] == costs[4]  # the codebook is no conv
    assert state_bytes(m.decoder_state(["codebook"])) == 8 * 4 * 4


# ------------------------------------------------------------------ configs and data

def test_configs_split_apart():
    n = 100
    fake = Dataset("mnist", np.random.default_rng(0).random((n, 784), np.float32), np.arange(n, dtype=np.uint8) % 10,
                   np.zeros((1, 784), np.float32), np.zeros(1, np.uint8))
    s1, s2 = TRX1.split(fake), TRX2.split(fake)
    rows = lambda d: {r.tobytes() for r in np.concatenate([d.x_train, d.x_test])}
    assert len(s1.x_train) == 40 and len(s1.x_test) == 10
    assert not rows(s1) & rows(s2)
    np.testing.assert_array_equal(TRX1.split(fake).x_train, s1.x_train)
    assert get_config("trx3").dataset == "fashion-mnist" and get_config("trx2").eps == 0.1
    assert TransceiverConfig.from_dict(TRX1.to_dict()) == TRX1
    with pytest.raises(ValueError, match="cifar"):
        dataclasses.replace(TRX1, dataset="cifar")
    with pytest.raises(ValueError, match="trx9"):
        get_config("trx9")
    with pytest.raises(ValueError, match="fashion-mnist"):
        get_config("trx3").split(fake)


def write_idx(path, arr):
    path.write_bytes(struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
                     + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "absent")
    with pytest.raises(DatasetUnavailable, match="--data-dir.*apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion-mnist", cache_dir=tmp_path / "c")
    for stem, arr in {"train-images-idx3-ubyte": np.full((6, 28, 28), 255), "train-labels-idx1-ubyte": np.arange(6),
                      "t10k-images-idx3-ubyte": np.zeros((2, 28, 28)), "t10k-labels-idx1-ubyte": np.arange(2)}.items():
        write_idx(tmp_path / stem, arr)
    d = load_dataset("fashion-mnist", data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert d.name == "fashion-mnist" and d.x_train.shape == (6, 784) and d.x_train.max() == pytest.approx(1.0)
    assert load_dataset("fashion-mnist", cache_dir=tmp_path / "c").name == "fashion-mnist"  # from the cache


def test_a_config_saved_before_the_head_options_reads_as_it_was_trained():
    old = TransceiverConfig("t", "digits", eps=0.0, seed=0).to_dict()
    del old["head_on"], old["head_schedule"], old["head_shift"]
    back = TransceiverConfig.from_dict(old)
    assert (back.head_on, back.head_schedule, back.head_shift) == ("clean", back.schedule, 0)
