"""The command line through typer's CliRunner (and the demo's two real processes)."""

import json

import pytest
from typer.testing import CliRunner

from semalign.cli import app

runner = CliRunner()


def _commands() -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)


COMMANDS = _commands()  # every command the CLI has, read from it (a new one cannot be missed)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_every_option(command):
    """Every option of every command has help text (read from the command itself, not from --help's layout)."""
    import typer.main

    cmd = typer.main.get_command(app).commands[command]
    assert cmd.help, f"{command} has no description"
    missing = [p.opts[0] for p in cmd.params if getattr(p, "help", None) in (None, "") and p.opts[0] != "--help"]
    assert not missing, f"{command}: options without help: {missing}"
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--config" in result.output or command not in ("rx", "tx", "demo")


def test_daemon_help_defaults_are_the_code_defaults():
    """The [default: ...] shown for an option is the value the code applies (one definition)."""
    from common.modes.pca_lora.adapt_config import AdaptConfig
    from common.modes.pca_lora.tx import PcaLoraTxConfig
    from semalign.options import by_name, rx_options, tx_options

    rx, tx = by_name(rx_options()), by_name(tx_options())
    assert rx["adapt_steps"].default == AdaptConfig().steps and tx["n_test"].default == PcaLoraTxConfig().n_test
    out = runner.invoke(app, ["rx", "--help"]).output.replace("\n", " ")
    assert f"[default: {AdaptConfig().steps}]" in " ".join(out.split())


def test_fed_lora_help_defaults_are_its_dataclasses_defaults():
    """fed-lora's option defaults are those of the dataclasses its halves are built from (one definition)."""
    from common.modes.fed_lora.device_config import DeviceConfig
    from common.modes.fed_lora.mode import FedLora, fed_spec
    from common.modes.fed_lora.station_config import BaseStationConfig
    from common.modes.fed_lora.spec import FedSpec

    rx, tx = ({o.name: o.default for o in opts} for opts in (FedLora.rx_options, FedLora.tx_options))
    assert (rx["fed_devices"], rx["fed_beta"], rx["fed_task"]) == (FedSpec.n_devices, FedSpec.beta, FedSpec.task)
    assert (rx["fed_clip_factor"], rx["fed_join_timeout_s"]) == (BaseStationConfig.clip_factor,
                                                                 BaseStationConfig.join_timeout_s)
    assert (tx["device_id"], tx["fed_distance_m"]) == (DeviceConfig.device_id, DeviceConfig.distance_m)
    assert fed_spec({}) == FedSpec() and fed_spec({"fed_devices": 6}).n_devices == 6


@pytest.mark.parametrize("argv, option, mode", [
    (["rx", "--insecure", "--mode", "pca-lora", "--fed-v", "3"], "--fed-v", "fed-lora"),
    (["rx", "--insecure", "--mode", "fed-lora", "--adapt-steps", "3"], "--adapt-steps", "pca-lora"),
    (["tx", "--insecure", "--trx", "trx1"], "--trx", "slf"),
])
def test_option_of_a_mode_not_run_is_refused(argv, option, mode):
    """An option of a mode the command does not run: one error line naming the option and its mode."""
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0] and mode in lines[0], lines


def test_option_of_a_mode_not_run_is_refused_from_toml(tmp_path):
    cfg = tmp_path / "rx.toml"
    cfg.write_text('[rx]\nmode = "slf"\ninsecure = true\nadapter_bank = "bank"\n')
    result = runner.invoke(app, ["rx", "--config", str(cfg)])
    assert result.exit_code == 2 and "--adapter-bank is an option of mode pca-lora" in result.output, result.output


def test_two_modes_cannot_give_one_option_two_meanings(monkeypatch):
    """A mode declaring another mode's option name with another type or default fails at start-up."""
    from common.modes.base import get_mode
    from common.options import Option
    from semalign.options import rx_options

    slf = get_mode("slf")
    monkeypatch.setattr(slf, "rx_options", [*slf.rx_options, Option("adapt_steps", int, "steps", 7)])
    with pytest.raises(ValueError, match="slf declares --adapt-steps unlike pca-lora"):
        rx_options()


def test_cli_help_does_not_load_torch():
    """Building every command (what --help does) imports no mode's heavy dependencies."""
    import subprocess
    import sys

    code = ("import sys, typer.main, semalign.cli as c; typer.main.get_command(c.app); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'sklearn', 'flwr') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_rounds_zero_runs_no_round(tmp_path, digits_artifacts):
    """--rounds 0 means zero rounds, not the default (no `or` fallback)."""
    result = runner.invoke(app, ["tx", "--rounds", "0", "--insecure", "--out", str(tmp_path / "r"),
                                 "--dataset", "digits", "--artifacts", str(digits_artifacts),
                                 "--connect", "tcp://127.0.0.1:9", "--hello-attempts", "1"])
    assert result.exit_code == 0, result.output
    assert "0/0 rounds ok" in result.output


# an option named after its unit must name that unit in its help (regex on the help text)
UNIT_SUFFIXES = {"_flops_per_s": r"FLOP/s", "_flops": r"FLOP/s", "_ms": r"\bms\b", "_bps": r"\bbit/s\b",
                 "_bytes": r"\bbytes\b", "_hz": r"\bHz\b", "_m": r"\bm\b", "_w": r"\bW\b", "_j": r"\bJ\b",
                 "_s": r"\bs\b"}


def _unit_of(name: str) -> str | None:
    return next((unit for suffix, unit in UNIT_SUFFIXES.items() if name.endswith(suffix)), None)


def test_help_names_the_unit_of_every_option_with_a_unit_suffix():
    """Every daemon option (all modes) whose name ends in a unit names that unit in its help, and that help
    is what ``rx --help`` / ``tx --help`` print; the suffix table covers every numeric option's suffix."""
    import re

    from semalign.options import rx_options, tx_options

    checked = 0
    for role, options in (("rx", rx_options()), ("tx", tx_options())):
        out = " ".join(runner.invoke(app, [role, "--help"]).output.split())
        for o in options:
            unit = _unit_of(o.name)
            if unit is None:
                continue
            checked += 1
            assert re.search(unit, o.help_text), f"{role} --{o.name}: help names no unit {unit!r}: {o.help_text!r}"
            assert "--" + o.name.replace("_", "-") in out
    assert checked >= 20  # deadline_s, link_rate_bps, max_payload_bytes, fed_bandwidth_hz, adapt_budget_ms, ...
    assert _unit_of("deadline_s") == r"\bs\b" and _unit_of("fed_flops_per_s") == "FLOP/s"


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
    assert "acc LoRA" in result.output and "kept" in result.output
    table = [line for line in result.output.splitlines() if "MCS" in line]
    assert len(table) == 3 and max(len(line) for line in table) <= 80  # no forced 200 columns
