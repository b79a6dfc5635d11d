"""A results.jsonl whose last line was cut mid-write is repaired on resume, loudly."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.results.log import ResultsLog, RoundRecord, read_jsonl, repair_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _rows(n):
    return [RoundRecord(round=i, status="ok").to_dict() for i in range(n)]


def _write(path: Path, rows, tail: bytes = b""):
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + tail)


def test_resume_repairs_a_torn_last_line_and_says_so(tmp_path, caplog):
    rows = _rows(3)
    partial = json.dumps(RoundRecord(round=3, status="ok").to_dict()).encode()[:37]
    _write(tmp_path / "results.jsonl", rows, partial)
    with caplog.at_level(logging.WARNING, logger="semalign.results"):
        log = ResultsLog(tmp_path, {}, resume=True)
    assert log.finished() == {0, 1, 2}
    assert log.repair_message and "cut mid-write" in log.repair_message
    assert "results.jsonl.corrupt" in log.repair_message and "3 complete rows" in log.repair_message
    assert log.repair_message in caplog.text
    assert (tmp_path / "results.jsonl.corrupt").read_bytes() == partial + b"\n"
    # the file is whole again: appending after the repair gives clean rows
    log.append(RoundRecord(round=3, status="ok"))
    assert [r["round"] for r in read_jsonl(tmp_path / "results.jsonl")] == [0, 1, 2, 3]
    # a second resume finds nothing to repair
    assert ResultsLog(tmp_path, {}, resume=True).repair_message is None


@pytest.mark.parametrize("tail, torn", [
    (b"", False),                                  # intact
    (b'{"round": 9, "status": "ok"}', False),      # complete row, newline missing: kept
    (b"\0" * 300, True),                           # a filesystem's zero-filled tail after a crash
    (b'{"round": 9, "sta', True),
    (b'\xff\xfe{"round"', True),                    # not even UTF-8
])
def test_repair_jsonl_cases(tmp_path, tail, torn):
    path = tmp_path / "results.jsonl"
    _write(path, _rows(2), tail)
    message = repair_jsonl(path)
    assert (message is not None) == torn
    rows = read_jsonl(path)
    assert [r["round"] for r in rows] == ([0, 1] if torn or not tail else [0, 1, 9])
    assert path.read_bytes().endswith(b"\n")
    assert (tmp_path / "results.jsonl.corrupt").exists() == torn


def test_bad_line_in_the_middle_is_refused_not_repaired(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"round": 0, "status": "ok"}\n{"rou\n{"round": 1, "status": "ok"}\n')
    assert repair_jsonl(path) is None
    with pytest.raises(ValueError, match="line 2"):
        ResultsLog(tmp_path, {}, resume=True)


_WRITER = r"""
import json, os, sys
from common.results.log import ResultsLog, RoundRecord
out = sys.argv[1]
log = ResultsLog(out, {}, resume=True)
log.append(RoundRecord(round=len(log.rounds), status="ok"))
row = json.dumps(RoundRecord(round=99, status="ok").to_dict()) + "\n"
fd = os.open(os.path.join(out, "results.jsonl"), os.O_WRONLY | os.O_APPEND)
os.write(fd, row[: len(row) // 2].encode())   # the process dies between two writes of one row
os.write(1, b"half\n")
os.kill(os.getpid(), 9)
"""


def test_killed_writer_then_resume(tmp_path):
    """A real process SIGKILLed with half a row written; the next --resume repairs it and keeps every round."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for attempt in range(3):
        proc = subprocess.run([sys.executable, "-c", _WRITER, str(tmp_path)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == -signal.SIGKILL and proc.stdout == "half\n", proc.stderr
    log = ResultsLog(tmp_path, {}, resume=True)
    assert log.repair_message is not None
    assert log.finished() == {0, 1, 2}
    # every attempt's partial row was kept aside
    assert len((tmp_path / "results.jsonl.corrupt").read_text().splitlines()) == 3
