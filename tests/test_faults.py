"""Faults, nothing lost: repeated payloads answered from the record, lost replies re-sent,
payloads lost on the link recorded with their reason, the RX killed and restarted mid-campaign,
the TX killed and the campaign resumed."""

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from common.modes.pca_lora.artifacts import load_codec
from common.wire.protocol import Result, decode, encode
from common.modes.pca_lora.messages import Payload
from common.results.log import ResultsLog, load_results, read_jsonl
from common.link.sidelink import PayloadLost
from common.net.transport import RxSocket, TxSocket
from rx_node.replay import ReplayCache
from tests.faults_helpers import tx_cmd, wait_rows
from tests.helpers import ROOT, ServedRx, free_port, hello, payload, rx_node, start_rx, stop
from tests.helpers import tx_node

CONFIG = dict(n_test=20, n_min_train=40, max_train=60, deadline_s=0.002, hello_timeout_s=0.5, clock_samples=1,
              backoff_s=0.05, backoff_max_s=0.5)


# ---------------------------------------------------------------- the RX's record


def test_repeated_payload_is_answered_from_the_record(digits_artifacts, digits):
    node = rx_node(digits_artifacts)
    calls = []
    adapt = node.halves["pca-lora"].strategy.adapt
    node.halves["pca-lora"].strategy.adapt = lambda *a, **k: calls.append(1) or adapt(*a, **k)
    node.handle(b"p1", [hello(node.halves["pca-lora"].codec)])
    frame = encode(payload(node.halves["pca-lora"].codec, digits, seq=4))
    first = node.handle(b"p1", [frame])
    # the TX rebuilt its socket (new peer identity) and re-opened the same session
    node.handle(b"p2", [hello(node.halves["pca-lora"].codec, next_seq=4)])
    again = node.handle(b"p2", [frame])
    assert isinstance(decode(first[0]), Result) and again[0] == first[0]
    assert decode(again[1]).seq == 5  # the next round's CHANNEL follows as usual
    assert len(calls) == 1 and node.stats.ok == 1 and node.stats.replayed == 1
    assert list(node.sessions) == [5] and node.sessions[5].peers == [b"p1", b"p2"]  # one session, both connections


def test_replay_cache_is_bounded():
    cache = ReplayCache(per_session=3, max_sessions=2)
    for sid in range(4):
        for seq in range(10):
            cache.put(("k", sid), seq, b"x", 1)
    assert len(cache) == 6 and cache.get(("k", 0), 9) is None and cache.get(("k", 3), 9) == b"x"
    assert cache.get(("k", 3), 6) is None and cache.nbytes == 6


def test_replay_bytes_per_owner_one_keys_flood_evicts_only_its_own():
    """One key's large replies (slf's decoder downloads) push out that key's oldest, never another key's;
    the total budget bounds all; a reply over the owner's budget is not kept."""
    cache = ReplayCache(per_session=64, max_sessions=256, max_bytes=1000, max_bytes_per_owner=300)
    cache.put(("victim", 1), 0, b"v", 100)
    for sid in range(10):  # the attacker: 10 sessions x 5 replies of 50 bytes = 2500 bytes offered
        for seq in range(5):
            cache.put(("attacker", sid), seq, b"a", 50)
    assert cache.owner_bytes("attacker") == 300 and cache.get(("victim", 1), 0) == b"v"
    assert cache.get(("attacker", 9), 4) == b"a" and cache.get(("attacker", 0), 0) is None  # its oldest went
    cache.put(("big", 1), 0, b"b", 301)
    assert cache.get(("big", 1), 0) is None and cache.owner_bytes("big") == 0
    for k in range(5):  # four owners of 250 bytes: the total budget (1000) drops the oldest of anyone
        for seq in range(5):
            cache.put((f"o{k}", 1), seq, b"o", 50)
    assert cache.nbytes <= 1000 and cache.get(("o4", 1), 4) == b"o"
    assert cache.nbytes == sum(cache.owner_bytes(o) for o in ("victim", "attacker", "o0", "o1", "o2", "o3", "o4"))


# ---------------------------------------------------------------- in-process RX with a faulty path


