"""Load and soak: many rounds from several TX sessions (in turn and at once) against one RX process."""

import json

import pytest
from typer.testing import CliRunner

from semalign.cli import app

runner = CliRunner()


def soak(digits_artifacts, out, rounds, sessions):
    result = runner.invoke(app, ["soak", "--rounds", str(rounds), "--sessions", str(sessions), "--out", str(out),
                                 "--artifacts", str(digits_artifacts), "--max-rss-growth", "0.10"])
    summary = json.loads((out / "soak.json").read_text())
    return result, summary


def check(summary, rounds):
    assert summary["rounds_expected"] == rounds
    assert summary["rounds_recorded"] == rounds and summary["rounds_lost"] == 0
    assert summary["rounds_duplicated"] == 0 and summary["rows_in_wrong_session"] == 0
    assert summary["rounds_processed_twice"] == 0 and summary["session_errors"] == {}
    assert summary["rounds_ok"] == rounds, summary["failed_reasons"]
    assert summary["rx_exit_status"] == 0 and summary["curve"]
    assert len({s["session_id"] for s in summary["sessions"].values()}) == len(summary["sessions"])
    rtt = summary["latency_ms"]["rtt"]
    assert 0 < rtt["p50"] <= rtt["p99"]


def test_soak_short(digits_artifacts, tmp_path):
    result, summary = soak(digits_artifacts, tmp_path / "soak", 100, 2)
    check(summary, 100)
    assert result.exit_code == 0, result.output
    assert "0 lost" in result.output and "p99" in result.output
    assert summary["rss"]["samples"] > 0


@pytest.mark.slow
def test_soak_2000_rounds(digits_artifacts, tmp_path):
    result, summary = soak(digits_artifacts, tmp_path / "soak", 2400, 3)  # 6 sessions x 400 rounds
    check(summary, 2400)
    assert summary["rss"]["growth_after_warm"] < 0.10, summary["rss"]
    assert result.exit_code == 0, result.output
