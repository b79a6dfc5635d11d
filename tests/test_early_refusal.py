"""Hostile messages from an admitted CURVE TX are refused without being held, and another TX is served.

Over a real RX process, with ``--workers 1`` (one process) and ``--workers 2`` (front end + workers). The
RX's peak RSS is ``VmHWM`` after a reset (``/proc/PID/clear_refs``), summed over its processes, against
the message's size: what the code holds, not how fast the machine is.

Before: one message of 48 frames of 4 MiB peaked at 2.0x its size with one process (libzmq's copy plus
one in Python) and, with workers, was forwarded whole to a worker, which then missed its heartbeats and
was killed; a frame of 2.1 M short strings (6.3 MB, no container over 256) peaked at 44x. Now: the
multi-part message costs libzmq's own copy (1.0x) and the bomb its frame once per process (1.0x;
with workers, front end and worker: 2.0x together).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from common.modes.pca_lora.artifacts import load_codec
from semalign.campaigns.pca_lora.refusal_bench import (
    PeakRss,
    hello_frame,
    honest_round,
    object_bomb,
    rx_pids,
    tx_socket,
    wait_for,
)
from semalign.campaigns.processes import throwaway_keys
from tests.helpers import start_rx, stop

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads peak RSS from /proc")

FRAMES, FRAME_BYTES = 48, 4 << 20  # 192 MiB in one message
BOMB_STRINGS = 192  # 192**3 = 7.1 M strings in a 21 MB frame


@pytest.fixture(scope="module", params=[1, 2], ids=["workers1", "workers2"])
def rx(request, digits_artifacts, digits, tmp_path_factory):
    """A CURVE RX with ``--workers W``, an honest TX (session 2, one round done) and an attacker (session 1)."""
    keys = tmp_path_factory.mktemp(f"early-keys-w{request.param}")
    rx_keys, _ = throwaway_keys(keys, "honest")
    throwaway_keys(keys, "attacker")
    rx_args = [a for k, v in rx_keys.items() for a in ("--" + k.replace("_", "-"), str(v))]
    log = keys / "rx.log"
    proc, address = start_rx(digits_artifacts, "--workers", str(request.param), "--trace", "demo",
                             "--trace-rounds", "3", *rx_args, log_file=log)
    codec, _ = load_codec(digits_artifacts)
    contexts = zmq.Context(), zmq.Context()  # one I/O thread each: the honest TX never queues behind the attack
    honest, attacker = tx_socket(address, keys, "honest", contexts[0]), tx_socket(address, keys, "attacker", contexts[1])
    try:
        honest.send(hello_frame(codec, 2))
        assert wait_for(honest, ("HELLO",), 120), log.read_text()[-3000:]
        attacker.send(hello_frame(codec, 1))
        assert wait_for(attacker, ("HELLO",), 30)
        assert honest_round(honest, codec, digits, 0)[1].TYPE == "RESULT"  # the first round's allocations
        yield proc, codec, honest, attacker, log
    finally:
        for sock, context in zip((honest, attacker), contexts):
            sock.close()
            context.term()
        stop(proc)


def _after_attack(rx, digits, seq: int) -> None:
    """The RX is the same processes, and the honest TX's round ``seq`` gets its RESULT."""
    proc, codec, honest, _, log = rx
    assert proc.poll() is None
    _, reply = honest_round(honest, codec, digits, seq)
    assert reply is not None and reply.TYPE == "RESULT", reply
    assert (reply.session_id, reply.seq, len(reply.predictions)) == (2, seq, 20)
    assert reply.fields["acc_adapted"] >= 0.5, reply.fields
    assert "hung" not in log.read_text() and "exited with status" not in log.read_text()


def test_multi_frame_message_is_refused_without_being_held(rx, digits):
    proc, _, honest, attacker, _ = rx
    pids = rx_pids(proc.pid)
    peak = PeakRss(pids)
    chunk = bytes(FRAME_BYTES)
    attacker.sock.send_multipart([chunk] * FRAMES, copy=False)
    err = wait_for(attacker, ("ERROR",), 60)
    grown = sum(peak.increases().values())
    assert err is not None and (err.code, err.seq) == ("bad_message", -1), err
    assert f"expected 1 frame, got {FRAMES}" in err.message
    assert not peak.gone and rx_pids(proc.pid) == pids  # no worker lost over it
    # libzmq hands over a message only once all its frames arrived (1x); the RX adds at most a frame
    assert grown < 1.25 * FRAMES * FRAME_BYTES, f"peak RSS +{grown >> 20} MiB for a {FRAMES * FRAME_BYTES >> 20} MiB message"
    _after_attack(rx, digits, 1)


def test_object_bomb_is_refused_from_its_headers(rx, digits):
    proc, _, _, attacker, _ = rx
    frame = object_bomb(BOMB_STRINGS, session_id=1, seq=0)
    peak = PeakRss(rx_pids(proc.pid))
    attacker.send(frame)
    err = wait_for(attacker, ("ERROR",), 60)
    grown = peak.increases()
    # the frame itself, once per process that receives it (with workers: the front end and one worker)
    assert all(v < len(frame) + (4 << 20) for v in grown.values()), f"peak RSS +{grown} B for a {len(frame)} B frame"
    assert sum(grown.values()) < 2 * len(frame) + (4 << 20), f"peak RSS +{grown} B for a {len(frame)} B frame"
    assert err is not None and err.code == "bad_message" and "announces more than 16384 msgpack objects" in err.message
    _after_attack(rx, digits, 2)
