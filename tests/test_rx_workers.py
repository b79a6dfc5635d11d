"""The multi-process RX (``semalign rx --workers W``) over real processes: pinning, replay, worker faults.

No assertion here depends on CPU speed: waits are bounded and generous.
"""

import os
import signal
import threading
import time

import pytest
import zmq

from common.modes.pca_lora.artifacts import load_codec
from common.net.transport import TxSocket
from common.results.log import ResultsLog, read_jsonl
from common.wire.protocol import Channel, Hello, Result, decode, encode
from tests.helpers import hello, payload, start_rx, stop, tx_node

CONFIG = dict(n_test=20, n_min_train=40, max_train=60, deadline_s=0.002, hello_timeout_s=1.0, clock_samples=1,
              backoff_s=0.05, backoff_max_s=0.5, result_timeout_s=20.0, hello_attempts=120, round_attempts=4,
              connect_timeout_s=120.0)


def _campaigns(digits_artifacts, digits, address, tmp_path, n_tx, rounds, on_round=None):
    """``n_tx`` TX nodes (threads, one socket each), each running ``rounds`` rounds; returns their rows."""
    codec, _ = load_codec(digits_artifacts)
    outs, nodes, threads = [], [], []
    for i in range(n_tx):
        out = tmp_path / f"tx{i}"
        out.mkdir()
        node = tx_node(codec, digits, TxSocket(address), session_id=100 + i, **CONFIG)
        nodes.append(node)
        outs.append(out)
        cb = (lambda rec, i=i: on_round(i, rec)) if on_round else None
        threads.append(threading.Thread(target=node.run, args=(rounds, ResultsLog(out, {})),
                                        kwargs={"on_round": cb}, daemon=True))
    try:
        for t in threads:
            t.start()
            time.sleep(0.3)  # the first connection is pinned before the next one arrives
        for t in threads:
            t.join(300)
            assert not t.is_alive(), "a TX campaign did not finish within 300 s"
    finally:
        for node in nodes:
            node.sock.close()
    return [read_jsonl(out / "results.jsonl") for out in outs]


def _recv(sock: zmq.Socket, timeout_ms: int = 60000):
    assert sock.poll(timeout_ms, zmq.POLLIN), "no reply from the RX"
    frame = sock.recv()
    return frame, decode(frame)


def test_two_txs_are_pinned_each_to_one_worker(digits_artifacts, digits, tmp_path):
    log = tmp_path / "rx.log"
    proc, address = start_rx(digits_artifacts, "--workers", "2", "--trace", "demo", "--trace-rounds", "4",
                             log_file=log)
    try:
        per_tx = _campaigns(digits_artifacts, digits, address, tmp_path, 2, 6)
    finally:
        out = stop(proc) or ""
    text = log.read_text()
    for rows in per_tx:
        assert [r["round"] for r in rows] == list(range(6))
        assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
        assert len({r["rx_pid"] for r in rows}) == 1  # every round of a TX served by one worker
    pids = [rows[0]["rx_pid"] for rows in per_tx]
    assert len(set(pids)) == 2 and proc.pid not in pids  # the two TXs on the two workers, not the front end
    assert "with 2 workers" in text and "RX exiting: 12 rounds ok" in text, text[-3000:] + out


def test_repeated_request_gets_the_recorded_reply_through_the_front_end(digits_artifacts, digits, tmp_path):
    proc, address = start_rx(digits_artifacts, "--workers", "2", log_file=tmp_path / "rx.log")
    codec, _ = load_codec(digits_artifacts)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send(hello(codec, session_id=7))  # waits in the socket until the workers are ready
        assert isinstance(_recv(sock, 120000)[1], Hello)
        assert isinstance(_recv(sock)[1], Channel)
        frame = encode(payload(codec, digits, seq=0, session_id=7))
        sock.send(frame)
        first, msg = _recv(sock)
        assert isinstance(msg, Result), msg
        assert isinstance(_recv(sock)[1], Channel)
        sock.send(frame)  # a re-sent request (its reply was "lost")
        again, _ = _recv(sock)
        assert again == first  # answered from the worker's record, not processed again
    finally:
        sock.close()
        text = stop(proc) or ""
    assert "repeated: answering from the record" in (tmp_path / "rx.log").read_text() + text


