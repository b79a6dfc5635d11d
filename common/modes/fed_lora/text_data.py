"""Text tasks of the ``fed-lora`` mode and their non-IID split across devices.

Two tasks, read from a directory the user names (``data_dir``); nothing is
downloaded:

- ``sst2``: GLUE SST-2, ``<data_dir>/sst2/train.tsv`` and ``test.tsv``, each
  ``sentence<TAB>label`` (label 0 negative / 1 positive) after a header line.
  GLUE's labelled dev set serves as the test set (its test labels are hidden).
- ``agnews``: AG News, ``<data_dir>/agnews/dev.tsv`` (training data) and
  ``test.tsv``, each ``text<TAB>label`` without a header, labels ``World``,
  ``Sports``, ``Business``, ``Sci/Tech`` (or the official 1..4 class indices).
  AG News is a **stand-in for QNLI**, the paper's second task, which cannot be
  had here; results on it are not comparable with the paper's QNLI numbers.

Labels come back as int64 class ids; texts as a tuple of str.

:func:`dirichlet_split` is the usual label-skew partition for federated
learning: for every class, its samples are divided among the devices in
proportions drawn from ``Dir(beta * 1)``; a small ``beta`` concentrates each
class on few devices, a large ``beta`` approaches an IID split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXT_TASKS: tuple[str, ...] = ("sst2", "agnews")
SST2_LABELS: tuple[str, ...] = ("negative", "positive")
AGNEWS_LABELS: tuple[str, ...] = ("World", "Sports", "Business", "Sci/Tech")
MAX_SPLIT_ATTEMPTS = 1000


@dataclass(frozen=True)
class TextDataset:
    """A labelled text classification task.

    ``train_texts``/``test_texts``: tuples of str; ``train_labels``/
    ``test_labels``: int64, shape (n,), class ids in ``[0, n_classes)``.
    """

    name: str
    train_texts: tuple[str, ...]
    train_labels: np.ndarray
    test_texts: tuple[str, ...]
    test_labels: np.ndarray
    label_names: tuple[str, ...]

    def __post_init__(self):
        for split, texts, labels in (("train", self.train_texts, self.train_labels),
                                     ("test", self.test_texts, self.test_labels)):
            if len(texts) != len(labels):
                raise ValueError(f"{self.name} {split}: {len(texts)} texts but {len(labels)} labels")
            if len(labels) and not (labels.min() >= 0 and labels.max() < len(self.label_names)):
                raise ValueError(f"{self.name} {split}: labels outside [0, {len(self.label_names)})")

    @property
    def n_classes(self) -> int:
        return len(self.label_names)


def _read_tsv(path: Path, header: bool, parse_label, expected: str) -> tuple[tuple[str, ...], np.ndarray]:
    if not path.is_file():
        raise ValueError(f"missing {path}; expected {expected}")
    texts, labels = [], []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if (header and lineno == 1) or not line.strip():
                continue
            text, sep, label = line.rstrip("\n").rpartition("\t")
            if not sep:
                raise ValueError(f"{path}:{lineno}: no TAB before the label; expected {expected}")
            try:
                labels.append(parse_label(label.strip()))
            except (KeyError, ValueError):
                raise ValueError(f"{path}:{lineno}: bad label {label.strip()!r}; expected {expected}") from None
            texts.append(text.strip())
    return tuple(texts), np.asarray(labels, dtype=np.int64)


def _sst2_label(s: str) -> int:
    if s not in ("0", "1"):
        raise ValueError(s)
    return int(s)


_AGNEWS_IDS = {name.lower(): i for i, name in enumerate(AGNEWS_LABELS)} | {str(i + 1): i for i in range(4)}


def _agnews_label(s: str) -> int:
    return _AGNEWS_IDS[s.lower()]


def load_text_dataset(name: str, data_dir: str | Path) -> TextDataset:
    """Load task ``name`` (one of :data:`TEXT_TASKS`) from ``data_dir`` (layout in the module docstring).

    Raises ValueError naming the missing or malformed file and the expected layout.
    """
    root = Path(data_dir)
    if name == "sst2":
        layout = f"{root}/sst2/{{train,test}}.tsv in GLUE layout (header line, then sentence<TAB>label 0/1)"
        train = _read_tsv(root / "sst2" / "train.tsv", True, _sst2_label, layout)
        test = _read_tsv(root / "sst2" / "test.tsv", True, _sst2_label, layout)
        return TextDataset("sst2", *train, *test, SST2_LABELS)
    if name == "agnews":
        layout = (f"{root}/agnews/{{dev,test}}.tsv as text<TAB>label without a header, "
                  f"labels {'/'.join(AGNEWS_LABELS)} or 1..4")
        train = _read_tsv(root / "agnews" / "dev.tsv", False, _agnews_label, layout)
        test = _read_tsv(root / "agnews" / "test.tsv", False, _agnews_label, layout)
        return TextDataset("agnews", *train, *test, AGNEWS_LABELS)
    raise ValueError(f"unknown text task {name!r}; choose one of {TEXT_TASKS}")


def dirichlet_split(labels: np.ndarray, n_devices: int, beta: float, min_samples: int = 1,
                    seed: int = 0) -> list[np.ndarray]:
    """Partition sample indices across ``n_devices`` with Dirichlet(``beta``) label skew.

    ``labels``: int (n,) class ids. Returns ``n_devices`` sorted int64 index
    arrays that together hold every index exactly once, each at least
    ``min_samples`` long. Draws are redrawn (seeded by ``seed``) until every
    device has ``min_samples``; ValueError after :data:`MAX_SPLIT_ATTEMPTS`
    draws or when ``n < n_devices * min_samples``.
    """
    labels = np.asarray(labels)
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be finite and > 0, got {beta}")
    if min_samples < 0:
        raise ValueError(f"min_samples must be >= 0, got {min_samples}")
    if len(labels) < n_devices * min_samples:
        raise ValueError(f"{len(labels)} samples cannot give {n_devices} devices {min_samples} each")
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(MAX_SPLIT_ATTEMPTS):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_devices)]
        for idx in by_class:
            idx = rng.permutation(idx)
            cuts = (np.cumsum(rng.dirichlet(np.full(n_devices, beta)))[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(len(p) for p in out) >= min_samples:
            return out
    raise ValueError(f"no Dirichlet(beta={beta}) split gave all {n_devices} devices >= {min_samples} samples "
                     f"in {MAX_SPLIT_ATTEMPTS} draws; raise beta or lower min_samples")


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Sample-weighted mean total-variation distance (0..1) between each device's label mix and the pool's."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    pool = np.array([np.mean(labels == c) for c in classes])
    n = sum(len(p) for p in parts)
    tv = [0.5 * np.abs(np.array([np.mean(labels[p] == c) for c in classes]) - pool).sum() * len(p) / n
          for p in parts if len(p)]
    return float(np.sum(tv))
