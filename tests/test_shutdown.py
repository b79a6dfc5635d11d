"""Graceful shutdown of real daemon processes: SIGTERM/SIGINT end the current round, flush, exit 0."""

import os
import signal
import subprocess
import time

import pytest

from common.results.log import load_results, read_jsonl
from tests.faults_helpers import tx_cmd, wait_rows
from tests.helpers import ROOT, start_rx, stop

ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_tx_signal_mid_campaign_flushes_and_exits_0(digits_artifacts, tmp_path, sig):
    proc, address = start_rx(digits_artifacts, "--trace", "demo", "--trace-rounds", "4", "--adapt-steps", "300")
    out = tmp_path / "run"
    try:
        tx = subprocess.Popen(tx_cmd(digits_artifacts, address, out, 200), env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        wait_rows(out, 2)
        tx.send_signal(sig)
        output, _ = tx.communicate(timeout=30)
    finally:
        stop(proc)
    assert tx.returncode == 0, output
    rows = read_jsonl(out / "results.jsonl")
    assert 2 <= len(rows) < 200 and [r["round"] for r in rows] == list(range(len(rows)))
    assert all(r["status"] == "ok" for r in rows), rows[-1]  # the round in flight was finished, not lost
    assert load_results(out)["rounds"] == rows
    assert f"{len(rows)}/{len(rows)} rounds ok" in output


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_rx_signal_mid_campaign_exits_0_after_the_round(digits_artifacts, tmp_path, sig):
    log = tmp_path / "rx.log"
    proc, address = start_rx(digits_artifacts, "--trace", "demo", "--trace-rounds", "4", "--adapt-steps", "300",
                             log_file=log)
    out = tmp_path / "run"
    tx = subprocess.Popen(tx_cmd(digits_artifacts, address, out, 200, "--result-timeout-s", "3"),
                          env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_rows(out, 2)
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        text = log.read_text()
        assert "RX exiting:" in text and "Traceback" not in text
        n_ok = int(text.split("RX exiting: ")[1].split()[0])
        time.sleep(0.5)  # the TX is now re-sending / reconnecting with back-off; stop it too
        tx.send_signal(signal.SIGTERM)
        assert tx.wait(timeout=20) == 0
    finally:
        if tx.poll() is None:
            tx.kill()
        stop(proc)
    rows = read_jsonl(out / "results.jsonl")
    assert sum(r["status"] == "ok" for r in rows) == n_ok  # every round the RX finished reached the TX
    assert all(r["status"] in ("ok", "aborted") for r in rows), rows[-1]
