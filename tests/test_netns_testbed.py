"""deploy/netns-testbed.sh plumbing: namespaces, veth, tbf rate, teardown (needs root and iproute2)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "netns-testbed.sh"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces and tc"
    missing = [tool for tool in ("ip", "tc", "timeout") if shutil.which(tool) is None]
    if missing:
        return f"needs {missing} (apt-get install iproute2)"
    probe = f"sa-probe-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False).returncode != 0:
        return "cannot create network namespaces here"
    subprocess.run(["ip", "netns", "del", probe], check=True)
    return None


REASON = _why_not()
needs_netns = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def run_testbed(out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", str(SCRIPT), "--out", str(out), "--timeout-s", "30", *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
                          check=False)
    namespaces = re.findall(r"sa-(?:rx|tx|wk)-\d+", (out / "testbed.txt").read_text())
    assert len(namespaces) == (3 if "--remote-worker" in args else 2)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(ns in left for ns in namespaces), f"not torn down: {left}"
    return done


@needs_netns
def test_tbf_limits_the_veth_link(tmp_path):
    done = run_testbed(tmp_path, "--measure", "--rate-mbit", "20", "--measure-s", "1")
    assert done.returncode == 0, done.stderr
    goodput_mbit = float((tmp_path / "measure.txt").read_text())
    assert 0.85 * 20 < goodput_mbit < 1.02 * 20  # TCP/IP/Ethernet headers take ~4 %
    assert "tbf" in (tmp_path / "testbed.txt").read_text()


def fake_semalign_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"SEMALIGN": f"{sys.executable} {ROOT / 'tests' / 'fake_semalign.py'}",
            "FAKE_SEMALIGN_LOG": str(tmp_path / "calls.jsonl"), **extra}


@needs_netns
def test_daemons_run_in_the_two_namespaces_over_the_ip_backend(tmp_path):
    out = tmp_path / "out"
    done = run_testbed(out, "--rate-mbit", "20", "--rounds", "3", env=fake_semalign_env(tmp_path))
    assert done.returncode == 0, done.stderr + done.stdout
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    artifacts = str(out / "artifacts")
    assert calls[0] == ["pretrain", "--dataset", "digits", "--d-pre", "40", "--out", artifacts]
    rx, tx = sorted(calls[1:])
    assert rx == ["rx", "--bind", "tcp://10.77.0.1:5555", "--insecure", "--artifacts", artifacts, "--link", "ip",
                  "--link-rate-bps", "20000000", "--max-rounds", "3"]
    assert tx == ["tx", "--connect", "tcp://10.77.0.1:5555", "--insecure", "--artifacts", artifacts, "--dataset", "digits",
                  "--rounds", "3", "--out", str(out)]
    assert (out / "rx.log").read_text().strip() == "rx got 5 bytes"


@needs_netns
def test_a_failing_daemon_fails_the_run_and_still_tears_down(tmp_path):
    (tmp_path / "art").mkdir()
    done = run_testbed(tmp_path / "out", "--artifacts", str(tmp_path / "art"),
                       env=fake_semalign_env(tmp_path, FAKE_SEMALIGN_TX_EXIT="1"))
    assert done.returncode != 0
    assert "tx exit 1," in done.stdout


@pytest.mark.parametrize("args, match", [
    (["--rate-mbit", "fast"], "--rate-mbit must be a positive number, got 'fast'"),
    (["--rounds", "0"], "--rounds must be an integer >= 1, got '0'"),
    (["--dataset", "cifar"], "--dataset must be mnist or digits, got 'cifar'"),
    (["--port", "70000"], "--port must be in 1..65534 (the remote worker uses PORT+1), got '70000'"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
])
def test_bad_options_are_named(tmp_path, args, match):
    done = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path), *args], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2 and match in done.stderr


@needs_netns
def test_real_daemons_through_the_rate_limited_link(tmp_path, digits_artifacts):
    """The real RX and TX in two namespaces; the RX reports the tbf rate and every round is ok."""
    out = tmp_path / "out"
    cfg = tmp_path / "testbed.toml"
    cfg.write_text("[tx]\nn_test = 100\nn_min_train = 200\nfill_payload = true\n\n[rx]\nadapt_steps = 20\n")
    env = {"SEMALIGN": f"{sys.executable} -m semalign", "PYTHONPATH": str(ROOT)}
    done = run_testbed(out, "--rate-mbit", "40", "--rounds", "3", "--artifacts", str(digits_artifacts),
                       "--config", str(cfg), env=env)
    assert done.returncode == 0, done.stderr + done.stdout
    rounds = json.loads((out / "results.json").read_text())["rounds"]
    assert [r["status"] for r in rounds] == ["ok"] * 3
    assert all(r["rate_bps"] == 40e6 and r["payload_bytes"] <= r["b_max_bytes"] for r in rounds)
    # the payload crossed a 40 Mbit/s link: transfer cannot beat its air time
    assert all(r["latency_ms"]["transfer"] >= 0.9 * 8 * r["payload_bytes"] / 40e6 * 1e3 for r in rounds)


@needs_netns
def test_front_end_and_its_worker_in_two_namespaces_over_curve(tmp_path, digits_artifacts):
    """--remote-worker: the RX front end in one namespace, its only worker (`semalign rx-worker --connect`)
    in another, CURVE throughout; every round is ok and served by that worker."""
    out = tmp_path / "out"
    cfg = tmp_path / "testbed.toml"
    cfg.write_text("[tx]\nn_test = 100\nn_min_train = 200\n\n[rx]\nadapt_steps = 20\n")
    env = {"SEMALIGN": f"{sys.executable} -m semalign", "PYTHONPATH": str(ROOT)}
    done = run_testbed(out, "--rate-mbit", "40", "--rounds", "3", "--artifacts", str(digits_artifacts),
                       "--config", str(cfg), "--remote-worker", env=env)
    assert done.returncode == 0, done.stderr + done.stdout + (out / "rx.log").read_text()[-2000:]
    rounds = json.loads((out / "results.json").read_text())["rounds"]
    assert [r["status"] for r in rounds] == ["ok"] * 3
    worker_log, rx_log = (out / "worker.log").read_text(), (out / "rx.log").read_text()
    assert "joined the front end at tcp://10.77.1.1:" in worker_log and "seq 2:" in worker_log, worker_log[-2000:]
    assert "RX worker 10.77.1.2 admitted (CURVE key" in rx_log and "seq 0:" not in rx_log
