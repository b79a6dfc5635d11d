"""Saved basis + classifier, with checksums, a format version and the basis fingerprint.

A directory holds ``basis.npz`` (float32 ``mean`` (d_raw,), ``components``
(d_pre, d_raw); read with ``allow_pickle=False``), ``model.pt`` (a plain
tensor state dict, read with ``torch.load(weights_only=True)``) and
``meta.json`` (shapes, sha256 of both files, fingerprint, accuracy).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.codecs.pca import PcaCodec
from common.learn.models import build_mlp

ARTIFACT_FORMAT_VERSION = 1

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


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_artifacts(directory: str | Path, codec: PcaCodec, model: nn.Sequential, *, dataset: str,
                   hidden: tuple[int, ...], n_classes: int, test_accuracy: float,
                   train_seconds: float, seed: int) -> ArtifactMeta:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    def write_basis(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez(f, mean=codec.mean, components=codec.components)

    _atomic_write(d / "basis.npz", write_basis)
    _atomic_write(d / "model.pt", lambda p: torch.save(model.state_dict(), p))
    meta = ArtifactMeta(ARTIFACT_FORMAT_VERSION, dataset, codec.d_raw, codec.d_max, list(hidden),
                        n_classes, codec.fingerprint,
                        {n: sha256_file(d / n) for n in ("basis.npz", "model.pt")},
                        test_accuracy, train_seconds, seed)
    _atomic_write(d / "meta.json", lambda p: p.write_text(json.dumps(asdict(meta), indent=2)))
    return meta


def read_meta(directory: str | Path) -> ArtifactMeta:
    path = Path(directory) / "meta.json"
    if not path.exists():
        raise ArtifactError(f"no artifacts in {directory} (missing meta.json); run `semalign pretrain`")
    try:
        raw = json.loads(path.read_text())
        meta = ArtifactMeta(**raw)
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"{path}: unreadable ({e})") from e
    if meta.format_version != ARTIFACT_FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {meta.format_version}, this build reads "
                            f"version {ARTIFACT_FORMAT_VERSION}; re-run `semalign pretrain`")
    return meta


def _checked(directory: Path, name: str, meta: ArtifactMeta) -> Path:
    path = directory / name
    if not path.exists():
        raise ArtifactError(f"{path} is missing")
    digest = sha256_file(path)
    if digest != meta.sha256.get(name):
        raise ArtifactError(f"{path}: sha256 {digest[:12]}... does not match meta.json "
                            f"({str(meta.sha256.get(name))[:12]}...); the file is corrupt or replaced")
    return path


def load_codec(directory: str | Path) -> tuple[PcaCodec, ArtifactMeta]:
    """The PCA basis, verified against its checksum and fingerprint (TX and RX)."""
    d = Path(directory)
    meta = read_meta(d)
    with np.load(_checked(d, "basis.npz", meta), allow_pickle=False) as z:
        codec = PcaCodec(z["mean"], z["components"])
    if codec.fingerprint != meta.fingerprint:
        raise ArtifactError(f"{d}: basis fingerprint {codec.fingerprint[:12]}... != meta.json "
                            f"{meta.fingerprint[:12]}...")
    return codec, meta


def load_model(directory: str | Path, meta: ArtifactMeta) -> nn.Sequential:
    """The pre-trained classifier (RX), loaded as plain tensors only."""
    d = Path(directory)
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


# ---------------------------------------------------------------- checksummed tensor files

TENSORS_FORMAT_VERSION = 1


def save_tensors(path: str | Path, tensors: dict, meta: dict | None = None) -> dict:
    """Write a ``{name: tensor}`` dict to ``path`` (``torch.save``) and ``path.json`` beside it.

    The sidecar holds the format version, the sha256 of ``path``, the names,
    shapes and dtypes, and ``meta`` (JSON-able, e.g. the alpha an adapter is
    for). Both files are replaced atomically, the tensor file first. For the
    RX's adapter bank and any other learned state that must survive a restart.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    clean = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(f"save_tensors: {name!r} must map a str to a torch.Tensor, got {type(t).__name__}")
        clean[name] = t.detach().cpu().contiguous()
    _atomic_write(p, lambda tmp: torch.save(clean, tmp))
    side = {"format_version": TENSORS_FORMAT_VERSION, "sha256": sha256_file(p),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                        for k, v in clean.items()},
            "meta": meta or {}}
    _atomic_write(_sidecar(p), lambda tmp: tmp.write_text(json.dumps(side, indent=1)))
    return side


def _sidecar(p: Path) -> Path:
    return p.with_name(p.name + ".json")


def load_tensors(path: str | Path) -> tuple[dict, dict]:
    """``(tensors, meta)`` from a file written by :func:`save_tensors`.

    Raises :class:`ArtifactError` naming the problem when the sidecar is
    missing or of another format version, the checksum does not match, or
    the content differs from what the sidecar lists. Loaded with
    ``torch.load(weights_only=True)`` (no arbitrary unpickling).
    """
    p = Path(path)
    side_path = _sidecar(p)
    if not p.exists() or not side_path.exists():
        raise ArtifactError(f"{p}: missing (or its checksum file {side_path.name} is)")
    try:
        side = json.loads(side_path.read_text())
        version, digest, listed = side["format_version"], side["sha256"], side["tensors"]
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{side_path}: unreadable ({e})") from e
    if version != TENSORS_FORMAT_VERSION:
        raise ArtifactError(f"{p}: tensor file format version {version}, this build reads "
                            f"version {TENSORS_FORMAT_VERSION}")
    actual = sha256_file(p)
    if actual != digest:
        raise ArtifactError(f"{p}: sha256 {actual[:12]}... does not match {side_path.name} "
                            f"({str(digest)[:12]}...); the file is corrupt or replaced")
    try:
        tensors = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises several classes for bad files
        raise ArtifactError(f"{p}: not a tensor file ({type(e).__name__}: {e})") from e
    if not isinstance(tensors, dict) or sorted(tensors) != sorted(listed) or any(
            list(tensors[k].shape) != listed[k]["shape"] for k in listed):
        raise ArtifactError(f"{p}: content does not match {side_path.name}")
    return tensors, side.get("meta", {})
