"""fed-lora's base-station records and saved state: what it knows of a device, a device's outcome in a
round, a round, and the state on disk (``base_station.jsonl``, ``state.npz`` + ``state.json``).

No round logic here (that is :mod:`~common.modes.fed_lora.station_rounds`); :func:`save_state` /
:func:`load_state` are plain functions of the directory and what is saved.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.artifacts import load_arrays
from common.files import atomic_write, atomic_write_json, atomic_write_text, json_safe
from common.modes.fed_lora.optimizer import DeviceDecision
from common.modes.fed_lora.wireless import DeviceChannels, DeviceProfile


@dataclass
class Device:
    """What the base station knows of one device (from its HELLO) and its running state."""

    device_id: int
    hello: dict
    profile: DeviceProfile
    n_samples: int
    train_flops: dict[str, float]
    channel: DeviceChannels
    queue_j: float = 0.0
    active: bool = True
    session_id: int | None = None


@dataclass
class Report:
    """One device's outcome in a round: ``outcome`` delivered, lost, refused, late or failed (and its
    energy, J)."""

    outcome: str
    reason: str = ""
    upload_bits: int = 0
    upload_s: float = 0.0
    compute_s: float = 0.0
    transmit_energy_j: float = 0.0
    compute_energy_j: float = 0.0
    packet_error: float = 0.0
    uplink_sinr_db: float = 0.0
    draw: float = 0.0
    train_s: float = 0.0
    ack: Any = None  # the FedAck sent (the same UPDATE again gets it again)
    update_norm: float = 0.0  # ||U - G|| of a delivered update (aggregation.update_norm)
    clip_scale: float = 1.0  # c_k it entered the aggregate with (1: not clipped)
    digest: bytes = b""  # FedUpdate.digest of the update reported (a different one is a `duplicate`)
    error: tuple[str, str] | None = None  # (code, message) it was refused with (the same update: again)


@dataclass
class FedRound:
    """Round ``index``: its plan, the reports and, once formed, its record."""

    index: int
    planned_ns: int
    deadline_ns: int
    decisions: dict[int, DeviceDecision]
    gains: dict[int, float]
    queues_before: dict[int, float]
    risk: float
    objective: float
    starts: dict[str, dict] = field(default_factory=dict)  # module -> wire tensors of the global start
    fetched: set = field(default_factory=set)  # devices that were sent their plan (may send an update)
    reports: dict[int, Report] = field(default_factory=dict)
    updates: dict[int, tuple[dict, int]] = field(default_factory=dict)  # delivered: device -> (arrays, n)
    formed: bool = False
    record: dict = field(default_factory=dict)  # per-device RESULT fields once formed, + "round"

    @property
    def participants(self) -> list[int]:
        return sorted(k for k, d in self.decisions.items() if d.module is not None)

    def complete(self) -> bool:
        return all(k in self.reports for k in self.participants)


def finite(x: float, default: float = 0.0) -> float:
    x = float(x)
    return x if math.isfinite(x) else default


def db(x: float) -> float:
    return 10.0 * math.log10(x) if x > 0 else -300.0


def save_state(out: Path, record: dict | None, state: dict[str, np.ndarray] | None, meta: dict) -> None:
    """Append ``record`` (a formed round; None: none) to ``out/base_station.jsonl``, then write the global
    ``state`` (name -> float32 array; None: unchanged) to ``out/state.npz`` and ``meta`` to
    ``out/state.json``, each atomically and synced (a crash leaves the old file or the new one).
    ``state.json`` is written last: the rounds it counts as formed (``meta["formed"]``) are the ones
    :func:`load_state` keeps in the log."""
    if record is not None:
        with open(out / "base_station.jsonl", "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())
    if state is not None:
        atomic_write(out / "state.npz", lambda f: np.savez(f, **state))
    atomic_write_json(out / "state.json", meta)


def load_state(out: Path, spec, aggregation: str) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` saved by :func:`save_state` in ``out``; ``ValueError`` when absent, of another
    federation (``spec.mismatch``) or aggregation, or holding non-finite values."""
    meta_path, state_path = out / "state.json", out / "state.npz"
    if not meta_path.exists() or not state_path.exists():
        raise ValueError(f"resume: no saved base-station state in {out} (state.json, state.npz)")
    meta = json.loads(meta_path.read_text())
    problem = spec.mismatch(meta.get("spec", {}))
    if problem:
        raise ValueError(f"resume: the state in {out} is of another federation: {problem}")
    if meta.get("aggregation") != aggregation:
        raise ValueError(f"resume: the state in {out} was aggregated with {meta.get('aggregation')}")
    arrays = load_arrays(state_path, error=ValueError)
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise ValueError(f"resume: {state_path} holds non-finite values")
    return arrays, meta


def formed_records(out: Path, formed: int) -> list[dict]:
    """The records of rounds ``0..formed`` in ``out/base_station.jsonl``, each once; the log is rewritten
    (atomically) without what a kill left behind: a torn last line, the row of a round whose state was
    never saved (round > ``formed``)."""
    path = out / "base_station.jsonl"
    rows: dict[int, dict] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("round"), int) and row["round"] <= formed:
            rows.setdefault(row["round"], row)
    kept = [rows[r] for r in sorted(rows)]
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))
    return kept
