"""Sessions are bound to the TX's key (CURVE) or credential (plain socket), not to its connection.

Real RX processes (W = 1 and the multi-process front end with W = 2), real
ZeroMQ sockets. Every wait is bounded; nothing depends on CPU speed.

Before protocol version 3 each of these failed: a second HELLO on one
connection closed the first session; a TX on a new connection with the same
key got ``no_session ... for this peer`` (W = 1) or a fresh session on the
other worker (W = 2); a TX's re-opened session landed on another worker.
"""

from __future__ import annotations

import os
import time

import pytest

from common.modes.pca_lora.artifacts import load_codec
from common.net.security import TxSecurity, load_public, load_secret
from common.net.transport import TxSocket
from common.results.log import ResultsLog
from common.wire.protocol import Hello, encode
from semalign.campaigns.processes import throwaway_keys
from tests.helpers import ask, payload, start_rx, stop, tx_node

CONFIG = dict(n_test=20, n_min_train=40, max_train=60, deadline_s=0.002, hello_timeout_s=1.0, clock_samples=1,
              backoff_s=0.05, backoff_max_s=0.5, result_timeout_s=30.0, hello_attempts=120, round_attempts=4,
              connect_timeout_s=120.0)
CRED = b"c" * 16


def _hello(codec, sid, credential=b"", next_seq=0) -> bytes:
    params = {"codec": codec.name, "d_raw": codec.d_raw, "d_pre": codec.d_max, "value_dtype": "float16",
              "deadline_s": 1.0}
    return encode(Hello("tx", sid, "pca-lora", codec.fingerprint, params, next_seq, 0, os.getpid(),
                        time.time_ns(), credential=credential))


def _ask(sock: TxSocket, frame: bytes, want: tuple[str, ...], timeout_s: float = 120.0):
    return ask(sock, frame, want, timeout_s)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    rx_keys, _ = throwaway_keys(d, "tx-a")
    throwaway_keys(d, "tx-b")
    rx_args = [a for k, v in rx_keys.items() for a in ("--" + k.replace("_", "-"), str(v))]
    return d, rx_args


def _curve_sock(address, d, name) -> TxSocket:
    return TxSocket(address, security=TxSecurity(load_secret(d / f"{name}.key_secret"), load_public(d / "rx.key")))


@pytest.fixture(scope="module", params=[1, 2], ids=["W1", "W2"])
def curve_rx(request, digits_artifacts, keys, tmp_path_factory):
    d, rx_args = keys
    log = tmp_path_factory.mktemp("rxlog") / "rx.log"
    proc, address = start_rx(digits_artifacts, "--workers", str(request.param), *rx_args, log_file=log)
    yield address, request.param
    stop(proc)


@pytest.fixture(scope="module", params=[1, 2], ids=["W1", "W2"])
def plain_rx(request, digits_artifacts, tmp_path_factory):
    log = tmp_path_factory.mktemp("rxlog") / "rx.log"
    proc, address = start_rx(digits_artifacts, "--workers", str(request.param), log_file=log)
    yield address, request.param
    stop(proc)


def test_second_hello_on_one_connection_keeps_the_first_session(plain_rx, digits_artifacts, digits):
    address, _ = plain_rx
    codec, _ = load_codec(digits_artifacts)
    sock = TxSocket(address)
    try:
        assert _ask(sock, _hello(codec, 9001, CRED), ("HELLO", "ERROR"))[1].TYPE == "HELLO"
        assert _ask(sock, encode(payload(codec, digits, seq=0, session_id=9001)), ("RESULT", "ERROR"))[1].TYPE == "RESULT"
        assert _ask(sock, _hello(codec, 9002, CRED), ("HELLO", "ERROR"))[1].TYPE == "HELLO"  # a second session
        for sid in (9001, 9002):  # both are served on the one connection
            _, got = _ask(sock, encode(payload(codec, digits, seq=1, session_id=sid)), ("RESULT", "ERROR"))
            assert got.TYPE == "RESULT" and got.session_id == sid, got
    finally:
        sock.close()


