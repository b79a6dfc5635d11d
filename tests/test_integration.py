"""TX and RX over real ZeroMQ sockets, the RX in its own OS process."""

import os
import threading
import re
import time

import pytest
import zmq

from common.modes.pca_lora.artifacts import load_codec
from common.wire.protocol import Channel, Error, Hello, decode, encode
from common.results.log import LATENCY_CUMULATIVE, ResultsLog, load_results
from common.net.transport import RxSocket, TxSocket
from tests.helpers import start_rx, stop, tx_node
from tx_node.daemon import HandshakeFailed

ROUND_KEYS = {"round", "status", "error", "modulation", "rate_bps", "deadline_s", "b_max_bytes", "alpha",
              "n_test", "n_train_max", "n_train", "bytes_per_value", "header_bytes", "vector_header_bytes",
              "payload_bytes", "acc_pretrained", "acc_adapted", "latency_ms", "tx_pid", "rx_pid"}


@pytest.fixture
def rx_process(digits_artifacts):
    proc, address = start_rx(digits_artifacts, "--trace", "demo", "--trace-rounds", "4")
    yield proc, address
    stop(proc)


def run_tx(artifacts, digits, address, out, rounds=4, **cfg):
    codec, _ = load_codec(artifacts)
    # fill_payload: the paper's rule (every payload full of training vectors), so eq. 2 is checked
    cfg = {"n_test": 50, "n_min_train": 100, "deadline_s": 0.002, "hello_timeout_s": 1.0, "fill_payload": True,
           **cfg}
    node = tx_node(codec, digits, TxSocket(address), **cfg)
    results = ResultsLog(out, {"test": True})
    return node.run(rounds, results), node


def test_rounds_over_real_sockets(rx_process, digits_artifacts, digits, tmp_path):
    proc, address = rx_process
    records, node = run_tx(digits_artifacts, digits, address, tmp_path)
    assert [r.status for r in records] == ["ok"] * 4, [r.error for r in records]
    doc = load_results(tmp_path)
    assert doc["config"] == {"test": True} and len(doc["rounds"]) == 4
    for r in doc["rounds"]:
        assert ROUND_KEYS <= set(r)
        assert r["payload_bytes"] <= r["b_max_bytes"]
        assert r["n_train"] == r["n_train_max"]
        assert r["rx_pid"] == proc.pid and r["tx_pid"] == os.getpid()
        assert {"encode", "pack", "transfer", "reconstruct", "finetune", "classify", *LATENCY_CUMULATIVE} <= set(r["latency_ms"])
        lat = r["latency_ms"]
        assert lat["communication"] <= lat["fine_tuning"] <= lat["classification"]
        # the cross-clock total ends before the RESULT is back on the TX clock (which starts at
        # encode, while rtt starts at send), up to the clock-offset estimate's error
        assert lat["classification"] <= lat["encode"] + lat["pack"] + lat["rtt"] + 5
    # the deep-fade round of the demo trace carries less than the 256-QAM rounds
    assert doc["rounds"][2]["b_max_bytes"] < doc["rounds"][0]["b_max_bytes"]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 4


def test_garbage_over_the_wire_then_valid_rounds(rx_process, digits_artifacts, digits, tmp_path):
    _, address = rx_process
    sock = TxSocket(address)
    try:
        for junk in (b"", b"\xff" * 100, encode(Channel(1, 0, 0.0, 0, "qam64", "QPSK", 1e6))):
            sock.send(junk)
            reply = decode(sock.recv(60_000))
            assert isinstance(reply, Error) and reply.message
    finally:
        sock.close()
    records, _ = run_tx(digits_artifacts, digits, address, tmp_path, rounds=1)
    assert records[0].status == "ok"


def test_unreachable_rx_fails_fast(digits_artifacts, digits, tmp_path):
    from tests.helpers import free_port

    with pytest.raises(HandshakeFailed, match="after 2 attempts") as info:
        run_tx(digits_artifacts, digits, f"tcp://127.0.0.1:{free_port()}", tmp_path,
               hello_attempts=2, hello_timeout_s=0.2, connect_timeout_s=300)
    assert int(re.search(r"attempts in (\d+) s", str(info.value)).group(1)) < 30  # the TX's own clock: not 300 s


def silent_rx(address, codec, stop_event):
    """A peer that opens sessions and sends channel feedback but never answers a PAYLOAD."""
    sock = RxSocket(address, 1 << 24, zmq.Context.instance())
    while not stop_event.is_set():
        got = sock.recv(50)
        if got is None:
            continue
        peer, (frame,) = got
        msg = decode(frame)
        if isinstance(msg, Hello):
            sock.send(peer, encode(Hello("rx", msg.session_id, msg.mode, codec.fingerprint, msg.params,
                                         msg.next_seq, 1 << 24, 1, msg.t_origin_ns, time.time_ns(),
                                         time.time_ns())))
            sock.send(peer, encode(Channel(msg.session_id, msg.next_seq, 20.0, 27, "qam256", "256QAM", 2e8)))
    sock.close()


def test_lost_result_is_recorded_as_failed(digits_artifacts, digits, tmp_path):
    from tests.helpers import free_port

    codec, _ = load_codec(digits_artifacts)
    address = f"tcp://127.0.0.1:{free_port()}"
    stop_event = threading.Event()
    thread = threading.Thread(target=silent_rx, args=(address, codec, stop_event), daemon=True)
    thread.start()
    try:
        records, _ = run_tx(digits_artifacts, digits, address, tmp_path, rounds=2, result_timeout_s=0.3)
    finally:
        stop_event.set()
        thread.join()
    assert [r.status for r in records] == ["failed", "failed"]
    assert "no RESULT for round 0 within 0.3 s" in records[0].error
    assert len(load_results(tmp_path)["rounds"]) == 2


def test_rounds_in_parts_over_real_sockets(rx_process, digits_artifacts, digits, tmp_path):
    """Training parts then PAYLOAD over real sockets: every round recorded ok with all frames inside the
    budget; one part adapts exactly as one PAYLOAD does (same vectors, same steps, same accuracy)."""
    _, address = rx_process
    cfg = {"deadline_s": 0.02, "max_train": 120}  # the cap makes every split carry the same vectors
    runs = {}
    for k in (0, 1, 3):
        runs[k], node = run_tx(digits_artifacts, digits, address, tmp_path / str(k), rounds=3, train_parts=k, **cfg)
        node.sock.close()  # before the next TX opens its socket (and its monitor endpoint)
    assert all(r.status == "ok" for rs in runs.values() for r in rs), {k: [(r.status, r.error) for r in rs] for k, rs in runs.items()}
    for single, one, three in zip(runs[0], runs[1], runs[3]):
        assert (single.fields["parts"], one.fields["parts"], three.fields["parts"]) == (1, 2, 4)
        assert single.fields["n_train"] == one.fields["n_train"] == three.fields["n_train"] == 120
        assert one.payload_bytes == single.payload_bytes + 209 and three.payload_bytes == single.payload_bytes + 3 * 209
        assert three.payload_bytes <= three.fields["b_max_bytes"]
        assert one.fields["acc_adapted"] == single.fields["acc_adapted"]
        lat = three.latency_ms
        assert lat["communication"] <= lat["fine_tuning"] <= lat["classification"]
