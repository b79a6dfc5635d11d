"""Adapter bank: LRU bound, persistence, refusal of foreign/corrupt banks, warm starts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.modes.pca_lora.adapter_bank import (
    AdapterBank,
    AdapterBankError,
    model_digest,
    owner_digest,
)
from common.modes.pca_lora.adapt_config import AdaptConfig
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.banked_alignment import BankedAlignment
from common.modes.pca_lora.artifacts import load_codec, load_model
from common.learn.lora import LoraConfig, init_adapters


TX = "tx-key"  # the one owner of most tests below


def _open(*args):
    """``TX``'s view of the bank ``AdapterBank(*args)``."""
    return AdapterBank(*args).owner(TX)


def _state(seed=0):
    weights = [torch.zeros(16, 8), torch.zeros(4, 16)]
    return init_adapters(weights, (0, 1), LoraConfig(2, 4.0), True, torch.Generator().manual_seed(seed))


def test_lru_evicts_least_recently_used():
    bank = _open(2, "fp", "model")
    bank.put(10, _state(1))
    bank.put(20, _state(2))
    assert bank.get(10) is not None  # 10 is now the most recent
    bank.put(30, _state(3))
    assert bank.alphas() == [10, 30]
    assert bank.get(20) is None


def test_nearest_prefers_closest_then_larger():
    bank = _open(4, "fp", "model")
    for a in (20, 60):
        bank.put(a, _state(a))
    assert bank.nearest(30)[0] == 20
    assert bank.nearest(40)[0] == 60  # tie: the larger alpha
    assert _open(1, "fp", "model").nearest(5) is None


def test_persists_across_restarts(tmp_path):
    bank = _open(3, "fp", "model", tmp_path)
    s = _state(7)
    bank.put(40, s)
    bank.put(80, _state(8))
    again = _open(3, "fp", "model", tmp_path)
    assert again.alphas() == [40, 80]
    got = again.get(40)
    for a, b in zip(got.A + got.B + got.d, s.A + s.B + s.d):
        torch.testing.assert_close(a, b)
    assert got.layers == s.layers and got.scaling == s.scaling


def test_eviction_removes_file(tmp_path):
    bank = _open(1, "fp", "model", tmp_path)
    bank.put(10, _state())
    bank.put(20, _state())
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [f"{owner_digest(TX)}-alpha-0020.pt"]


@pytest.mark.parametrize("change, match", [
    (lambda d: _edit_manifest(d, format_version=99), "format version 99"),
    (lambda d: _edit_manifest(d, fingerprint="other"), "other artifacts"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "unreadable"),
])
def test_refuses_bad_banks(tmp_path, change, match):
    _open(2, "fp", "model", tmp_path).put(10, _state())
    change(tmp_path)
    with pytest.raises(AdapterBankError, match=match):
        _open(2, "fp", "model", tmp_path)


def _edit_manifest(d, **changes):
    m = json.loads((d / "manifest.json").read_text())
    m.update(changes)
    (d / "manifest.json").write_text(json.dumps(m))


def test_warm_start_and_returning_alpha(digits, digits_artifacts):
    codec, meta = load_codec(digits_artifacts)
    model = load_model(digits_artifacts, meta)
    cfg = AdaptConfig(steps=30, warm_steps=5, budget_ms=None, holdout=0.0, max_epochs=0)  # bank mechanics only
    strategy = BankedAlignment(LoraAlignment(adapt=cfg), _open(4, codec.fingerprint, model_digest(model)))
    z20, z12 = codec.encode(digits.x_train[:300], 20), codec.encode(digits.x_train[:300], 12)
    y = digits.y_train[:300]
    _, first = strategy.adapt(model, z20, y, codec)
    assert not first.warm_start and first.steps == 30
    _, near = strategy.adapt(model, z12, y, codec)
    assert near.warm_start and near.warm_from_alpha == 20 and near.steps == 30
    _, back = strategy.adapt(model, z20, y, codec)
    assert back.warm_start and back.warm_from_alpha == 20 and back.steps == 5 and back.complete
    assert sorted(strategy.bank.alphas()) == ([12, 20] if near.kept == "adapted" else [20])


def test_model_digest_changes_with_weights(digits_artifacts):
    codec, meta = load_codec(digits_artifacts)
    model = load_model(digits_artifacts, meta)
    before = model_digest(model)
    with torch.no_grad():
        model[0].weight[0, 0] += 1
    assert model_digest(model) != before
    _ = np.zeros(1)


def test_rx_options_build_a_persistent_bank(tmp_path, digits, digits_artifacts):
    from common.modes.pca_lora.mode import PcaLora

    opts = {"artifacts": digits_artifacts, "adapt_steps": 5}
    plain = PcaLora.build_rx(opts)
    assert plain.bank is None and not isinstance(plain.strategy_for(TX), BankedAlignment)
    half = PcaLora.build_rx({**opts, "adapter_bank": tmp_path / "bank", "bank_size": 2})
    assert isinstance(half.strategy_for(TX), BankedAlignment)
    assert not isinstance(half.strategy_for(None), BankedAlignment)  # a session bound to nothing keeps nothing
    codec, model = half.codec, half.model
    _, report = half.strategy_for(TX).adapt(model, codec.encode(digits.x_train[:200], 16), digits.y_train[:200],
                                            codec)
    info = report.to_dict()
    assert {"complete", "warm_start", "warm_from_alpha"} <= set(info)
    if report.kept == "adapted":
        again = PcaLora.build_rx({**opts, "adapter_bank": tmp_path / "bank"})
        assert again.strategy_for(TX).aligned_alphas() == [16] and again.strategy_for("other").aligned_alphas() == []


def test_owners_never_see_each_others_adapters_and_shared_capacity_evicts(tmp_path):
    bank = AdapterBank(3, "fp", "model", tmp_path)
    a, b = bank.owner("key-a"), bank.owner("key-b")
    a.put(10, _state(1))
    assert b.get(10) is None and b.nearest(10) is None and b.alphas() == []
    b.put(10, _state(2))
    again = AdapterBank(3, "fp", "model", tmp_path)  # persisted per owner
    torch.testing.assert_close(again.owner("key-a").get(10).A[0], _state(1).A[0])
    torch.testing.assert_close(again.owner("key-b").get(10).A[0], _state(2).A[0])
    b.put(20, _state(3))
    b.put(30, _state(4))  # capacity 3 of all owners: a's alpha 10, the least recently used, goes
    assert a.alphas() == [] and b.alphas() == [10, 20, 30]


def test_a_version_1_bank_is_refused_in_one_line(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "fingerprint": "fp",
                                                        "model_sha256": "model", "lru": []}))
    with pytest.raises(AdapterBankError, match="format version 1,.*per TX key.*move the directory away") as e:
        AdapterBank(2, "fp", "model", tmp_path)
    assert "\n" not in str(e.value)


def test_bank_shared_gives_every_session_one_owner(digits_artifacts):
    from common.modes.pca_lora.mode import PcaLora

    opts = {"artifacts": digits_artifacts, "adapt_steps": 5, "bank_size": 4}
    own, shared = PcaLora.build_rx(opts), PcaLora.build_rx({**opts, "bank_shared": True})
    assert own.strategy_for("key-a").bank != own.strategy_for("key-b").bank
    assert shared.strategy_for("key-a").bank == shared.strategy_for("key-b").bank == shared.strategy_for(None).bank
