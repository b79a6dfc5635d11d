"""pca-lora's artifacts: the PCA codec + MLP classifier, with checksums, a format version and a fingerprint.

``meta.json`` says what a directory holds: ``mode`` (the mode it serves),
``codec`` (the codec kind: ``pca``) and ``model`` (the model kind: ``mlp``),
with the sha256 of every file and the fingerprint that guards every session.
:func:`load_codec` dispatches on ``codec``. A pca-lora directory holds
``basis.npz`` (float32 ``mean`` (d_raw,), ``components`` (d_pre, d_raw); read
with ``allow_pickle=False``) and ``model.pt`` (a plain tensor state dict,
read with ``torch.load(weights_only=True)``). The checksum checks, the
``meta.json`` reading and the file readers every mode's artifacts share are
:mod:`common.artifacts`: a damaged file ends in one :class:`ArtifactError` line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.artifacts import (
    META_FILE,
    ArtifactError,
    checked_file,
    load_arrays,
    load_tensors,
    read_meta_json,
    sha256_file,
)
from common.codecs.base import Codec
from common.files import atomic_write, atomic_write_json
from common.learn.models import build_mlp
from common.modes.pca_lora.codec import PcaCodec

MODE_NAME = "pca-lora"
ARTIFACT_FORMAT_VERSION = 2

DEFAULT_D_PRE = {"mnist": 200, "digits": 40}


def default_artifacts(dataset: str, d_pre: int | None = None) -> Path:
    """``artifacts/<dataset>-d<d_pre>`` under the working directory."""
    return Path("artifacts") / f"{dataset}-d{d_pre or DEFAULT_D_PRE[dataset]}"


@dataclass(frozen=True)
class ArtifactMeta:
    """What ``meta.json`` records (fingerprint: sha256 hex of the basis)."""

    format_version: int
    mode: str
    codec: str
    model: str
    dataset: str
    d_raw: int
    d_pre: int
    hidden: list
    n_classes: int
    fingerprint: str
    sha256: dict
    test_accuracy: float
    train_seconds: float
    seed: int


def save_artifacts(directory: str | Path, codec: PcaCodec, model: nn.Sequential, *, dataset: str,
                   hidden: tuple[int, ...], n_classes: int, test_accuracy: float,
                   train_seconds: float, seed: int) -> ArtifactMeta:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write(d / "basis.npz", lambda f: np.savez(f, mean=codec.mean, components=codec.components))
    atomic_write(d / "model.pt", lambda f: torch.save(model.state_dict(), f))
    meta = ArtifactMeta(ARTIFACT_FORMAT_VERSION, MODE_NAME, codec.name, "mlp", dataset, codec.d_raw, codec.d_max, list(hidden),
                        n_classes, codec.fingerprint,
                        {n: sha256_file(d / n) for n in ("basis.npz", "model.pt")},
                        test_accuracy, train_seconds, seed)
    atomic_write_json(d / META_FILE, asdict(meta), indent=2)
    return meta


def read_meta(directory: str | Path) -> ArtifactMeta:
    """``meta.json`` of a pca-lora artifacts directory (:func:`common.artifacts.read_meta_json`)."""
    raw = read_meta_json(directory, ARTIFACT_FORMAT_VERSION, hint="run `semalign pretrain`")
    try:
        return ArtifactMeta(**raw)
    except TypeError as e:
        raise ArtifactError(f"{Path(directory) / META_FILE}: unreadable ({e})") from e


def _checked(directory: Path, name: str, meta: ArtifactMeta) -> Path:
    return checked_file(directory, name, meta.sha256)


def load_codec(directory: str | Path) -> tuple[Codec, ArtifactMeta]:
    """The codec ``meta.json`` names, verified against its checksum and fingerprint (TX and RX)."""
    d = Path(directory)
    meta = read_meta(d)
    loader = _CODEC_LOADERS.get(meta.codec)
    if loader is None:
        raise ArtifactError(f"{d}: codec kind {meta.codec!r} is not one of {sorted(_CODEC_LOADERS)}")
    codec = loader(d, meta)
    if codec.fingerprint != meta.fingerprint:
        raise ArtifactError(f"{d}: codec fingerprint {codec.fingerprint[:12]}... != meta.json "
                            f"{meta.fingerprint[:12]}...")
    return codec, meta


def _load_pca(d: Path, meta: ArtifactMeta) -> PcaCodec:
    z = load_arrays(_checked(d, "basis.npz", meta), ("mean", "components"))
    try:
        return PcaCodec(z["mean"], z["components"])
    except ValueError as e:
        raise ArtifactError(f"{d / 'basis.npz'}: not a PCA basis ({e})") from e


_CODEC_LOADERS = {PcaCodec.name: _load_pca}


def load_model(directory: str | Path, meta: ArtifactMeta) -> nn.Sequential:
    """The pre-trained classifier (RX) of the kind ``meta.model`` names, loaded as plain tensors only."""
    d = Path(directory)
    if meta.model != "mlp":
        raise ArtifactError(f"{d}: model kind {meta.model!r}; this loader builds 'mlp' classifiers")
    state = load_tensors(_checked(d, "model.pt", meta))
    model = build_mlp(meta.d_raw, tuple(meta.hidden), meta.n_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ArtifactError(f"{d / 'model.pt'}: does not fit the MLP in meta.json ({e})") from e
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
