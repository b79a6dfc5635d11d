"""Per-key cap on the large replies the RX has queued that a key's connections have not taken
(``--max-reply-bytes-per-key``, ERROR ``replies_unread``).

The socket alone (in this process), then real RX processes (``--workers 1`` and ``2``, CURVE, mode slf
with a 604 kB decoder): one admitted key floods downloads on connections that take nothing; every
request is answered once (its decoder, or ERROR ``replies_unread`` in its place), the RX's peak RSS
(``VmHWM`` after a reset, its processes summed) stays within the replay record's share of that key plus
twice the cap, another key's download is served, and once the flood is read the key downloads again.
Byte counts and ERROR codes only: nothing depends on CPU speed.

Before: no reply was refused; the RX queued every decoder the flood's connections did not take (up to
64 per connection, ``SNDHWM`` counts messages), copied into libzmq: 3 connections x 60 downloads made
the RX's peak RSS grow by ~80 MB, a key with more connections made it grow without bound.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq

from common.modes.slf.messages import decoder_bytes
from common.net.transport import LARGE_REPLY_BYTES, RepliesUnread, RxSocket
from rx_node.replay import MAX_BYTES_PER_OWNER
from semalign.campaigns.probes import PeakRss, rx_pids, tx_socket, wait_for
from semalign.campaigns.processes import throwaway_keys
from semalign.campaigns.slf.reply_bench import download, drain, flood_socket, hello, pretrain, shape, victim_round
from tests.helpers import start_rx, stop

SHAPE = shape((64, 128))  # a 604 kB decoder: 60 of them are far more than the kernel buffers of a connection
CAP = 4 * decoder_bytes(SHAPE)
FLOOD_CONNECTIONS, FLOOD_REQUESTS = 3, 60  # per connection below SNDHWM (64): every request gets its answer


def _wait(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_the_socket_counts_large_replies_per_key_until_libzmq_takes_them():
    """A key whose connection takes nothing is refused at the cap; another key is not; reading frees it."""
    context = zmq.Context()
    rx = RxSocket("tcp://127.0.0.1:0", 1 << 24, context, max_reply_bytes_per_key=3 * LARGE_REPLY_BYTES)
    slow, other = context.socket(zmq.DEALER), context.socket(zmq.DEALER)
    try:
        peers = {}
        for name, sock in ((b"slow", slow), (b"other", other)):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 1)
            sock.setsockopt(zmq.RCVBUF, 4096)
            sock.connect(rx.address)
            sock.send(name)
            got = rx.recv(5000)
            assert got is not None
            peers[name] = got[0]
        reply = bytes(2 * LARGE_REPLY_BYTES)
        sent = 0
        with pytest.raises(RepliesUnread) as refused:
            for _ in range(1000):  # the kernel's buffers take some, then libzmq's queue fills
                rx.send(peers[b"slow"], reply, "key-a")
                sent += 1
        assert refused.value.reason == "replies_unread" and refused.value.queued_bytes == len(reply)
        assert f"{3 * LARGE_REPLY_BYTES}-byte cap" in str(refused.value)
        assert rx.queued_reply_bytes("key-a") == len(reply)  # one queued: a second would pass the cap
        rx.send(peers[b"other"], reply, "key-b")  # another key: its own budget
        rx.send(peers[b"slow"], b"small", "key-a")  # small replies: counted by SNDHWM only
        for _ in range(sent + 1):
            assert slow.poll(10_000, zmq.POLLIN)
            slow.recv()
        assert _wait(lambda: rx.queued_reply_bytes("key-a") == 0)
        assert rx.freed_reply_bytes == sent * len(reply)
        rx.send(peers[b"slow"], reply, "key-a")
    finally:
        slow.close(linger=0)
        other.close(linger=0)
        rx.close()
        context.term()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, digits):
    return pretrain(tmp_path_factory.mktemp("replies") / "slf", SHAPE, digits)


@pytest.fixture(scope="module", params=[1, 2], ids=["W1", "W2"])
def rx(request, artifacts, tmp_path_factory):
    keys = tmp_path_factory.mktemp(f"reply-keys-w{request.param}")
    rx_keys, _ = throwaway_keys(keys, "victim")
    throwaway_keys(keys, "flooder")
    rx_args = [a for k, v in rx_keys.items() for a in ("--" + k.replace("_", "-"), str(v))]
    log = keys / "rx.log"
    proc, address = start_rx(artifacts, "--mode", "slf", "--eps", "0.01", "--workers", str(request.param),
                             "--max-reply-bytes-per-key", str(CAP), *rx_args, log_file=log)
    yield proc, address, keys, log
    stop(proc)


def test_one_keys_unread_downloads_are_capped_and_another_key_is_served(rx):
    proc, address, keys, log = rx
    contexts = [zmq.Context() for _ in range(3)]  # victim, flooder's reading connection, flood
    victim = tx_socket(address, keys, "victim", contexts[0])
    reader = tx_socket(address, keys, "flooder", contexts[1])
    floods = []
    try:
        victim.send(hello(SHAPE, 2))
        assert wait_for(victim, ("HELLO",), 300), Path(log).read_text()[-3000:]
        reader.send(hello(SHAPE, 1))
        assert wait_for(reader, ("HELLO",), 60)
        assert victim_round(victim, 2, 0)[1].TYPE == "SLF_DECODER"
        assert victim_round(reader, 1, 0)[1].TYPE == "SLF_DECODER"  # the first downloads' allocations
        pids = rx_pids(proc.pid)
        peak = PeakRss(pids)
        floods = [flood_socket(address, keys, "flooder", contexts[2]) for _ in range(FLOOD_CONNECTIONS)]
        seqs = [range(1000 + i * FLOOD_REQUESTS, 1000 + (i + 1) * FLOOD_REQUESTS) for i in range(FLOOD_CONNECTIONS)]
        for sock, todo in zip(floods, seqs):
            for seq in todo:
                sock.send(download(1, seq))
        _, theirs = victim_round(victim, 2, 1)
        assert theirs is not None and theirs.TYPE == "SLF_DECODER", theirs  # another key: untouched

        got = [drain(sock, FLOOD_REQUESTS, 120) for sock in floods]  # every request answered, in order
        grown = sum(peak.increases().values())
        for replies, todo in zip(got, seqs):
            assert [(m.session_id, m.seq) for m in replies] == [(1, s) for s in todo]
            assert {m.TYPE if m.TYPE != "ERROR" else m.code for m in replies} <= {"SLF_DECODER", "replies_unread"}
        refused = [m for replies in got for m in replies if m.TYPE == "ERROR"]
        assert refused, "no reply refused: the RX queued every decoder the flood did not read"
        assert f"{CAP}-byte cap" in refused[0].message and "read your replies" in refused[0].message
        # what the RX held: the replay record's share of one key (the replies it queued are the same bytes),
        # at most the cap of replies beyond it, and a few replies being encoded or forwarded; with workers the
        # worker and the front end each hold theirs (the worker's queue to the front end is not counted per
        # key: measured +19 to +37 MiB here, against +84 MiB before the cap)
        bound = (MAX_BYTES_PER_OWNER + 2 * CAP + (8 << 20)) * (1 if len(pids) == 1 else 2)
        assert grown < bound, f"peak RSS +{grown >> 20} MiB during the flood (bound {bound >> 20} MiB)"
        assert not peak.gone and rx_pids(proc.pid) == pids

        for sock in floods:
            sock.close(linger=0)
        floods = []
        _, again = victim_round(reader, 1, 5000)  # read and gone: the key's budget is free again
        assert again is not None and again.TYPE == "SLF_DECODER", again
        text = Path(log).read_text()
        assert "replies_unread" in text and "hung" not in text and "exited with status" not in text
    finally:
        for sock in floods:
            sock.close(linger=0)
        victim.close()
        reader.close()
        for context in contexts:
            context.term()
