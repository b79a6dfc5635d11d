"""Saved codec + model, with checksums, a format version and a fingerprint.

``meta.json`` says what a directory holds: ``mode`` (the mode it serves),
``codec`` (the codec kind: ``pca``) and ``model`` (the model kind: ``mlp``),
with the sha256 of every file and the fingerprint that guards every session.
:func:`load_codec` dispatches on ``codec``. A pca-lora directory holds
``basis.npz`` (float32 ``mean`` (d_raw,), ``components`` (d_pre, d_raw); read
with ``allow_pickle=False``) and ``model.pt`` (a plain tensor state dict,
read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.codecs.base import Codec
from common.codecs.pca import PcaCodec
from common.files import atomic_write, atomic_write_json
from common.learn.models import build_mlp

ARTIFACT_FORMAT_VERSION = 2

DEFAULT_D_PRE = {"mnist": 200, "digits": 40}


def default_artifacts(dataset: str, d_pre: int | None = None) -> Path:
    """``artifacts/<dataset>-d<d_pre>`` under the working directory."""
    return Path("artifacts") / f"{dataset}-d{d_pre or DEFAULT_D_PRE[dataset]}"


class ArtifactError(RuntimeError):
    """Artifacts missing, corrupt, or of another format version."""


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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_artifacts(directory: str | Path, codec: PcaCodec, model: nn.Sequential, *, dataset: str,
                   hidden: tuple[int, ...], n_classes: int, test_accuracy: float,
                   train_seconds: float, seed: int) -> ArtifactMeta:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write(d / "basis.npz", lambda f: np.savez(f, mean=codec.mean, components=codec.components))
    atomic_write(d / "model.pt", lambda f: torch.save(model.state_dict(), f))
    meta = ArtifactMeta(ARTIFACT_FORMAT_VERSION, "pca-lora", codec.name, "mlp", dataset, codec.d_raw, codec.d_max, list(hidden),
                        n_classes, codec.fingerprint,
                        {n: sha256_file(d / n) for n in ("basis.npz", "model.pt")},
                        test_accuracy, train_seconds, seed)
    atomic_write_json(d / "meta.json", asdict(meta), indent=2)
    return meta


def read_meta(directory: str | Path) -> ArtifactMeta:
    path = Path(directory) / "meta.json"
    if not path.exists():
        raise ArtifactError(f"no artifacts in {directory} (missing meta.json); run `semalign pretrain`")
    try:
        raw = json.loads(path.read_text())
        version = raw.get("format_version") if isinstance(raw, dict) else None
    except ValueError as e:
        raise ArtifactError(f"{path}: unreadable ({e})") from e
    if version != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {version}, this build reads "
                            f"version {ARTIFACT_FORMAT_VERSION}; re-run `semalign pretrain`")
    try:
        return ArtifactMeta(**raw)
    except TypeError as e:
        raise ArtifactError(f"{path}: unreadable ({e})") from e


def _checked(directory: Path, name: str, meta: ArtifactMeta) -> Path:
    path = directory / name
    if not path.exists():
        raise ArtifactError(f"{path} is missing")
    digest = sha256_file(path)
    if digest != meta.sha256.get(name):
        raise ArtifactError(f"{path}: sha256 {digest[:12]}... does not match meta.json "
                            f"({str(meta.sha256.get(name))[:12]}...); the file is corrupt or replaced")
    return path


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
    with np.load(_checked(d, "basis.npz", meta), allow_pickle=False) as z:
        return PcaCodec(z["mean"], z["components"])


_CODEC_LOADERS = {PcaCodec.name: _load_pca}


def load_model(directory: str | Path, meta: ArtifactMeta) -> nn.Sequential:
    """The pre-trained classifier (RX) of the kind ``meta.model`` names, loaded as plain tensors only."""
    d = Path(directory)
    if meta.model != "mlp":
        raise ArtifactError(f"{d}: model kind {meta.model!r}; this loader builds 'mlp' classifiers")
    state = torch.load(_checked(d, "model.pt", meta), weights_only=True, map_location="cpu")
    model = build_mlp(meta.d_raw, tuple(meta.hidden), meta.n_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ArtifactError(f"{d / 'model.pt'}: does not fit the MLP in meta.json ({e})") from e
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
