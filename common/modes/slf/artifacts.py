"""Saved SLF transceiver + task head: ``model.pt`` and ``meta.json`` in one directory.

``model.pt``: one plain tensor state dict, keys ``transceiver.<name>`` and
``head.<name>``, read with ``torch.load(weights_only=True)``. ``meta.json``:
format version, ``codec: "vqvae"``, ``mode: "slf"``, the
:class:`TransceiverConfig`, the sha256 of ``model.pt``, the fingerprint
(:func:`state_fingerprint` of the saved state) and the test metrics. Files
are replaced atomically, ``meta.json`` last.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import torch

from common.artifacts import META_FILE, ArtifactError, checked_file, load_tensors, read_meta_json, sha256_file
from common.files import atomic_write, atomic_write_json
from common.modes.slf.configs import TransceiverConfig
from common.modes.slf.transceiver import TaskHead, Transceiver

SLF_ARTIFACT_FORMAT_VERSION = 1
CODEC_NAME = "vqvae"
MODE_NAME = "slf"
MODEL_FILE = "model.pt"
PREFIXES = ("transceiver.", "head.")


class SlfArtifactError(ArtifactError, ValueError):
    """SLF artifacts missing, corrupt (checksum or fingerprint mismatch), or of another format or mode."""


@dataclass(frozen=True)
class SlfArtifactMeta:
    """What ``meta.json`` records; ``sha256``: file name -> hex digest; ``metrics``: name -> value."""

    format_version: int
    codec: str
    mode: str
    config: dict
    sha256: dict
    fingerprint: str
    metrics: dict


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex over the sorted names, dtypes, shapes and raw bytes of ``state``'s tensors."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_transceiver(directory: str | Path, model: Transceiver, head: TaskHead, config: TransceiverConfig,
                     metrics: Mapping[str, float]) -> SlfArtifactMeta:
    """Write ``model`` and ``head`` (trained under ``config``) with ``metrics`` to ``directory``; returns the meta as stored."""
    if model.shape != config.shape or head.shape != config.shape:
        raise ValueError(f"model shape {model.shape} / head shape {head.shape} differ from the "
                         f"config's {config.shape}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {f"{prefix}{k}": t.detach().cpu().contiguous()
             for prefix, module in zip(PREFIXES, (model, head)) for k, t in module.state_dict().items()}
    atomic_write(d / MODEL_FILE, lambda f: torch.save(state, f))
    meta = SlfArtifactMeta(SLF_ARTIFACT_FORMAT_VERSION, CODEC_NAME, MODE_NAME, config.to_dict(),
                           {MODEL_FILE: sha256_file(d / MODEL_FILE)}, state_fingerprint(state),
                           {k: float(v) for k, v in metrics.items()})
    atomic_write_json(d / META_FILE, asdict(meta), indent=2)
    return read_slf_meta(d)


def read_slf_meta(directory: str | Path) -> SlfArtifactMeta:
    """``meta.json`` of ``directory``, checked for format version, codec and mode."""
    path = Path(directory) / META_FILE
    raw = read_meta_json(directory, SLF_ARTIFACT_FORMAT_VERSION, what="SLF artifacts", error=SlfArtifactError)
    try:
        meta = SlfArtifactMeta(**raw)
    except TypeError as e:
        raise SlfArtifactError(f"{path}: unreadable ({e})") from e
    if (meta.codec, meta.mode) != (CODEC_NAME, MODE_NAME):
        raise SlfArtifactError(f"{path}: codec {meta.codec!r} / mode {meta.mode!r}, expected "
                               f"{CODEC_NAME!r} / {MODE_NAME!r}")
    return meta


def load_transceiver(directory: str | Path) -> tuple[Transceiver, TaskHead, TransceiverConfig, SlfArtifactMeta]:
    """Transceiver, frozen task head (eval mode), config and meta, verified against checksum and fingerprint."""
    d = Path(directory)
    meta = read_slf_meta(d)
    path = checked_file(d, MODEL_FILE, meta.sha256, SlfArtifactError)
    try:
        config = TransceiverConfig.from_dict(meta.config)
    except (ValueError, TypeError) as e:
        raise SlfArtifactError(f"{d / META_FILE}: unreadable config ({e})") from e
    state = load_tensors(path, SlfArtifactError)
    if state_fingerprint(state) != meta.fingerprint:
        raise SlfArtifactError(f"{path}: fingerprint does not match {META_FILE}")
    model, head = Transceiver(config.shape), TaskHead(config.shape)
    try:
        for prefix, module in zip(PREFIXES, (model, head)):
            module.load_state_dict({k[len(prefix):]: t for k, t in state.items() if k.startswith(prefix)})
    except RuntimeError as e:
        raise SlfArtifactError(f"{path}: does not fit the shape in {META_FILE} ({e})") from e
    head.requires_grad_(False)
    return model, head.eval(), config, meta
