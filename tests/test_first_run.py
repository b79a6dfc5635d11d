"""A first run from the README, and key and logging hygiene.

Over real processes and typer's CliRunner: keygen makes the RX's
allow-list; the README's two-terminal launch (keys, RX, TX, `semalign show`)
works as written; a TX pointed at the wrong port gives up after
``--connect-timeout-s`` with one line per back-off level and says what to
check; the demo validates its options before starting a process, quotes a
failed child's own error line, honours ``[demo]`` and never empties earlier
results; the tables fit an 80-column terminal and say which model was kept;
the ``pack`` latency stage excludes re-sends.

Over real sockets: an unauthenticated (plain, NULL mechanism)
connection to a CURVE RX is logged with the peer's address, rate-limited
like the ZAP refusals.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import zmq
from typer.testing import CliRunner

from common.modes.pca_lora.artifacts import load_codec
from common.net import security
from common.net.security import generate_keypair, load_public, rx_security
from common.net.transport import RxSocket, TxSocket
from common.results.log import ResultsLog, load_results
from common.wire.protocol import decode
from semalign.cli import app
from tests.helpers import ROOT, free_port, rx_node, start_rx, stop, tx_node
from tx_node.daemon import TxConfig

runner = CliRunner()
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", COLUMNS="80")


def semalign(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``semalign ARGS`` as its own process (its logging goes to its stderr, as a user sees it)."""
    return subprocess.run([sys.executable, "-m", "semalign", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=ENV)


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("error: ")]


# ---------------------------------------------------------------- keys and the two-terminal launch


def test_keygen_makes_the_allow_list(tmp_path):
    """Today `--curve-allow keys/allowed-tx` fails with 'not a directory': nothing makes it."""
    keys = tmp_path / "keys"
    assert runner.invoke(app, ["keygen", "--out", str(keys), "--name", "rx"]).exit_code == 0
    result = runner.invoke(app, ["keygen", "--out", str(keys), "--name", "tx1", "--allow-dir",
                                 str(keys / "allowed-tx")])
    assert result.exit_code == 0, result.output
    admitted = keys / "allowed-tx" / "tx1.key"
    assert admitted.exists() and load_public(admitted) == load_public(keys / "tx1.key")
    assert "secret-key" not in admitted.read_text()
    assert rx_security(keys / "rx.key_secret", keys / "allowed-tx").allow_dir == keys / "allowed-tx"
    # an existing pair: admitting it again only copies; a secret file is never admitted
    again = runner.invoke(app, ["keygen", "--out", str(keys), "--name", "tx1", "--allow-dir", str(tmp_path / "a2")])
    assert again.exit_code == 0 and "exists" in again.output and (tmp_path / "a2" / "tx1.key").exists()
    with pytest.raises(ValueError, match="secret"):
        security.admit_public_key(keys / "tx1.key_secret", tmp_path / "a3")
    # another key under the same name is refused unless a new pair replaces it (--force)
    generate_keypair(tmp_path / "other", "tx1")
    with pytest.raises(ValueError, match="another key"):
        security.admit_public_key(tmp_path / "other" / "tx1.key", keys / "allowed-tx")


def test_two_terminal_launch_as_the_readme_says(digits_artifacts, tmp_path):
    """The README's steps with real processes: keygen x2 (the TX's into the allow-list), the RX in one
    process, the TX in another, then `semalign show` prints the table."""
    keys, out = tmp_path / "keys", tmp_path / "runs" / "x"
    assert semalign("keygen", "--out", keys, "--name", "rx").returncode == 0
    made = semalign("keygen", "--out", keys, "--name", "tx", "--allow-dir", keys / "allowed-tx")
    assert made.returncode == 0, made.stderr
    port = free_port()
    proc, address = start_rx(digits_artifacts, "--curve-secret", str(keys / "rx.key_secret"), "--curve-allow",
                             str(keys / "allowed-tx"), port=port, log_file=tmp_path / "rx.log")
    try:
        tx = semalign("tx", "--connect", address, "--rounds", 3, "--out", out, "--curve-secret",
                      keys / "tx.key_secret", "--curve-server-public", keys / "rx.key", "--artifacts",
                      digits_artifacts, "--dataset", "digits", "--n-test", 30)
    finally:
        stop(proc)
    assert tx.returncode == 0, tx.stderr + (tmp_path / "rx.log").read_text()
    assert "3/3 rounds ok" in tx.stdout
    rx_log = (tmp_path / "rx.log").read_text()
    assert "admitted" in rx_log
    shown = semalign("show", out)
    assert shown.returncode == 0, shown.stderr
    assert "acc LoRA" in shown.stdout and "kept" in shown.stdout and "3 rounds: 3 ok" in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80


