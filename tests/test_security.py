"""CURVE between TX and RX: keygen, an admitted TX works, an unknown one is refused and logged."""

import os
import stat
import time

import pytest
from typer.testing import CliRunner

from common.modes.pca_lora.artifacts import load_codec
from common.results.log import ResultsLog
from common.net.security import (
    TxSecurity,
    generate_keypair,
    load_public,
    load_secret,
    tx_security,
)
from common.net.transport import TxSocket
from semalign.cli import app
from semalign.campaigns.processes import throwaway_keys
from tests.helpers import ask, start_rx, stop
from tests.helpers import tx_node as make_tx
from tx_node.daemon import HandshakeFailed

runner = CliRunner()
CONFIG = dict(n_test=20, n_min_train=40, max_train=60, deadline_s=0.002, hello_timeout_s=0.5,
              hello_attempts=6, clock_samples=1)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    rx_keys, tx_keys = throwaway_keys(d, "tx-lab")
    rx_args = [a for k, v in rx_keys.items() for a in ("--" + k.replace("_", "-"), str(v))]
    tx_args = [a for k, v in tx_keys.items() for a in ("--" + k.replace("_", "-"), str(v))]
    generate_keypair(d / "stranger", "tx-stranger")  # a valid key pair the RX does not list
    return d, rx_args, tx_args


@pytest.fixture(scope="module")
def curve_rx(digits_artifacts, keys):
    d, rx_args, _ = keys
    proc, address = start_rx(digits_artifacts, "--trace", "demo", "--trace-rounds", "3", *rx_args,
                             log_file=d / "rx.log")
    proc.log_file = d / "rx.log"
    yield proc, address
    stop(proc)


def tx_node(digits_artifacts, digits, address, security, **cfg):
    codec, _ = load_codec(digits_artifacts)
    return make_tx(codec, digits, TxSocket(address, security=security), **{**CONFIG, **cfg})


def test_keygen_writes_a_pair_with_a_private_secret(tmp_path):
    result = runner.invoke(app, ["keygen", "--out", str(tmp_path), "--name", "tx1"])
    assert result.exit_code == 0, result.output
    pub, sec = tmp_path / "tx1.key", tmp_path / "tx1.key_secret"
    assert stat.S_IMODE(os.stat(sec).st_mode) == 0o600
    keys = load_secret(sec)
    assert load_public(pub) == keys.public and len(keys.secret) == 40
    assert "secret-key" not in pub.read_text() and "secret-key" in sec.read_text()
    again = runner.invoke(app, ["keygen", "--out", str(tmp_path), "--name", "tx1"])
    assert again.exit_code == 2 and "--force" in again.output


def test_public_file_is_not_a_secret(tmp_path):
    pub, _ = generate_keypair(tmp_path, "a")
    with pytest.raises(ValueError, match="no secret key"):
        load_secret(pub)


def test_admitted_tx_runs_rounds_over_curve(curve_rx, keys, digits_artifacts, digits, tmp_path):
    proc, address = curve_rx
    _, _, tx_args = keys
    sec = tx_security(**{"curve_secret": tx_args[1], "curve_server_public": tx_args[3]})
    node = tx_node(digits_artifacts, digits, address, sec)
    try:
        records = node.run(2, ResultsLog(tmp_path, {}))
    finally:
        node.sock.close()
    assert [r.status for r in records] == ["ok", "ok"], [r.error for r in records]
    assert records[0].rx_pid == proc.pid


@pytest.mark.parametrize("who", ["unknown key", "plain client", "wrong server key"])
def test_refused_tx_gets_no_session_and_the_rx_logs_it(curve_rx, keys, digits_artifacts, digits, tmp_path, who):
    proc, address = curve_rx
    d, _, tx_args = keys
    if who == "unknown key":
        sec = TxSecurity(load_secret(d / "stranger" / "tx-stranger.key_secret"), load_public(tx_args[3]))
    elif who == "plain client":
        sec = TxSecurity()
    else:
        sec = TxSecurity(load_secret(tx_args[1]), load_public(d / "stranger" / "tx-stranger.key"))
    node = tx_node(digits_artifacts, digits, address, sec)
    try:
        with pytest.raises(HandshakeFailed) as info:
            node.run(1, ResultsLog(tmp_path, {}))
    finally:
        node.sock.close()
    # the TX reads the refused handshake off its socket monitor and stops at once; a plain client may
    # instead be dropped without a word, and gives up after its HELLOs
    why = str(info.value)
    assert "refused the CURVE handshake" in why or (
        who == "plain client" and f"after {CONFIG['hello_attempts']} attempts" in why), why
    if who == "unknown key":
        deadline = time.monotonic() + 30  # the RX writes its log line on its own time
        while "REFUSED (CURVE key" not in proc.log_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = proc.log_file.read_text()
        assert "REFUSED (CURVE key" in log and sec.keys.public.decode() in log