def test_reconnect_with_the_same_key_continues_its_session(curve_rx, keys, digits_artifacts, digits):
    """A TX whose network path changed (a new connection, the same CURVE key) continues without a new HELLO."""
    address, workers = curve_rx
    d, _ = keys
    codec, _ = load_codec(digits_artifacts)
    sid = 7100 + workers
    first_sock = _curve_sock(address, d, "tx-a")
    frame = encode(payload(codec, digits, seq=0, session_id=sid))
    try:
        assert _ask(first_sock, _hello(codec, sid), ("HELLO", "ERROR"))[1].TYPE == "HELLO"
        first_raw, first = _ask(first_sock, frame, ("RESULT", "ERROR"))
        assert first.TYPE == "RESULT", first
        second_sock = _curve_sock(address, d, "tx-a")  # handover: the old connection is still up, idle
        try:
            again_raw, _ = _ask(second_sock, frame, ("RESULT", "ERROR"))
            assert again_raw == first_raw  # the same session, on the worker that holds it: its record answers
            _, nxt = _ask(second_sock, encode(payload(codec, digits, seq=1, session_id=sid)), ("RESULT", "ERROR"))
            assert nxt.TYPE == "RESULT" and nxt.rx_pid == first.rx_pid, nxt
        finally:
            second_sock.close()
    finally:
        first_sock.close()


def test_another_key_can_never_continue_someone_elses_session(curve_rx, keys, digits_artifacts, digits):
    address, workers = curve_rx
    d, _ = keys
    codec, _ = load_codec(digits_artifacts)
    sid = 7200 + workers
    owner, intruder = _curve_sock(address, d, "tx-a"), _curve_sock(address, d, "tx-b")
    frame = encode(payload(codec, digits, seq=0, session_id=sid))
    try:
        assert _ask(owner, _hello(codec, sid), ("HELLO", "ERROR"))[1].TYPE == "HELLO"
        assert _ask(owner, frame, ("RESULT", "ERROR"))[1].TYPE == "RESULT"
        # without HELLO (a "continued" session): refused, and the record is not read
        err = _ask(intruder, frame, ("RESULT", "ERROR"))[1]
        assert err.TYPE == "ERROR" and err.code == "no_session", err
        # with HELLO, the owner's credential included: still refused (under CURVE the key decides)
        err = _ask(intruder, _hello(codec, sid, CRED), ("HELLO", "ERROR"))[1]
        assert err.TYPE == "ERROR" and err.code == "session_owner", err
        err = _ask(intruder, encode(payload(codec, digits, seq=1, session_id=sid)), ("RESULT", "ERROR"))[1]
        assert err.TYPE == "ERROR" and err.code == "no_session", err
        # the owner's session is intact
        got = _ask(owner, encode(payload(codec, digits, seq=1, session_id=sid)), ("RESULT", "ERROR"))[1]
        assert got.TYPE == "RESULT" and got.seq == 1, got
    finally:
        owner.close()
        intruder.close()


def test_plain_socket_session_follows_its_credential(plain_rx, digits_artifacts, digits):
    """On a plain socket: a new connection with the session's credential continues it; another one cannot."""
    address, workers = plain_rx
    codec, _ = load_codec(digits_artifacts)
    sid = 7300 + workers
    first_sock = TxSocket(address)
    frame = encode(payload(codec, digits, seq=0, session_id=sid))
    try:
        assert _ask(first_sock, _hello(codec, sid, CRED), ("HELLO", "ERROR"))[1].TYPE == "HELLO"
        first_raw, first = _ask(first_sock, frame, ("RESULT", "ERROR"))
        assert first.TYPE == "RESULT"
        other = TxSocket(address)
        try:
            # a connection that said no HELLO for it is not served (nothing authenticates it)
            err = _ask(other, frame, ("RESULT", "ERROR"))[1]
            assert err.TYPE == "ERROR" and err.code == "no_session", err
            for cred in (b"", b"x" * 16):  # no credential, or another one: refused
                err = _ask(other, _hello(codec, sid, cred), ("HELLO", "ERROR"))[1]
                assert err.TYPE == "ERROR" and err.code == "session_owner", err
        finally:
            other.close()
        moved = TxSocket(address)
        try:
            assert _ask(moved, _hello(codec, sid, CRED, next_seq=1), ("HELLO", "ERROR"))[1].TYPE == "HELLO"
            again_raw, _ = _ask(moved, frame, ("RESULT", "ERROR"))
            assert again_raw == first_raw  # the same session (same worker): answered from its record
        finally:
            moved.close()
    finally:
        first_sock.close()