def _kill_mid_campaign(digits_artifacts, digits, tmp_path, sig, rounds=10, at=3):
    """Two TXs on W=2; after round ``at`` of TX 0, its worker gets ``sig``. Returns (rows per TX, log, victim)."""
    log = tmp_path / "rx.log"
    proc, address = start_rx(digits_artifacts, "--workers", "2", "--trace", "demo", "--trace-rounds", "4",
                             log_file=log)
    victim = []

    def on_round(i, rec):
        if i == 0 and rec.round == at and not victim:
            victim.append(rec.rx_pid)
            time.sleep(0.01)  # lands in the middle of the next round
            os.kill(rec.rx_pid, sig)

    try:
        per_tx = _campaigns(digits_artifacts, digits, address, tmp_path, 2, rounds, on_round)
        deadline = time.monotonic() + 120
        while log.read_text().count(" ready (pid ") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # the replacement worker announces READY
    finally:
        if victim and sig == signal.SIGSTOP:
            try:
                os.kill(victim[0], signal.SIGCONT)  # if the front end did not kill it, do not leave it stopped
            except ProcessLookupError:
                pass
        stop(proc)
    return per_tx, log.read_text(), victim[0]


def _every_round_once(per_tx, rounds):
    for rows in per_tx:
        assert [r["round"] for r in rows] == list(range(rounds))  # none lost, none twice
        bad = [r for r in rows if r["status"] != "ok"]
        assert all(r["error"] for r in bad)  # a failed round says why


def test_worker_killed_mid_campaign_is_restarted_and_every_round_recorded_once(digits_artifacts, digits, tmp_path):
    per_tx, text, victim = _kill_mid_campaign(digits_artifacts, digits, tmp_path, signal.SIGKILL)
    _every_round_once(per_tx, 10)
    assert f"(pid {victim}) exited with status -9" in text
    assert "generation 1)" in text and text.count(" ready (pid ") == 3
    rows = per_tx[0]
    assert victim not in {r["rx_pid"] for r in rows[4:]}  # TX 0 went on with another worker
    assert all(r["status"] == "ok" for r in rows[4:])  # re-opened on its retry
    assert any("no session" in (r["error"] or "") or r["attempts"] > 1 for r in rows[4:])


def test_hung_worker_is_detected_and_replaced(digits_artifacts, digits, tmp_path):
    per_tx, text, victim = _kill_mid_campaign(digits_artifacts, digits, tmp_path, signal.SIGSTOP)
    _every_round_once(per_tx, 10)
    assert f"(pid {victim}) is hung: no heartbeat" in text
    assert "generation 1)" in text and text.count(" ready (pid ") == 3
    with pytest.raises(ProcessLookupError):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # killed by the front end (or exited with it)
            os.kill(victim, 0)
            time.sleep(0.2)
        pytest.fail(f"the hung worker {victim} is still there")
    assert all(r["status"] == "ok" for r in per_tx[0][4:])


def test_workers_option_is_checked(digits_artifacts, tmp_path):
    proc, _ = start_rx(digits_artifacts, "--workers", "0")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--workers 0" in out, out


# ------------------------------------------------------------------ slf kept alignments shared by workers


@pytest.fixture(scope="module")
def slf_artifacts(tmp_path_factory, digits):
    from common.modes.slf.configs import TransceiverConfig
    from common.modes.slf.pretrain import pretrain_and_save
    from common.modes.slf.transceiver import TransceiverShape

    shape = TransceiverShape(image_size=8, widths=(8, 16), code_dim=8, n_codewords=16, head_channels=(8, 8),
                             head_hidden=32)
    common = {"dataset": "digits", "epochs": 10, "head_epochs": 10, "batch_size": 64, "lr": 1e-2, "shape": shape,
              "max_pool": 700, "n_shards": 2}
    root = tmp_path_factory.mktemp("slf_workers")
    for cfg in (TransceiverConfig("rx", eps=1e-3, seed=1, shard=0, **common),
                TransceiverConfig("tx", eps=0.05, seed=2, shard=1, **common)):
        pretrain_and_save(cfg, digits, root / cfg.name)
    return root


