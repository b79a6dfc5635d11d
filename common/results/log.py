"""Per-round records and the results files a campaign writes.

``DIR/results.jsonl`` gets one JSON line per round as it ends (append-only,
flushed), and ``DIR/results.json`` (``{"config": {...}, "rounds": [...]}``) is
atomically replaced after every round, so a crash leaves both readable.
The schema is documented in ``docs/results.md``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

LATENCY_STAGES = ("encode", "pack", "transfer", "reconstruct", "finetune", "classify")
LATENCY_CUMULATIVE = ("communication", "fine_tuning", "classification")


@dataclass
class RoundRecord:
    """One round as the TX saw it. Sizes in bytes, rates in bit/s, times in ms.

    The fields here are common to every mode; ``fields`` holds the mode's own
    (pca-lora: alpha, vector counts, accuracies, ...) and is written flat into
    the row, so a row reads ``row["alpha"]`` whatever the mode.
    """

    round: int
    status: str = "failed"
    error: str | None = None
    session_id: int = 0
    mode: str | None = None
    modulation: str | None = None
    mcs: int | None = None
    mcs_table: str | None = None
    sinr_db: float | None = None
    rate_bps: float | None = None
    deadline_s: float | None = None
    payload_bytes: int | None = None
    latency_ms: dict = field(default_factory=dict)
    airtime_ms: float | None = None
    tx_pid: int | None = None
    rx_pid: int | None = None
    started_at: float | None = None
    attempts: int = 1  # sends of this round's request (re-sent after a lost reply)
    fields: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        row = {k: _json_safe(v) for k, v in asdict(self).items() if k != "fields"}
        clash = set(self.fields) & set(row)
        if clash:
            raise ValueError(f"mode fields {sorted(clash)} clash with the common round fields")
        row.update({k: _json_safe(v) for k, v in self.fields.items()})
        return row


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    return v


FINAL_STATUSES = ("ok", "failed")  # a resumed campaign skips these; ``aborted`` rounds run again


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a ``results.jsonl``; a torn last line (crash while appending) is skipped."""
    rows = []
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON (only the last line may be torn)")
    return rows


class ResultsLog:
    """Writes ``results.jsonl`` and ``results.json`` under ``out_dir``.

    ``resume=True`` keeps the finished rounds (:data:`FINAL_STATUSES`) of an
    existing ``results.jsonl`` (last row per round wins; a torn last line is
    dropped) and appends after them; :meth:`finished` names their rounds.
    """

    def __init__(self, out_dir: str | Path, config: dict, resume: bool = False):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.rounds: list[dict] = []
        self.jsonl = self.dir / "results.jsonl"
        if resume and self.jsonl.exists():
            kept = {r["round"]: r for r in read_jsonl(self.jsonl) if r.get("status") in FINAL_STATUSES}
            self.rounds = [kept[k] for k in sorted(kept)]
            tmp = self.jsonl.with_name("results.jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rounds))
            os.replace(tmp, self.jsonl)
        else:
            self.jsonl.write_text("")
        self._write_json()

    def finished(self) -> set[int]:
        """Rounds with a final record (ok, or failed with its reason)."""
        return {r["round"] for r in self.rounds if r.get("status") in FINAL_STATUSES}

    def append(self, record: RoundRecord) -> None:
        row = record.to_dict()
        self.rounds.append(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._write_json()

    def _write_json(self) -> None:
        path = self.dir / "results.json"
        tmp = path.with_name("results.json.tmp")
        tmp.write_text(json.dumps({"config": self.config, "rounds": self.rounds}, indent=1))
        os.replace(tmp, path)


def load_results(path: str | Path) -> dict:
    """Read ``results.json`` (or a directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    return json.loads(p.read_text())
