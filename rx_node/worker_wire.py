"""Between the RX's front end (:mod:`rx_node.workers`) and its worker processes
(:mod:`rx_node.worker_process`): the frames, the heartbeat timing and a worker's spec file.

Frames between the front end and a worker (the ROUTER prepends/strips the
worker's identity ``w<index>g<generation>``, a remote worker's ``r<12 hex>``):

- front end -> worker: ``[b"M", reqid(8), peer, owner, received_ns(8), n_frames(8), *frames]``
  (``frames``: the TX's one frame, or none of a message of ``n_frames`` > 1, which the worker refuses),
  ``[b"G", peer]`` (the TX connection is gone: detach it from its sessions, which stay),
  ``[b"H"]`` (heartbeat), ``[b"S"]`` (stop: send the held replies, then exit);
- remote worker -> front end, before its slot: ``[b"JOIN"]``; front end -> it: ``[b"SPEC", spec (JSON)]``;
- worker -> front end: ``[b"READY", pid]``, ``[b"H", counters (msgpack)]``, ``[b"BYE", counters]`` (its last),
  ``[b"R", reqid, peer, d_ok/d_failed (msgpack), *reply frames]`` (one per
  request, when its replies are due).

A worker's options come in a spec file (:func:`write_spec`, JSON, mode 0600; paths kept as paths) or, for
a worker on another host, in the ``SPEC`` frame (:func:`to_json`).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

HEARTBEAT_S = 1.0  # Paranoid Pirate: heartbeat interval both ways
LIVENESS = 3  # heartbeats a worker may miss before it counts as hung
READY_TIMEOUT_S = 300.0  # a worker's start-up (imports, artifacts, warm-up) at most
FRONTEND_SILENT_S = 10 * HEARTBEAT_S  # a worker that hears nothing from the front end this long exits
BACKEND_HWM = 1000  # messages queued per worker (a hung worker's queue fills: further requests refused)
U64 = struct.Struct("!Q")


def to_json(value):
    """``value`` (options: dicts, lists, paths, scalars) as JSON-ready data, each Path as ``{"__path__": str}``."""
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def from_json(value):
    """The inverse of :func:`to_json`."""
    if isinstance(value, dict):
        if set(value) == {"__path__"}:
            return Path(value["__path__"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def write_spec(path: Path, spec: dict) -> None:
    """``spec`` (a worker's options) to ``path``, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(to_json(spec), f)


def read_spec(path: Path) -> dict:
    """A spec file :func:`write_spec` wrote."""
    with open(path) as f:
        return from_json(json.load(f))