def test_slf_kept_alignment_resumes_on_another_worker(slf_artifacts, tmp_path):
    """Two RX nodes sharing a directory stand in for two workers: a TX aligns on one, returns on the other."""
    from common.link.sidelink import create_sidelink
    from common.modes.base import get_mode
    from rx_node.daemon import RxNode
    from tests.helpers import ServedRx
    from tx_node.daemon import TxConfig, TxNode

    shared = tmp_path / "shared"
    shared.mkdir()
    served = []
    for _ in range(2):
        half = get_mode("slf").build_rx({"artifacts": slf_artifacts / "rx", "eps": 0.01})
        half.share_state(shared)
        served.append(ServedRx(RxNode({"slf": half}, create_sidelink("loopback", trace="demo"))))

    def run(address, out):
        half = get_mode("slf").build_tx({"artifacts": slf_artifacts / "tx", "finetune_epochs": 2,
                                         "finetune_lr": 1e-2, "n_images": 100, "n_frozen": 2,
                                         "alignment_cache": str(tmp_path / "cache")})
        node = TxNode(half, TxSocket(address), TxConfig(hello_timeout_s=1.0, hello_attempts=10, clock_samples=1,
                                                         result_timeout_s=30.0, round_attempts=1))
        try:
            return node.run(3, ResultsLog(out, {"mode": "slf", **half.config_record()}))
        finally:
            node.sock.close()

    try:
        first = run(served[0].address, tmp_path / "a1")
        assert [r.status for r in first] == ["ok"] * 3 and first[1].fields["kept"], [r.error for r in first]
        assert len(list((shared / "slf-kept").glob("*.pt"))) == 1
        again = run(served[1].address, tmp_path / "a2")  # the other "worker" never saw this TX
        assert [r.status for r in again] == ["ok"] * 3, [r.error for r in again]
        assert again[1].fields["resumed"] and again[1].fields["download_frame_bytes"] == 0
        assert again[2].fields["decoder"] == "aligned"
        assert again[2].fields["accuracy"] == first[2].fields["accuracy"]
    finally:
        for s in served:
            s.stop()


def test_curve_front_end_admits_listed_keys_and_refuses_others(digits_artifacts, digits, tmp_path):
    """CURVE and the allow-list stay in the front end: an admitted TX's rounds run on a worker, with its
    key passed along (sessions bound to it); an unknown key is refused and logged."""
    from common.net.security import TxSecurity, generate_keypair, load_public, load_secret
    from semalign.campaigns.processes import throwaway_keys

    rx_keys, tx_keys = throwaway_keys(tmp_path / "keys", "tx-lab")
    rx_args = [a for k, v in rx_keys.items() for a in ("--" + k.replace("_", "-"), str(v))]
    log = tmp_path / "rx.log"
    proc, address = start_rx(digits_artifacts, "--workers", "2", *rx_args, log_file=log)
    codec, _ = load_codec(digits_artifacts)
    good = TxSecurity(load_secret(tx_keys["curve_secret"]), load_public(tx_keys["curve_server_public"]))
    generate_keypair(tmp_path / "stranger", "tx-stranger")
    bad = TxSecurity(load_secret(tmp_path / "stranger" / "tx-stranger.key_secret"),
                     load_public(tx_keys["curve_server_public"]))
    try:
        node = tx_node(codec, digits, TxSocket(address, security=good), **CONFIG)
        try:
            records = node.run(2, ResultsLog(tmp_path / "good", {}))
        finally:
            node.sock.close()
        assert [r.status for r in records] == ["ok", "ok"], [r.error for r in records]
        assert records[0].rx_pid != proc.pid  # served by a worker
        stranger = tx_node(codec, digits, TxSocket(address, security=bad),
                           **{**CONFIG, "hello_attempts": 2, "connect_timeout_s": 3.0})
        try:
            with pytest.raises(Exception):
                stranger.run(1, ResultsLog(tmp_path / "bad", {}))
        finally:
            stranger.sock.close()
    finally:
        stop(proc)
    assert "REFUSED" in log.read_text()


# ------------------------------------------------------------------ the pinning rule, without processes