class LossyLink:
    """Wraps a sidelink: loses the payloads of the given rounds (PayloadLost)."""

    def __init__(self, link, lose: set[int]):
        self.link, self.lose = link, lose

    def __getattr__(self, name):
        return getattr(self.link, name)

    def deliver(self, nbytes, state, received_ns, wait=True):
        report = self.link.deliver(nbytes, state, received_ns, wait)
        if self.lose and self._seq in self.lose:
            raise PayloadLost(f"payload of {nbytes} B lost after 4 HARQ transmissions (emulated)")
        return report


class DroppingSocket(RxSocket):
    """Drops the first incoming PAYLOAD of ``drop_in`` rounds and the first reply of ``drop_out`` rounds."""

    def __init__(self, *a, drop_in=(), drop_out=(), **k):
        super().__init__(*a, **k)
        self.drop_in, self.drop_out = set(drop_in), set(drop_out)

    def recv(self, timeout_ms):
        got = super().recv(timeout_ms)
        if got:
            try:
                msg = decode(got[1][0])
            except Exception:
                return got
            if isinstance(msg, Payload) and msg.seq in self.drop_in:
                self.drop_in.discard(msg.seq)
                return None
        return got

    def send(self, peer, frame, key=None):
        msg = decode(frame)
        if isinstance(msg, Result) and msg.seq in self.drop_out:
            self.drop_out.discard(msg.seq)
            return
        super().send(peer, frame, key)


@pytest.fixture
def inproc_rx(digits_artifacts):
    started = []

    def start(sock_cls=RxSocket, lose=(), **sock_kw):
        node = rx_node(digits_artifacts)
        if lose:
            node.link = LossyLink(node.link, set(lose))
            for kind, handler in list(node._handlers["pca-lora"].items()):  # PAYLOAD and PAYLOAD_TRAIN
                node._handlers["pca-lora"][kind] = \
                    lambda p, ctx, h=handler: (setattr(node.link, "_seq", p.seq), h(p, ctx))[1]
        started.append(ServedRx(node, 1 << 24, sock_cls, **sock_kw))
        return node, started[-1].address

    yield start
    for served in started:
        served.stop()


def run_tx(artifacts, digits, address, out, rounds, **cfg):
    codec, _ = load_codec(artifacts)
    node = tx_node(codec, digits, TxSocket(address), **{**CONFIG, **cfg})
    try:
        return node.run(rounds, ResultsLog(out, {}))
    finally:
        node.sock.close()


def test_payload_lost_on_the_link_is_recorded_with_its_reason(inproc_rx, digits_artifacts, digits, tmp_path):
    node, address = inproc_rx(lose={1})
    records = run_tx(digits_artifacts, digits, address, tmp_path, 3)
    assert [r.status for r in records] == ["ok", "failed", "ok"]
    assert records[1].error.startswith("RX error lost: payload of") and "HARQ" in records[1].error
    assert node.stats.failed == 1 and node.stats.errors_by_code == {"lost": 1}


def test_dropped_payload_times_out_and_is_re_sent(inproc_rx, digits_artifacts, digits, tmp_path):
    node, address = inproc_rx(DroppingSocket, drop_in={1})
    records = run_tx(digits_artifacts, digits, address, tmp_path, 3, result_timeout_s=0.5)
    assert [r.status for r in records] == ["ok"] * 3, [r.error for r in records]
    assert [r.attempts for r in records] == [1, 2, 1]
    assert node.stats.ok == 3 and node.stats.replayed == 0


def test_lost_reply_is_re_sent_and_answered_from_the_record(inproc_rx, digits_artifacts, digits, tmp_path):
    node, address = inproc_rx(DroppingSocket, drop_out={2})
    records = run_tx(digits_artifacts, digits, address, tmp_path, 4, result_timeout_s=0.5)
    assert [r.status for r in records] == ["ok"] * 4, [r.error for r in records]
    assert records[2].attempts == 2
    # round 2 fine-tuned once: its re-sent frames (training parts and PAYLOAD) were answered from the record
    assert node.stats.ok == 4 and node.stats.replayed == records[2].fields["parts"]


