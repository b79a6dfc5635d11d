"""What every mode's saved artifacts share: checksummed files, atomic writes, a versioned ``meta.json``.

A mode's artifacts directory holds its files and a ``meta.json`` that records
their sha256 and a format version; the mode's own loader (pca-lora:
:mod:`common.modes.pca_lora.artifacts`, slf: :mod:`common.modes.slf.artifacts`)
reads ``meta.json`` with :func:`read_meta_json` and every file through
:func:`checked_file`, so a missing, corrupt or replaced file is refused with
the same one error text in every mode.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

META_FILE = "meta.json"


class ArtifactError(RuntimeError):
    """Artifacts missing, corrupt, or of another format version."""


def sha256_file(path: Path) -> str:
    """sha256 hex digest of the file at ``path``, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_meta_json(directory: str | Path, version: int, *, what: str = "artifacts", hint: str = "",
                   error: type[Exception] = ArtifactError) -> dict:
    """The ``meta.json`` of ``directory`` as a dict, of format ``version``; ``error`` (an
    :class:`ArtifactError` subclass) when it is missing, unreadable or of another version. ``what`` names
    the artifacts in the message, ``hint`` says how to make them (e.g. ``run `semalign pretrain```)."""
    path = Path(directory) / META_FILE
    tail = f"; {hint}" if hint else ""
    if not path.exists():
        raise error(f"no {what} in {directory} (missing {META_FILE}){tail}")
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise error(f"{path}: unreadable ({e})") from e
    found = raw.get("format_version") if isinstance(raw, dict) else None
    if found != version:
        raise error(f"{path}: format version {found}, this build reads version {version}{tail}")
    return raw


def checked_file(directory: str | Path, name: str, sha256: dict, error: type[Exception] = ArtifactError) -> Path:
    """``directory / name``, after checking it exists and its sha256 is ``sha256[name]`` (from ``meta.json``)."""
    path = Path(directory) / name
    if not path.exists():
        raise error(f"{path} is missing")
    digest = sha256_file(path)
    if digest != sha256.get(name):
        raise error(f"{path}: sha256 {digest[:12]}... does not match {META_FILE} "
                    f"({str(sha256.get(name))[:12]}...); the file is corrupt or replaced")
    return path