def test_pinning_rule_sticky_least_pinned_and_one_owner_modes_on_worker_0(digits_artifacts):
    """Sticky pins to the worker with the fewest; a HELLO of a one-owner mode (fed-lora) goes to worker 0."""
    from common.modes.base import get_mode
    from rx_node.worker_pool import WorkerSlot
    from rx_node.workers import FrontEnd

    assert get_mode("fed-lora").rx_one_owner and not get_mode("pca-lora").rx_one_owner
    assert get_mode("pca-lora").rx_one_writer_options == ("adapter_bank",)
    front = FrontEnd({}, {}, None, 2, modes=["pca-lora", "fed-lora"], one_owner={"fed-lora"})
    try:
        assert oct(front.dir.stat().st_mode & 0o777) == "0o700"
        front._workers = [WorkerSlot(i, 0, None, 0.0, front.backend, ready=True) for i in range(2)]
        codec, _ = load_codec(digits_artifacts)
        data = [b"\x80"]  # any frame that is not a HELLO (an empty msgpack map)
        a = front.routes.pick(front._workers, b"peer-a", data)
        b = front.routes.pick(front._workers, b"peer-b", data)
        assert {a.index, b.index} == {0, 1}  # the second connection goes to the worker with fewer pins
        assert all(front.routes.pick(front._workers, b"peer-a", data) is a for _ in range(5))  # sticky
        fed = hello(codec, session_id=9, mode="fed-lora")
        for peer in (b"peer-c", b"peer-d", b"peer-b"):  # new connections and one pinned to worker 1
            assert front.routes.pick(front._workers, peer, [fed]).index == 0
        assert front.routes.pick(front._workers, b"peer-b", data).index == 0  # re-pinned for good
        front._workers[0].ready = False  # worker 0 restarting: a fed-lora HELLO waits (dropped, re-sent)
        assert front.routes.pick(front._workers, b"peer-e", [fed]) is None
        assert front.routes.pick(front._workers, b"peer-f", data).index == 1
    finally:
        front.close()
    assert not front.dir.exists()


# ------------------------------------------------------------------ a worker on another host