def test_tx_resume_path_continues_the_session_on_a_new_connection(plain_rx, digits_artifacts, digits, tmp_path):
    """The TX's own re-open (socket rebuilt: a new connection) continues the session where it is held."""
    address, workers = plain_rx
    codec, _ = load_codec(digits_artifacts)
    node = tx_node(codec, digits, TxSocket(address), session_id=7400 + workers, **CONFIG)
    try:
        first = node.run(1, ResultsLog(tmp_path / "a", {}))
        node.sock.reset()  # what the TX does after a lost reply, or when its network path changed
        second = node.run(1, ResultsLog(tmp_path / "b", {}), first_seq=1)
    finally:
        node.sock.close()
    assert [r.status for r in first + second] == ["ok", "ok"], [r.error for r in first + second]
    assert first[0].rx_pid == second[0].rx_pid  # W = 2: the worker that holds the session


def test_sessions_per_key_are_bounded(keys, digits_artifacts, tmp_path):
    """A key may hold several sessions at once, at most RxNode.max_sessions_per_owner (64): then ERROR."""
    d, rx_args = keys
    proc, address = start_rx(digits_artifacts, *rx_args, log_file=tmp_path / "rx.log")
    codec, _ = load_codec(digits_artifacts)
    sock = _curve_sock(address, d, "tx-b")
    try:
        for i in range(64):
            assert _ask(sock, _hello(codec, 8000 + i), ("HELLO", "ERROR"))[1].TYPE == "HELLO", i
        err = _ask(sock, _hello(codec, 9999), ("HELLO", "ERROR"))[1]
        assert err.TYPE == "ERROR" and err.code == "too_many_sessions" and err.seq == -1, err
        assert _ask(sock, _hello(codec, 8000), ("HELLO", "ERROR"))[1].TYPE == "HELLO"  # its own: still fine
        other = _curve_sock(address, d, "tx-a")  # another key is not affected
        try:
            assert _ask(other, _hello(codec, 9999), ("HELLO", "ERROR"))[1].TYPE == "HELLO"
        finally:
            other.close()
    finally:
        sock.close()
        stop(proc)


def test_a_full_rx_evicts_the_flooders_sessions_never_another_owners(digits_artifacts, digits, tmp_path):
    """RxNode.max_sessions (1024) reached by 16 owners of 64 sessions each: every further session evicts one
    of the owner holding the most (its own first), never the one session of the owner that adapted a round
    before the flood. Before, the idle-longest session went: the victim's next round got ``no_session``."""
    proc, address = start_rx(digits_artifacts, log_file=tmp_path / "rx.log")
    codec, _ = load_codec(digits_artifacts)
    victim, flood = TxSocket(address), TxSocket(address)
    try:
        assert _ask(victim, _hello(codec, 1, credential=b"v" * 16), ("HELLO", "ERROR"))[1].TYPE == "HELLO"
        first = _ask(victim, encode(payload(codec, digits, seq=0, session_id=1)), ("RESULT", "ERROR"))[1]
        assert first.TYPE == "RESULT", first
        refused = []
        for owner in range(17):  # 17 x 64 = 1088 sessions for 1023 free places
            cred = bytes([65 + owner]) * 16
            for i in range(64):
                got = _ask(flood, _hello(codec, 10_000 + 64 * owner + i, credential=cred), ("HELLO", "ERROR"))[1]
                if got.TYPE != "HELLO":
                    refused.append(got.code)
        assert refused == [], refused[:3]
        again = _ask(victim, encode(payload(codec, digits, seq=1, session_id=1)), ("RESULT", "ERROR"))[1]
        assert again.TYPE == "RESULT", again
    finally:
        victim.close()
        flood.close()
        stop(proc)