@pytest.mark.parametrize("role,args,needle", [
    ("rx", [], "no CURVE keys given"),
    ("tx", [], "no CURVE keys given"),
    ("rx", ["--insecure", "--curve-allow", "."], "contradicts"),
    ("tx", ["--curve-secret", "x.key_secret"], "needs both"),
])
def test_plain_mode_only_when_asked(digits_artifacts, tmp_path, role, args, needle):
    result = runner.invoke(app, [role, "--artifacts", str(digits_artifacts), "--dataset", "digits", *args]
                           + (["--out", str(tmp_path)] if role == "tx" else ["--bind", "tcp://127.0.0.1:0"]))
    assert result.exit_code == 2 and needle in result.output, result.output


def test_insecure_warns(caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        assert not tx_security(**{"insecure": True}).curve
    assert "WITHOUT CURVE" in caplog.text


def _raw_tx(address, key_dir, name):
    """A TX socket with its own admitted CURVE key (added to the RX's allow-list directory)."""
    _, tx_keys = throwaway_keys(key_dir, name)
    return TxSocket(address, security=TxSecurity(load_secret(tx_keys["curve_secret"]),
                                                 load_public(tx_keys["curve_server_public"])))


def _ask(sock, frame, want, timeout_s=5.0):
    return ask(sock, frame, want, timeout_s)[1]


def test_a_session_is_bound_to_the_key_that_opened_it(curve_rx, keys, digits_artifacts, digits):
    """A second admitted TX cannot take over, read or feed another TX's session."""
    from common.wire.protocol import encode
    from tests.helpers import hello, payload

    d, _, _ = keys
    _, address = curve_rx
    codec, _ = load_codec(digits_artifacts)
    owner, intruder = _raw_tx(address, d, "tx-owner"), _raw_tx(address, d, "tx-intruder")
    try:
        sid = 424242
        assert _ask(owner, hello(codec, session_id=sid), ("HELLO", "ERROR")).TYPE == "HELLO"
        first = _ask(owner, encode(payload(codec, digits, seq=0, session_id=sid)), ("RESULT", "ERROR"))
        assert first.TYPE == "RESULT"
        # the intruder presents the owner's session id: refused, the owner's session stays
        err = _ask(intruder, hello(codec, session_id=sid), ("HELLO", "ERROR"))
        assert err.TYPE == "ERROR" and err.code == "session_owner"
        # ... and cannot read the owner's recorded round by re-sending it
        got = _ask(intruder, encode(payload(codec, digits, seq=0, session_id=sid)), ("RESULT", "ERROR"))
        assert got.TYPE == "ERROR" and got.code == "no_session"
        # the owner's session still works
        again = _ask(owner, encode(payload(codec, digits, seq=1, session_id=sid)), ("RESULT", "ERROR"))
        assert again.TYPE == "RESULT" and again.seq == 1
    finally:
        owner.close()
        intruder.close()


def test_tx_ignores_a_result_that_does_not_answer_its_request():
    """A RESULT whose request digest differs from the request sent is not taken as the round's answer."""
    from common.wire.protocol import Result, request_digest
    from tx_node.daemon import TxNode

    sent = b"the request"
    good = Result(1, 0, {}, b"", {}, 1, 0, 0, 0, 0, request_digest(sent))
    forged = Result(1, 0, {"acc_adapted": 1.0}, b"", {}, 1, 0, 0, 0, 0, request_digest(b"another request"))
    types, digests = [("RESULT",)], [request_digest(sent)]
    assert TxNode._slot(good, [None], types, digests) == 0
    assert TxNode._slot(forged, [None], types, digests) is None
    # two requests in flight: each reply goes to the request it answers, whatever order it comes in
    from common.modes.pca_lora.messages import TrainAck

    first = b"the train part"
    ack = TrainAck(1, 0, 10, 5.0, request_digest(first))
    types, digests = [("TRAIN_ACK",), ("RESULT",)], [request_digest(first), request_digest(sent)]
    assert TxNode._slot(good, [None, None], types, digests) == 1
    assert TxNode._slot(ack, [None, None], types, digests) == 0
    assert TxNode._slot(ack, [ack, None], types, digests) is None  # answered already
