"""What every mode's saved artifacts share: checksummed files, atomic writes, a versioned ``meta.json``.

A mode's artifacts directory holds its files and a ``meta.json`` that records
their sha256 and a format version; the mode's own loader (pca-lora:
:mod:`common.modes.pca_lora.artifacts`, slf: :mod:`common.modes.slf.artifacts`)
reads ``meta.json`` with :func:`read_meta_json` and every file through
:func:`checked_file`, so a missing, corrupt or replaced file is refused with
the same one error text in every mode; it reads tensors with
:func:`load_tensors` and arrays with :func:`load_arrays`, so a file that
passes its checksum but is not what it should be (truncated before
``meta.json`` was written, garbage, a pickle of anything but plain tensors)
ends in the same one-line error, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
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
    except (OSError, ValueError) as e:
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
    try:
        digest = sha256_file(path)
    except OSError as e:
        raise error(f"{path}: unreadable ({e})") from e
    expected = sha256.get(name) if isinstance(sha256, dict) else None
    if digest != expected:
        raise error(f"{path}: sha256 {digest[:12]}... does not match {META_FILE} "
                    f"({str(expected)[:12]}...); the file is corrupt or replaced")
    return path


def _why(e: Exception) -> str:
    """One line of a loader's exception: its class and the first line of its text (of a pickle torch
    refused, the refusal after its ``WeightsUnpickler error:`` marker, not the paragraph of advice)."""
    text, marker = str(e), "WeightsUnpickler error:"
    if marker in text:
        rest = [ln.strip() for ln in text.split(marker, 1)[1].splitlines() if ln.strip()]
        text = "refused by the weights-only unpickler: " + (rest[0] if rest else "")
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {line[:200]}" if line else type(e).__name__


def load_tensors(path: Path, error: type[Exception] = ArtifactError, data: bytes | None = None) -> dict:
    """The dict of plain tensors saved in ``path`` (``torch.load(weights_only=True)``, on the CPU).

    ``data``: the file's bytes, already read and checked (they are loaded, not
    the file again). ``error`` naming the file when it is not such a dict:
    unreadable, truncated, not a torch file, a pickle of anything else
    (``UnpicklingError``: refused), or not a dict of tensors.
    """
    import io

    import torch  # imported here: modules that only check meta.json do not pay for torch

    try:
        state = torch.load(io.BytesIO(data) if data is not None else path, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, OSError, ... for a bad file
        raise error(f"{path}: not a file of plain tensors ({_why(e)})") from e
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise error(f"{path}: not a dict of tensors (got {type(state).__name__})")
    return state


def load_arrays(path: Path, names: tuple[str, ...] | None = None,
                error: type[Exception] = ArtifactError) -> dict:
    """Name -> numpy array of the ``.npz`` at ``path`` (``allow_pickle=False``): ``names`` (None: every
    array it holds); ``error`` naming the file when it is unreadable, not an npz (truncated, garbage),
    holds pickled objects or lacks one of ``names``."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in (names if names is not None else z.files)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise error(f"{path}: not the arrays it should hold ({_why(e)})") from e