def test_rx_that_never_answers_ends_in_failed_rounds_with_reasons(inproc_rx, digits_artifacts, digits, tmp_path):
    node, address = inproc_rx(DroppingSocket, drop_out=set())
    node.handle_timed = lambda peer, frames, t=None, owner=None, n=None: \
        ([], 0) if isinstance(decode(frames[0]), Payload) else type(node).handle_timed(node, peer, frames, t, owner, n)
    records = run_tx(digits_artifacts, digits, address, tmp_path, 2, result_timeout_s=0.2, round_attempts=2)
    assert [r.status for r in records] == ["failed", "failed"]
    assert "no RESULT for round 0 within 0.2 s" in records[0].error and records[0].attempts == 2
    assert len(load_results(tmp_path)["rounds"]) == 2


# ---------------------------------------------------------------- real processes


def _rounds_by_seq(out):
    rows = read_jsonl(out / "results.jsonl")
    seqs = [r["round"] for r in rows]
    return rows, seqs


def test_rx_killed_and_restarted_mid_campaign_loses_nothing(digits_artifacts, digits, tmp_path):
    port = free_port()
    log = tmp_path / "rx.log"
    proc, address = start_rx(digits_artifacts, "--trace", "demo", "--trace-rounds", "4", port=port, log_file=log)
    procs = [proc]
    codec, _ = load_codec(digits_artifacts)
    rounds, kill_after = 12, 4
    node = tx_node(codec, digits, TxSocket(address),
                   **{**CONFIG, "result_timeout_s": 5.0, "hello_attempts": 40, "round_attempts": 4})
    killed = threading.Event()

    def on_round(record):
        if record.round == kill_after and not killed.is_set():
            killed.set()
            time.sleep(0.01)  # lands in the middle of the next round (its payload is in flight)
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait()
            procs.append(start_rx(digits_artifacts, "--trace", "demo", "--trace-rounds", "4", port=port,
                                  log_file=log)[0])

    try:
        records = node.run(rounds, ResultsLog(tmp_path, {}), on_round=on_round)
    finally:
        node.sock.close()
        for p in procs:
            stop(p)
    rows, seqs = _rounds_by_seq(tmp_path)
    assert seqs == list(range(rounds))  # none lost, none twice
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    pids = [r["rx_pid"] for r in rows]
    assert set(pids) == {procs[0].pid, procs[1].pid} and pids[kill_after] == procs[0].pid
    assert any(r.attempts > 1 for r in records[kill_after + 1:])
    assert "RX exiting: %d rounds ok" % (rounds - kill_after - 1) in log.read_text()


def test_tx_killed_mid_run_leaves_readable_results_and_resumes(digits_artifacts, tmp_path):
    proc, address = start_rx(digits_artifacts, "--trace", "demo", "--trace-rounds", "4",
                             "--adapt-steps", "150")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out, rounds = tmp_path / "campaign", 14
    try:
        tx = subprocess.Popen(tx_cmd(digits_artifacts, address, out, rounds), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_rows(out, 3)
        tx.send_signal(signal.SIGKILL)
        tx.wait()
        rows, seqs = _rounds_by_seq(out)  # readable after a crash at any moment
        assert 3 <= len(rows) < rounds and seqs == list(range(len(rows)))
        assert load_results(out)["rounds"][: len(rows) - 1] == rows[: len(rows) - 1]
        session_id = load_results(out)["config"]["session_id"]
        done = subprocess.run(tx_cmd(digits_artifacts, address, out, rounds, "--resume"), env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    finally:
        rx_log = stop(proc)
    rows, seqs = _rounds_by_seq(out)
    assert seqs == list(range(rounds)) and all(r["status"] == "ok" for r in rows)
    assert {r["session_id"] for r in rows} == {session_id}  # the resumed campaign is the same session
    doc = load_results(out)
    assert [r["round"] for r in doc["rounds"]] == list(range(rounds))
    assert "RX exiting" in rx_log


def test_resume_drops_a_torn_last_line_and_aborted_rounds(tmp_path):
    rows = [{"round": 0, "status": "ok"}, {"round": 1, "status": "aborted"}, {"round": 2, "status": "failed"}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"round": 3, "sta')
    log = ResultsLog(tmp_path, {"x": 1}, resume=True)
    assert log.finished() == {0, 2}
    assert [r["round"] for r in read_jsonl(tmp_path / "results.jsonl")] == [0, 2]
    assert load_results(tmp_path)["config"] == {"x": 1}