def _wait_for(path, needle: str, timeout_s: float = 180.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in the log within {timeout_s:.0f} s:\n" + text[-3000:])


def _remote_worker(address: str, key_dir, name: str, log, *extra: str):
    import subprocess
    import sys

    from tests.helpers import ROOT

    argv = [sys.executable, "-m", "semalign", "rx-worker", "--connect", address,
            "--curve-secret", str(key_dir / f"{name}.key_secret"), "--curve-server-public", str(key_dir / "rx.key"),
            *extra]
    return subprocess.Popen(argv, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def test_remote_worker_joins_over_curve_serves_sessions_and_its_loss_is_survived(digits_artifacts, digits,
                                                                                 tmp_path):
    """`semalign rx-worker --connect` (a worker on another host; here another process over loopback TCP)
    joins a CURVE front end whose --worker-allow lists its key, serves the next TX key's sessions, and a
    worker key not listed is refused. kill -9 of the remote worker: its slot is closed, the TX re-opens its
    session on the local worker, and every round is recorded once, ok."""
    from common.files import free_port
    from common.net.security import TxSecurity, generate_keypair, load_public, load_secret
    from semalign.campaigns.processes import throwaway_keys

    keys = tmp_path / "keys"
    rx_keys, tx_a = throwaway_keys(keys, "tx-a")
    _, tx_b = throwaway_keys(keys, "tx-b")
    (keys / "workers").mkdir()
    public, _ = generate_keypair(keys, "worker-1")
    os.replace(public, keys / "workers" / public.name)
    generate_keypair(keys, "worker-stranger")
    rx_args = [a for k, v in rx_keys.items() for a in ("--" + k.replace("_", "-"), str(v))]
    worker_address = f"tcp://127.0.0.1:{free_port()}"
    log, wlog, slog = tmp_path / "rx.log", tmp_path / "worker.log", tmp_path / "stranger.log"
    proc, address = start_rx(digits_artifacts, "--workers", "1", *rx_args, "--worker-bind", worker_address,
                             "--worker-allow", str(keys / "workers"), "--trace", "demo", "--trace-rounds", "4",
                             log_file=log)
    remote = _remote_worker(worker_address, keys, "worker-1", wlog)
    stranger = _remote_worker(worker_address, keys, "worker-stranger", slog, "--join-timeout-s", "4")
    codec, _ = load_codec(digits_artifacts)

    def campaign(tx, out, rounds, on_round=None):
        sec = TxSecurity(load_secret(tx["curve_secret"]), load_public(tx["curve_server_public"]))
        node = tx_node(codec, digits, TxSocket(address, security=sec), **CONFIG)
        try:
            node.run(rounds, ResultsLog(out, {}), on_round=on_round)
        finally:
            node.sock.close()
        return read_jsonl(out / "results.jsonl")

    try:
        _wait_for(log, "RX worker 1 ready")
        assert stranger.wait(60) == 1  # never admitted: it gives up after --join-timeout-s
        first = campaign(tx_a, tmp_path / "a", 2)  # key a: pinned to the least loaded, local worker 0
        killed = []

        def kill_remote(rec):
            if rec.round == 1 and not killed:
                remote.kill()
                killed.append(rec.round)

        second = campaign(tx_b, tmp_path / "b", 5, kill_remote)  # key b: the remote worker, until killed
    finally:
        remote.kill()
        out = stop(proc) or ""
    text = log.read_text()
    assert [r["status"] for r in first] == ["ok"] * 2 and [r["status"] for r in second] == ["ok"] * 5, \
        ([r["error"] for r in first + second], text[-3000:])
    assert [r["round"] for r in second] == list(range(5))  # every round recorded once
    assert second[0]["rx_pid"] == remote.pid != first[0]["rx_pid"]  # the remote worker served key b
    assert second[-1]["rx_pid"] == first[0]["rx_pid"]  # after its loss: the local worker
    assert "RX worker 127.0.0.1 REFUSED" in text and "RX worker 1 (pid" in text and "closing its slot" in text, \
        text[-3000:] + out


# ------------------------------------------------------------------ several modes on one multi-process RX


def test_mixed_modes_fed_lora_on_worker_0_pca_lora_beside_it(digits_artifacts, digits, tmp_path):
    """One RX with 2 workers serving pca-lora and fed-lora at once: the federation's devices all land on
    worker 0 (one base station), a pca-lora TX that arrives after them on worker 1; every round of both
    modes ends ok."""
    from tests.test_fed_lora_mode import run_devices, tx_half

    log = tmp_path / "rx.log"
    proc, address = start_rx(digits_artifacts, "--workers", "2", "--mode", "pca-lora,fed-lora", "--fed-devices", "2",
                             "--fed-policy", "fixed", "--trace", "demo", "--trace-rounds", "4", log_file=log)
    fed: dict = {}
    devices = threading.Thread(target=lambda: fed.update(
        run_devices(address, [tx_half(k, fed_devices=2) for k in range(2)], 2, tmp_path / "fed")))
    try:
        devices.start()
        _wait_for(log, "device 1 joined")
        pca = _campaigns(digits_artifacts, digits, address, tmp_path, 1, 4)[0]
        devices.join(300)
        assert not devices.is_alive(), "the fed-lora devices did not finish within 300 s"
    finally:
        out = stop(proc) or ""
    text = log.read_text()
    fed_rows = [r for k in sorted(fed) for r in fed[k]]
    assert len(fed_rows) == 4 and all(r.status == "ok" for r in fed_rows), [(r.status, r.error) for r in fed_rows]
    assert [r["status"] for r in pca] == ["ok"] * 4, [r["error"] for r in pca]
    fed_pids = {r.rx_pid for r in fed_rows}
    assert len(fed_pids) == 1 and pca[0]["rx_pid"] not in fed_pids | {proc.pid}, (fed_pids, pca[0]["rx_pid"])
    assert "rx-w0 INFO round 1 formed" in text, text[-3000:] + out


def test_request_ids_are_read_from_the_head_of_a_frame(digits_artifacts, digits):
    """The front end keeps a request's (type, session, seq), read from the head of its frame, instead of the
    frame itself; a frame whose head does not hold them (or is not msgpack) gives None."""
    import msgpack

    from common.wire.protocol import IDS_PREFIX_BYTES, request_ids

    codec, _ = load_codec(digits_artifacts)
    frame = encode(payload(codec, digits, seq=7, session_id=42, n_train=3000))
    assert len(frame) > 4 * IDS_PREFIX_BYTES and request_ids(frame) == ("PAYLOAD", 42, 7)
    assert request_ids(hello(codec, session_id=9)) is None  # no seq: a refused HELLO is dropped, the TX re-sends it
    late = msgpack.packb({"blob": b"x" * (2 * IDS_PREFIX_BYTES), "type": "PAYLOAD", "session_id": 1, "seq": 2})
    assert request_ids(late) is None  # the ids come after the head
    assert request_ids(b"\xc1\x00") is None and request_ids(msgpack.packb([1, 2])) is None
    assert request_ids(msgpack.packb({"type": "X", "session_id": 1, "seq": 2**63})) is None