# ---------------------------------------------------------------- the TX's give-up time


def test_tx_at_the_wrong_port_gives_up_soon_and_says_what_to_check(digits_artifacts, tmp_path):
    """Within ``--connect-timeout-s`` (not ``--hello-attempts`` x the hello timeout), saying what to check.

    The time is the TX's own (its message says how long it tried), so a slow or loaded machine's process
    start-up does not count; the attempts allow 1000 x 0.5 s, so a TX that ignored the timeout would say
    500 s, not 3."""
    got = semalign("tx", "--insecure", "--connect", f"tcp://127.0.0.1:{free_port()}", "--connect-timeout-s", 3,
                   "--hello-timeout-s", 0.5, "--hello-attempts", 1000, "--rounds", 1, "--out", tmp_path / "o",
                   "--artifacts", digits_artifacts, "--dataset", "digits")
    assert got.returncode == 2, got.stderr
    (err,) = error_lines(got.stderr)
    for words in ("no answer from the RX at tcp://127.0.0.1:", "check the address and port (--connect)",
                  "the RX is running", "--curve-server-public", "--connect-timeout-s"):
        assert words in err, err
    assert 3 <= int(re.search(r"attempts in (\d+) s", err).group(1)) < 3 + 10, err
    tries = [ln for ln in got.stderr.splitlines() if "no answer from the RX" in ln and "re-trying" in ln]
    attempts = int(re.search(r"after (\d+) attempts", err).group(1))
    assert 1 <= len(tries) < attempts, got.stderr  # one line per back-off level, not one per attempt


def test_one_log_line_per_back_off_level(tmp_path, caplog, digits_artifacts, digits):
    """With the back-off at its longest from the start, every re-try is at one level: one line."""
    codec, _ = load_codec(digits_artifacts)
    node = tx_node(codec, digits, TxSocket(f"tcp://127.0.0.1:{free_port()}"), hello_timeout_s=0.2,
                   backoff_s=0.05, backoff_max_s=0.05, connect_timeout_s=1.5, hello_attempts=1000)
    with caplog.at_level(logging.INFO, logger="semalign.tx"):
        with pytest.raises(RuntimeError, match=r"after (\d+) attempts in \d s") as info:
            node.run(1, ResultsLog(tmp_path, {}))
    node.sock.close()
    attempts = int(re.search(r"after (\d+) attempts", str(info.value)).group(1))
    assert attempts >= 4
    assert caplog.text.count("no answer from the RX") == 1 and "every ~" in caplog.text


def test_connect_timeout_is_an_option_with_a_short_default():
    from semalign.options import by_name, tx_options

    assert TxConfig().connect_timeout_s == 20.0
    assert by_name(tx_options())["connect_timeout_s"].default == 20.0
    with pytest.raises(ValueError, match="connect_timeout_s"):
        TxConfig(connect_timeout_s=0)


# ---------------------------------------------------------------- the demo


DEMO = ["demo", "--dataset", "digits", "--adapt-steps", "5", "--n-test", "30"]


def test_demo_validates_before_starting_processes(tmp_path, digits_artifacts):
    """Today `--trace strss` is silent for 164 s and then blames the TX."""
    for extra, words in ((["--trace", "strss"], "--trace strss"), (["--rounds", "2"], "--trace demo"),
                         (["--data-dir", str(tmp_path / "nope")], "--data-dir"),
                         (["--n-test", "0"], "n_test")):
        out = tmp_path / f"out{len(words)}"
        result = runner.invoke(app, [*DEMO, "--artifacts", str(digits_artifacts), "--out", str(out), *extra])
        assert result.exit_code == 2, result.output
        (err,) = error_lines(result.output)
        assert words in err
        assert not (out / "rx.log").exists()  # no process was started


