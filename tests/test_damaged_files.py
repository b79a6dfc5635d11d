"""Damaged files and refused pickles end in the documented one-line error, or are skipped as documented.

Every damaged file here passes its checksum (``meta.json`` is rewritten to
match it: a file truncated before ``meta.json`` was written, or replaced
together with it), so the loader itself must refuse it. Before
``common.artifacts.load_tensors`` / ``load_arrays``, each of these ended in a
traceback: ``semalign rx`` on a truncated ``model.pt`` (RuntimeError), a
refused pickle (``_pickle.UnpicklingError``) or a truncated ``basis.npz``
(``zipfile.BadZipFile``); slf's kept-alignment lookup let a refused pickle's
``UnpicklingError`` escape instead of removing and skipping the entry; a
damaged dataset cache (or ``--data-dir``'s ``mnist.npz``) was a
``zipfile.BadZipFile`` traceback instead of a new read of the source (or one
``DatasetUnavailable`` line).
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common.artifacts import ArtifactError, sha256_file
from common.modes.slf.artifacts import SlfArtifactError, load_transceiver, save_transceiver
from common.modes.slf.cache import AlignmentCache
from common.modes.slf.transceiver import TaskHead, Transceiver
from tests.helpers import start_rx
from tests.test_slf_core import DIGITS_CFG, TINY


class _Evil:
    def __reduce__(self):  # what a refused pickle would run: never reached
        return (print, ("unpickled!",))


DAMAGES = {  # name -> what the file becomes, given its bytes
    "truncated": lambda b: b[: len(b) // 3],
    "empty": lambda b: b"",
    "garbage": lambda b: b"\x00garbage" * 64,
    "refused-pickle": lambda b: pickle.dumps(_Evil()),
}


def _damage(src: Path, dst: Path, name: str, how: str) -> Path:
    """A copy of artifacts ``src`` in ``dst`` with file ``name`` damaged ``how``, its checksum rewritten to match."""
    shutil.copytree(src, dst)
    f = dst / name
    f.write_bytes(DAMAGES[how](f.read_bytes()))
    meta = json.loads((dst / "meta.json").read_text())
    meta["sha256"][name] = sha256_file(f)
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize("name, how", [("model.pt", "truncated"), ("model.pt", "refused-pickle"),
                                       ("model.pt", "empty"), ("basis.npz", "truncated"),
                                       ("basis.npz", "garbage")])
def test_rx_on_damaged_artifacts_exits_with_one_line(tmp_path, digits_artifacts, name, how):
    art = _damage(digits_artifacts, tmp_path / "art", name, how)
    proc, _ = start_rx(art)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(art / name) in errors[0], out


@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_slf_artifacts_refuse_a_damaged_model_with_their_error(tmp_path, how):
    save_transceiver(tmp_path / "ok", Transceiver(TINY, seed=1), TaskHead(TINY, seed=4), DIGITS_CFG, {"mse": 0.1})
    art = _damage(tmp_path / "ok", tmp_path / "bad", "model.pt", how)
    with pytest.raises(SlfArtifactError, match="model.pt: not a") as e:
        load_transceiver(art)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_slf_kept_alignment_that_does_not_load_is_removed_and_skipped(tmp_path, how):
    cache = AlignmentCache(tmp_path / "cache")
    model = Transceiver(TINY, seed=1)
    cache.save("k" * 32, 2, model, b"c" * 32, {})
    pt = tmp_path / "cache" / f"{'k' * 32}-l2.pt"
    pt.write_bytes(DAMAGES[how](pt.read_bytes()))
    assert cache.lookup("k" * 32, model) is None
    assert list((tmp_path / "cache").iterdir()) == []  # removed


def test_readers_name_the_file_in_one_line(tmp_path):
    from common.artifacts import load_arrays, load_tensors

    f = tmp_path / "x.pt"
    f.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ArtifactError, match="x.pt: not a file of plain tensors .*UnpicklingError: refused") as e:
        load_tensors(f)
    assert "\n" not in str(e.value)
    np.savez(tmp_path / "a.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="a.npz: .*components"):
        load_arrays(tmp_path / "a.npz", ("mean", "components"), error=ValueError)


def test_fed_lora_damaged_saved_state_is_a_value_error(tmp_path):
    from common.modes.fed_lora.records import load_state

    (tmp_path / "state.json").write_text(json.dumps({"spec": {}, "aggregation": "fedavg"}))
    (tmp_path / "state.npz").write_bytes(b"PK\x03\x04 truncated")
    spec = SimpleNamespace(mismatch=lambda other: None)
    with pytest.raises(ValueError, match="state.npz: not the arrays"):
        load_state(tmp_path, spec, "fedavg")


def test_a_damaged_dataset_npz_is_one_error_and_a_damaged_cache_is_read_again(tmp_path, monkeypatch, caplog):
    import logging

    from common.data import datasets

    arrays = dict(x_train=np.full((4, 784), 255, np.uint8), y_train=np.arange(4, dtype=np.uint8),
                  x_test=np.zeros((2, 784), np.uint8), y_test=np.arange(2, dtype=np.uint8))
    monkeypatch.setattr(datasets, "_read_mnist_source", lambda data_dir: (arrays, 1 / 255))  # the source
    cache = tmp_path / "cache"
    datasets.load_dataset("mnist", cache_dir=cache)
    cached = cache / "mnist-v1.npz"
    cached.write_bytes(cached.read_bytes()[:100])  # the cache is damaged: read again from the source
    with caplog.at_level(logging.WARNING, logger="semalign.data"):
        again = datasets.load_dataset("mnist", cache_dir=cache)
    assert again.x_train.shape == (4, 784) and "cache unusable" in caplog.text
    assert datasets.load_dataset("mnist", cache_dir=cache).y_test.tolist() == [0, 1]  # rewritten
    src = tmp_path / "src"
    src.mkdir()
    (src / "mnist.npz").write_bytes(b"PK\x03\x04 truncated")  # a damaged file the user named
    monkeypatch.undo()
    with pytest.raises(datasets.DatasetUnavailable, match="mnist.npz: not the arrays"):
        datasets.load_dataset("mnist", data_dir=src, cache_dir=cache)
