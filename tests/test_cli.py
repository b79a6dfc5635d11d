"""The command line through typer's CliRunner (and the demo's two real processes)."""

import json

import pytest
from typer.testing import CliRunner

from semalign.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["pretrain", "rx", "tx", "demo", "keygen", "soak"])
def test_help_explains_every_option(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--config" in result.output or command in ("pretrain", "keygen", "soak")
    for line in result.output.splitlines():
        if line.strip().startswith("--") and "--help" not in line:
            assert len(line.split(None, 2)) >= 2, f"option without help: {line!r}"


def test_help_mentions_units():
    out = runner.invoke(app, ["tx", "--help"]).output
    assert "bit/s" in out.replace("\n", " ") or "rate_bps" in out
    assert "s;" in out or ", s" in out


def test_pretrain_digits(tmp_path):
    out = tmp_path / "art"
    result = runner.invoke(app, ["pretrain", "--dataset", "digits", "--epochs", "3", "--out", str(out),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "test accuracy at alpha=d_pre=40" in result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["d_pre"] == 40 and len(meta["fingerprint"]) == 64


def test_unknown_config_key_is_named(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[tx]\nrounds = 3\ndeadline = 0.1\n")
    result = runner.invoke(app, ["tx", "--config", str(cfg)])
    assert result.exit_code == 2
    assert "unknown keys ['deadline']" in result.output


def test_bad_value_dtype_is_named(digits_artifacts, tmp_path):
    result = runner.invoke(app, ["tx", "--artifacts", str(digits_artifacts), "--dataset", "digits",
                                 "--value-dtype", "float8", "--out", str(tmp_path), "--insecure"])
    assert result.exit_code == 2 and "float8" in result.output


def test_demo_runs_two_processes(digits_artifacts, tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--dataset", "digits", "--artifacts", str(digits_artifacts),
                                 "--rounds", "3", "--n-test", "50", "--adapt-steps", "20",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output + (out / "tx.log").read_text()
    doc = json.loads((out / "results.json").read_text())
    rounds = doc["rounds"]
    assert [r["status"] for r in rounds] == ["ok"] * 3
    assert len({r["rx_pid"] for r in rounds}) == 1 and rounds[0]["rx_pid"] != rounds[0]["tx_pid"]
    assert "acc LoRA" in result.output