def test_demo_quotes_the_failed_childs_own_error(tmp_path, digits_artifacts):
    """The RX refuses its [link] table: the demo says so, quoting the RX's line, not 'the TX exited'."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[link]\nbackend = "loopback"\nbogus = 1\n')
    out = tmp_path / "out"
    result = runner.invoke(app, [*DEMO, "--artifacts", str(digits_artifacts), "--out", str(out), "--rounds", "3",
                                 "--config", str(cfg)])
    assert result.exit_code == 2, result.output
    (err,) = error_lines(result.output)
    assert "the RX exited before it served" in err and "bad options ['bogus'" in err and str(out / "rx.log") in err
    assert "the TX" not in err


def test_demo_config_table_out_reuse_and_show(tmp_path, digits_artifacts):
    """[demo] sets what the command line does not; a second demo into the same --out moves the first's
    results aside (today it empties them); `semalign show` prints either."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[demo]\nrounds = 3\ntrace = "paper"\nn_test = 25\nadapt_steps = 4\n')
    out = tmp_path / "demo"
    base = ["demo", "--dataset", "digits", "--artifacts", str(digits_artifacts), "--out", str(out), "--config",
            str(cfg)]
    first = runner.invoke(app, base)
    assert first.exit_code == 0, first.output + (out / "tx.log").read_text()
    doc = load_results(out)
    assert len(doc["rounds"]) == 3 and doc["config"]["n_test"] == 25  # from [demo]
    assert "kept" in first.output and "semalign show" in first.output
    second = runner.invoke(app, [*base, "--rounds", "4", "--n-test", "20"])  # the command line wins
    assert second.exit_code == 0, second.output
    doc2 = load_results(out)
    assert len(doc2["rounds"]) == 4 and doc2["config"]["n_test"] == 20
    (previous,) = out.glob("previous-*")
    assert len(load_results(previous)["rounds"]) == 3 and (previous / "tx.log").exists()
    shown = runner.invoke(app, ["show", str(previous)])
    assert shown.exit_code == 0 and "3 rounds: 3 ok" in shown.output and "acc LoRA" in shown.output


