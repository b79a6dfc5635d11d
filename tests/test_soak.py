"""Load and soak: many rounds from several TX sessions (in turn and at once) against one RX process."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from common.files import read_jsonl
from semalign.cli import app

runner = CliRunner()


def soak(digits_artifacts, out, rounds, sessions):
    result = runner.invoke(app, ["soak", "--rounds", str(rounds), "--sessions", str(sessions), "--out", str(out),
                                 "--artifacts", str(digits_artifacts), "--max-rss-growth", "0.10"])
    summary = json.loads((out / "soak.json").read_text())
    return result, summary


def check(summary, rounds, out):
    assert summary["rounds_expected"] == rounds
    assert summary["rounds_recorded"] == rounds and summary["rounds_lost"] == 0
    assert summary["rounds_duplicated"] == 0 and summary["rows_in_wrong_session"] == 0
    assert summary["rounds_processed_twice"] == 0 and summary["session_errors"] == {}
    assert summary["rounds_ok"] == rounds, summary["failed_reasons"]
    assert summary["rx_exit_status"] == 0 and summary["curve"]
    assert len({s["session_id"] for s in summary["sessions"].values()}) == len(summary["sessions"])
    # the percentiles are those of the recorded rows (every session's, ok rounds), and every round's
    # RX-side total fits in its own round trip plus the clock-offset estimate's error
    rows = [r for f in sorted((out / "sessions").glob("*/results.jsonl")) for r in read_jsonl(f) if r["status"] == "ok"]
    assert len(rows) == rounds
    rtt = np.array([r["latency_ms"]["rtt"] for r in rows])
    for q in (50, 90, 99):
        assert summary["latency_ms"]["rtt"][f"p{q}"] == pytest.approx(np.percentile(rtt, q))
    assert summary["latency_ms"]["rtt"]["max"] == pytest.approx(rtt.max())
    lat = [r["latency_ms"] for r in rows]
    assert all(x["classification"] <= x["encode"] + x["pack"] + x["rtt"] + 5 for x in lat)


def test_soak_short(digits_artifacts, tmp_path):
    result, summary = soak(digits_artifacts, tmp_path / "soak", 100, 2)
    check(summary, 100, tmp_path / "soak")
    assert result.exit_code == 0, result.output
    assert "0 lost" in result.output and "p99" in result.output
    assert summary["rss"]["samples"] > 0


@pytest.mark.slow
def test_soak_2000_rounds(digits_artifacts, tmp_path):
    result, summary = soak(digits_artifacts, tmp_path / "soak", 2400, 3)  # 6 sessions x 400 rounds
    check(summary, 2400, tmp_path / "soak")
    assert summary["rss"]["growth_after_warm"] < 0.10, summary["rss"]
    assert result.exit_code == 0, result.output
