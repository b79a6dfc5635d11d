"""One admitted slf key's floods against another key's aligned session, over a real CURVE RX process.

A 1-image SLF_SEMANTIC padded to megabytes in its token is refused ``stale_alignment`` (after its
emulated air time, the padding not echoed), and the other key's semantic round sent meanwhile is
decoded by its alignment; the attacker's
HELLOs for more sessions than a key may hold are refused ``too_many_sessions`` and the other key's
alignment still decodes. Order and codes only, no wall-clock bound: nothing depends on CPU speed.
The measurement at the issue's sizes is ``python -m semalign.campaigns.slf.flood_bench``.
"""

from __future__ import annotations

import time

import zmq

from semalign.campaigns.probes import tx_socket, wait_for
from semalign.campaigns.processes import throwaway_keys
from semalign.campaigns.slf.flood_bench import align, describe, padded_semantic, semantic
from semalign.campaigns.slf.reply_bench import hello, pretrain, shape
from tests.helpers import start_rx, stop

SHAPE = shape()
PADDED_BYTES = 4_000_000  # 0.14 s of air time at the RX's default 226.9 Mb/s, 8,000x a 1-image round's


def test_a_padded_semantic_holds_no_other_key_and_a_session_flood_keeps_its_alignment(tmp_path, digits):
    artifacts = pretrain(tmp_path / "slf", SHAPE, digits)
    rx_keys, _ = throwaway_keys(tmp_path / "keys", "victim")
    throwaway_keys(tmp_path / "keys", "attacker")
    rx_args = [a for k, v in rx_keys.items() for a in ("--" + k.replace("_", "-"), str(v))]
    proc, address = start_rx(artifacts, "--mode", "slf", "--eps", "0.01", *rx_args, log_file=tmp_path / "rx.log")
    contexts = zmq.Context(), zmq.Context()
    victim = tx_socket(address, tmp_path / "keys", "victim", contexts[0])
    attacker = tx_socket(address, tmp_path / "keys", "attacker", contexts[1])
    try:
        token = align(victim, SHAPE)
        attacker.send(hello(SHAPE, 1))
        assert wait_for(attacker, ("HELLO",), 60)
        attacker.send(padded_semantic(SHAPE, 1, 0, PADDED_BYTES))
        time.sleep(0.3)  # the padded frame is in the RX first
        victim.send(semantic(SHAPE, 2, 1, token))
        ours = wait_for(victim, ("RESULT", "ERROR"), 120)
        assert describe(ours) == "RESULT aligned", describe(ours)
        theirs = wait_for(attacker, ("RESULT", "ERROR"), 300)
        assert describe(theirs) == "ERROR stale_alignment", describe(theirs)
        assert theirs.message and len(theirs.message) < 1000  # the padding is not echoed

        answers = []
        for sid in range(100, 170):  # 70 HELLOs from a key that may hold 64 sessions (it holds 1)
            attacker.send(hello(SHAPE, sid))
            answers.append(describe(wait_for(attacker, ("HELLO", "ERROR"), 60)))
        assert answers.count("HELLO") == 63 and answers[63:] == ["ERROR too_many_sessions"] * 7, answers
        victim.send(semantic(SHAPE, 2, 2, token))
        assert describe(wait_for(victim, ("RESULT", "ERROR"), 120)) == "RESULT aligned"
    finally:
        victim.close()
        attacker.close()
        for context in contexts:
            context.term()
        stop(proc)
