"""File helpers every part shares: atomic writes, JSON-safe values, jsonl rows, a free TCP port.

An atomic write goes to ``PATH.tmp`` in the same directory and is renamed over
``PATH`` with ``os.replace``: a reader sees the old content or the new, never
a mix. ``fsync=True`` (the default) also flushes the file to disk before the
rename, so the new content survives a crash of the machine; pass ``False``
only for files that are cheap to rebuild (caches, reports). ``fsync_dir=True``
then also flushes the directory entry, so the rename itself survives (a
manifest that names files written just before it).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import socket
from pathlib import Path
from typing import IO, Any, Callable

import tomli_w


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], *, fsync: bool = True,
                 fsync_dir: bool = False, mode: int = 0o644) -> Path:
    """Atomically replace ``path`` with what ``write(binary_file)`` writes; the file is created with ``mode``.

    The temporary file is removed when ``write`` raises. Returns ``path``.
    """
    p = Path(path)
    fd, name = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)  # unique: writers may race
    tmp = Path(name)
    os.fchmod(fd, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync_dir:
        _fsync_dir(p.parent)
    return p


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # platforms without directory fds
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True, fsync_dir: bool = False,
                       mode: int = 0o644) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return atomic_write(path, lambda f: f.write(data), fsync=fsync, fsync_dir=fsync_dir, mode=mode)


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 1, fsync: bool = True) -> Path:
    """Atomically replace ``path`` with ``json_safe(obj)`` as JSON."""
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=indent), fsync=fsync)


def json_safe(v: Any) -> Any:
    """``v`` with what strict JSON cannot hold made plain: NaN and +-inf -> None, numpy scalars -> Python
    numbers, numpy arrays and tuples -> lists, ``Path`` -> str, dict keys -> str; recursive."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    item = getattr(v, "item", None)  # numpy scalars and 0-d arrays, without importing numpy
    tolist = getattr(v, "tolist", None)
    if tolist is not None and getattr(v, "ndim", 0) > 0:
        return json_safe(tolist())
    if item is not None and getattr(v, "shape", None) == ():
        return json_safe(item())
    return v


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a jsonl file (blank lines skipped); a torn last line (a crash while appending) is skipped.

    ``ValueError`` naming the line when a line before the last is not JSON.
    """
    rows = []
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON (only the last line may be torn)") from None
    return rows


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nobody listened on a moment ago (bind to port 0, read it, close)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]



def toml_value(v: bool | int | float | str) -> str:
    """A scalar as TOML writes it (``true``, ``3``, ``0.5``, ``"a \\"b\\""``), by ``tomli_w``."""
    if not isinstance(v, (bool, int, float, str)):
        raise TypeError(f"toml_value takes bool, int, float or str, got {type(v).__name__}")
    return tomli_w.dumps({"v": v}).partition(" = ")[2].rstrip("\n")


def write_toml(path: str | Path, doc: dict, *, fsync: bool = True) -> Path:
    """Atomically write ``doc`` (nested dicts = tables) as a TOML file, by ``tomli_w``."""
    return atomic_write_bytes(path, tomli_w.dumps(doc).encode("utf-8"), fsync=fsync)