def test_demo_table_mode_must_come_from_the_command_line(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[demo]\nmode = "slf"\n')
    result = runner.invoke(app, ["demo", "--config", str(cfg), "--out", str(tmp_path / "o")])
    (err,) = error_lines(result.output)
    assert result.exit_code == 2 and "--mode slf" in err


def test_tx_moves_earlier_results_aside_unless_resume(tmp_path, digits_artifacts):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text(json.dumps({"round": 0, "status": "ok"}) + "\n")
    (out / "results.json").write_text(json.dumps({"config": {"session_id": 1}, "rounds": [{"round": 0}]}))
    got = semalign("tx", "--insecure", "--rounds", 0, "--out", out, "--artifacts", digits_artifacts,
                   "--dataset", "digits")
    assert got.returncode == 0, got.stderr
    (previous,) = out.glob("previous-*")
    assert (previous / "results.jsonl").read_text().startswith('{"round": 0')
    assert "moved them to" in got.stderr and "--resume" in got.stderr
    assert load_results(out)["rounds"] == []


# ---------------------------------------------------------------- tables and `show`


def test_show_prints_any_mode_and_refuses_a_missing_dir(tmp_path):
    d = tmp_path / "slf"
    d.mkdir()
    rows = [{"round": 0, "status": "ok", "mode": "slf", "modulation": "QPSK", "mcs": 1, "latency_ms": {"rtt": 3.5},
             "kind": "align", "changed_layers": ["decoder.0", "codebook"], "accuracy": 0.91234, "table1": {"a": 1}},
            {"round": 1, "status": "failed", "error": "RX error lost: [HARQ] gave up", "mode": "slf"}]
    (d / "results.json").write_text(json.dumps({"config": {"mode": "slf"}, "rounds": rows}))
    shown = runner.invoke(app, ["show", str(d)])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "changed_layers=[decoder.0, codebook]" in text and "accuracy=0.9123" in text
    assert "[HARQ] gave up" in text and "table1=(see results.json)" in text and "1 failed, 1 ok" in text
    missing = runner.invoke(app, ["show", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no results.json" in missing.output


def test_demo_table_fits_80_columns_and_says_which_model_was_kept():
    from rich.console import Console

    from semalign.campaigns.pca_lora.tables import kept, print_rounds

    rows = [{"round": 0, "status": "ok", "modulation": "256QAM", "mcs": 27, "rate_bps": 2.269e8, "alpha": 200,
             "n_train": 0, "acc_pretrained": 0.976, "acc_adapted": 0.976, "latency_ms": {"communication": 125.3},
             "adapt": {"strategy": "none", "steps": 0}},
            {"round": 1, "status": "ok", "modulation": "QPSK", "mcs": 1, "rate_bps": 9.4e6, "alpha": 9,
             "n_train": 2043, "acc_pretrained": 0.774, "acc_adapted": 0.774, "b_max_bytes": 58700,
             "latency_ms": {"communication": 69.2, "finetune": 164.4}, "adapt": {"strategy": "lora", "steps": 150,
                                                                                  "kept": "frozen"}},
            {"round": 2, "status": "failed", "error": "RX error lost: payload lost", "modulation": "QPSK", "mcs": 1}]
    assert [kept(r) for r in rows] == ["-", "frozen", "-"] and kept({"adapt": {"reused": True}}) == "bank"
    console = Console(width=80, record=True, file=io.StringIO())
    print_rounds(rows, "t", console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "kept" in text and "frozen" in text and "round 2 failed: RX error lost" in " ".join(text.split())
    wide = Console(width=160, record=True, file=io.StringIO())
    print_rounds(rows, "t", wide)
    wide_text = wide.export_text()
    assert "SINR dB" in wide_text and "payload kB" in wide_text


# ---------------------------------------------------------------- latency: pack excludes re-sends


def test_pack_stage_excludes_resends_and_back_off(digits_artifacts, digits, tmp_path):
    """The RX drops the first PAYLOAD: the round succeeds on the second send. Today `pack` (features ->
    bytes ready to send) holds the lost attempt's 0.8 s wait and the back-off."""
    node = rx_node(digits_artifacts)
    sock = RxSocket("tcp://127.0.0.1:0", 1 << 24, zmq.Context.instance())
    halt, dropped = threading.Event(), []

    def serve_dropping_the_first_payload():
        while not halt.is_set():
            got = sock.recv(50)
            if got is None:
                continue
            peer, frames = got
            if decode(frames[0]).TYPE == "PAYLOAD" and not dropped:
                dropped.append(peer)
                continue
            for reply in node.handle(peer, frames, time.time_ns(), sock.last_user_id):
                sock.send(peer, reply)

    thread = threading.Thread(target=serve_dropping_the_first_payload, daemon=True)
    thread.start()
    codec, _ = load_codec(digits_artifacts)
    tx = tx_node(codec, digits, TxSocket(sock.address), n_test=20, n_min_train=40, max_train=60,
                 deadline_s=0.002, hello_timeout_s=1.0, clock_samples=1, result_timeout_s=0.8, backoff_s=0.3,
                 backoff_max_s=0.3)
    try:
        (rec,) = tx.run(1, ResultsLog(tmp_path, {}))
    finally:
        tx.sock.close()
        halt.set()
        thread.join()
        sock.close()
    assert rec.status == "ok" and rec.attempts == 2 and dropped, rec.error
    lat = rec.latency_ms
    assert lat["pack"] < 100, lat  # today >= 800 + 150 ms
    assert lat["transfer"] >= 800 and lat["rtt"] >= 800  # the lost send's wait counts from the first send


# ---------------------------------------------------------------- item 8: unauthenticated connections


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def curve_rx_socket(tmp_path, monkeypatch):
    """A CURVE RX socket in this process, the security log captured, the limiter's clock held still."""
    monkeypatch.setattr(security.log_limiter, "clock", lambda: 5000.0)
    security.log_limiter.flush(force=True)
    generate_keypair(tmp_path, "rx")
    (tmp_path / "allow").mkdir()
    handler = Lines()
    sec_log = logging.getLogger("semalign.security")
    old = sec_log.level
    sec_log.setLevel(logging.INFO)
    sec_log.addHandler(handler)
    ctx = zmq.Context()  # its own ZAP endpoint: the last test's may still be closing in the reaper thread
    rx = RxSocket("tcp://127.0.0.1:0", 1 << 16, ctx, rx_security(tmp_path / "rx.key_secret", tmp_path / "allow"))
    yield rx, handler
    rx.close()
    sec_log.removeHandler(handler)
    sec_log.setLevel(old)
    ender = threading.Thread(target=ctx.term, daemon=True)
    ender.start()
    ender.join(5)


def _logged(handler) -> int:
    return sum("unauthenticated connection from" in ln and "suppressed" not in ln for ln in handler.lines)


def _wait(predicate, rx, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        rx.recv(10)
    return predicate()


def test_unauthenticated_connection_is_logged_with_the_peer_address(curve_rx_socket):
    """Today a plain client is refused without a line on the RX (an unknown CURVE key gets one)."""
    rx, handler = curve_rx_socket
    port = int(rx.address.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port))  # a plain ZMTP client, its greeting in two steps
    try:
        peer = "{}:{}".format(*raw.getsockname())
        raw.sendall(b"\xff" + b"\x00" * 8 + b"\x7f")
        time.sleep(0.2)
        raw.sendall(b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31)
        _wait(lambda: _logged(handler) == 1, rx, timeout_s=5)
    finally:
        raw.close()
    (line,) = [ln for ln in handler.lines if "unauthenticated connection" in ln]
    assert f"unauthenticated connection from {peer} refused" in line and "did not use CURVE" in line
    # a real ZeroMQ client without CURVE: refused within microseconds, still logged (with its address
    # where the connection could still be read -- on a busy machine it may be gone: "an unknown address")
    ctx = zmq.Context.instance()
    plain = ctx.socket(zmq.DEALER)
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(rx.address)
    try:
        assert _wait(lambda: _logged(handler) >= 2, rx)  # (libzmq may re-try: more)
    finally:
        plain.close()


def test_unauthenticated_flood_is_rate_limited(curve_rx_socket):
    rx, handler = curve_rx_socket
    ctx = zmq.Context.instance()
    n = 3 * security.REFUSAL_LOG_BURST
    for i in range(n):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(rx.address)
        # each is refused (and counted) before the next; libzmq may re-try one: then more
        _wait(lambda i=i: getattr(getattr(rx, "monitor", None), "unauthenticated", 0) >= i + 1, rx, timeout_s=5)
        s.close()
    assert _logged(handler) == security.REFUSAL_LOG_BURST, handler.lines
    rx.close()  # stopping the authenticator flushes the pending summary
    refused = rx.monitor.unauthenticated
    assert refused >= n
    (summary,) = [ln for ln in handler.lines if "suppressed" in ln and "unauthenticated connection" in ln]
    assert f"suppressed {refused - security.REFUSAL_LOG_BURST} similar" in summary


# ---------------------------------------------------------------- `session opened`, once per session


def test_session_opened_is_logged_once_per_session(digits_artifacts, caplog):
    from tests.helpers import hello

    node = rx_node(digits_artifacts)
    codec, _ = load_codec(digits_artifacts)
    with caplog.at_level(logging.INFO, logger="semalign.rx"):
        for _ in range(TxConfig().clock_samples):  # a TX's handshake: one HELLO per clock sample
            node.handle(b"peer-1", [hello(codec, session_id=77)], time.time_ns(), None)
    assert caplog.text.count("session 77 (pca-lora) opened") == 1, caplog.text
