"""Per-round records and the results files a campaign writes.

``DIR/results.jsonl`` gets one JSON line per round as it ends (append-only,
flushed), and ``DIR/results.json`` (``{"config": {...}, "rounds": [...]}``) is
atomically replaced after every round, so a crash leaves both readable.
The schema is documented in ``docs/results.md``.

A crash (or a full disk) while a row is appended can leave ``results.jsonl``
with a last line cut mid-write. ``ResultsLog(..., resume=True)`` repairs it
with :func:`repair_jsonl`: the partial line is moved to
``results.jsonl.corrupt``, a warning is logged (``semalign.results``) and the
message is kept in :attr:`ResultsLog.repair_message` for the CLI to show.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.files import atomic_write_bytes, atomic_write_json, atomic_write_text, json_safe, read_jsonl

log = logging.getLogger("semalign.results")

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
        row = {k: json_safe(v) for k, v in asdict(self).items() if k != "fields"}
        clash = set(self.fields) & set(row)
        if clash:
            raise ValueError(f"mode fields {sorted(clash)} clash with the common round fields")
        row.update({k: json_safe(v) for k, v in self.fields.items()})
        return row


FINAL_STATUSES = ("ok", "failed")  # a resumed campaign skips these; ``aborted`` rounds run again


def _is_row(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line.decode("utf-8")), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False


def repair_jsonl(path: str | Path) -> str | None:
    """Cut a torn last line off a ``results.jsonl``; returns what was done (for the user), or None.

    The last non-blank line is torn when it is not a JSON object (a row cut
    mid-write, or NUL bytes a filesystem left after a crash). It is appended
    to ``PATH.corrupt`` (kept, not deleted) and the file is atomically
    rewritten without it. A complete last row that only lacks its newline
    gets one. A bad line *before* the last is not touched here:
    :func:`read_jsonl` refuses it.
    """
    p = Path(path)
    data = p.read_bytes()
    lines = data.split(b"\n")
    last = max((i for i, ln in enumerate(lines) if ln.strip(b" \t\r")), default=None)
    if last is None:  # empty, or blank lines only
        return None
    head = b"".join(ln + b"\n" for ln in lines[:last])
    if _is_row(lines[last]):
        intact = head + lines[last] + b"\n"
        if data != intact:  # newline missing, or blank lines after the row: nothing is lost
            atomic_write_bytes(p, intact)
        return None
    return _move_tail(p, head, data[len(head):], sum(1 for ln in lines[:last] if ln.strip()))


def _move_tail(p: Path, keep: bytes, tail: bytes, rows: int) -> str:
    corrupt = p.with_name(p.name + ".corrupt")
    with open(corrupt, "ab") as f:
        f.write(tail.rstrip(b"\n") + b"\n")
        f.flush()
        os.fsync(f.fileno())
    atomic_write_bytes(p, keep)
    shown = tail[:60].decode("utf-8", "replace")
    message = (f"{p}: the last line was cut mid-write ({len(tail)} bytes: {shown!r}...), probably by a "
               f"crash; kept the {rows} complete rows before it and moved the partial line to {corrupt}")
    log.warning("%s", message)
    return message


class ResultsLog:
    """Writes ``results.jsonl`` and ``results.json`` under ``out_dir``.

    ``resume=True`` keeps the finished rounds (:data:`FINAL_STATUSES`) of an
    existing ``results.jsonl`` (last row per round wins) and appends after
    them; :meth:`finished` names their rounds. A torn last line is repaired
    first (:func:`repair_jsonl`); :attr:`repair_message` then says what was
    done (None when the file was intact), for the CLI to print.
    """

    def __init__(self, out_dir: str | Path, config: dict, resume: bool = False):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.rounds: list[dict] = []
        self.jsonl = self.dir / "results.jsonl"
        self.repair_message: str | None = None
        if resume and self.jsonl.exists():
            self.repair_message = repair_jsonl(self.jsonl)
            kept = {r["round"]: r for r in read_jsonl(self.jsonl) if r.get("status") in FINAL_STATUSES}
            self.rounds = [kept[k] for k in sorted(kept)]
            atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.rounds))
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
        atomic_write_json(self.dir / "results.json", {"config": self.config, "rounds": self.rounds})


def load_results(path: str | Path) -> dict:
    """Read ``results.json`` (or a directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    return json.loads(p.read_text())
