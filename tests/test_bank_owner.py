"""The adapter bank belongs to its owner: one key's payloads never change what another key's rounds use.

Real RX processes with a persistent adapter bank, real ZeroMQ sockets, two
TX identities: two CURVE keys, and two credentials on a plain socket. The
attacker sends a payload at the victim's alpha whose training labels are all
1 (its hold-out agrees, so the RX keeps and banks the adapter); the victim's
rounds at that alpha (and near it) are then checked through their RESULT:
the ``adapt`` report's bank fields (``reused``, ``warm_start``,
``warm_from_alpha``) and ``aligned_alphas``; the RX's start-up warm-up must
have stored nothing (no adapter at d_pre or anywhere). Fixed step counts
(``--adapt-steps 20``): nothing depends on CPU speed.

Before the bank was keyed by owner, the victim's lean round at alpha 10
reused the attacker's adapter (``reused``, announced in ``aligned_alphas``)
and its round at alpha 12 warm-started from it (``warm_from_alpha`` 10).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from common.modes.pca_lora.artifacts import load_codec
from common.modes.pca_lora.messages import Payload
from common.net.security import TxSecurity, load_public, load_secret
from common.net.transport import TxSocket
from common.wire.protocol import Hello, encode
from semalign.campaigns.processes import throwaway_keys
from tests.helpers import ask, start_rx, stop

ALPHA = 10  # the victim's alpha, which the attacker poisons


def _hello(codec, sid, credential=b"") -> bytes:
    params = {"codec": codec.name, "d_raw": codec.d_raw, "d_pre": codec.d_max, "value_dtype": "float16",
              "deadline_s": 1.0}
    return encode(Hello("tx", sid, "pca-lora", codec.fingerprint, params, 0, 0, os.getpid(), time.time_ns(),
                        credential=credential))


def _payload(codec, data, sid, seq, alpha, n_train, labels=None) -> bytes:
    """20 test vectors and ``n_train`` training vectors at ``alpha``; ``labels``: every training label."""
    x = np.concatenate([data.x_test[:20], data.x_train[:n_train]])
    y = np.concatenate([data.y_test[:20], data.y_train[:n_train] if labels is None
                        else np.full(n_train, labels, np.uint8)])
    return encode(Payload.build(sid, seq, codec.fingerprint, "float16", codec.encode(x, alpha),
                                np.arange(len(x)), y, 20))


@pytest.fixture(scope="module", params=["curve", "plain"])
def two_txs(request, digits_artifacts, tmp_path_factory):
    """(RX address, bank directory, attacker socket + credential, victim socket + credential)."""
    d = tmp_path_factory.mktemp("bank-owner")
    extra = ["--adapter-bank", str(d / "bank"), "--bank-size", "8"]
    if request.param == "curve":
        rx_keys, _ = throwaway_keys(d, "attacker")
        throwaway_keys(d, "victim")
        extra += [a for k, v in rx_keys.items() for a in ("--" + k.replace("_", "-"), str(v))]
    proc, address = start_rx(digits_artifacts, *extra, log_file=d / "rx.log")

    def sock(name):
        if request.param == "plain":
            return TxSocket(address), name.encode().ljust(16, b"-")  # the credential binds the session
        return TxSocket(address, security=TxSecurity(load_secret(d / f"{name}.key_secret"),
                                                     load_public(d / "rx.key"))), b""

    attacker, victim = sock("attacker"), sock("victim")
    yield address, d / "bank", attacker, victim
    for s, _ in (attacker, victim):
        s.close()
    stop(proc)


def _round(sock, frame):
    got = ask(sock, frame, ("RESULT", "ERROR"), 120.0)[1]
    assert got.TYPE == "RESULT", got
    return got.fields


def test_an_attackers_adapter_never_reaches_the_victims_rounds(two_txs, digits_artifacts, digits):
    _, bank_dir, (attacker, a_cred), (victim, v_cred) = two_txs
    codec, _ = load_codec(digits_artifacts)
    assert ask(attacker, _hello(codec, 801, a_cred), ("HELLO", "ERROR"), 120.0)[1].TYPE == "HELLO"
    assert ask(victim, _hello(codec, 802, v_cred), ("HELLO", "ERROR"), 120.0)[1].TYPE == "HELLO"
    # the RX warmed up before it answered: its warm-up stored nothing, and a round at d_pre uses nothing stored
    assert json.loads((bank_dir / "manifest.json").read_text())["lru"] == []
    at_d_pre = _round(victim, _payload(codec, digits, 802, 0, codec.d_max, 0))
    assert not at_d_pre["adapt"].get("reused") and at_d_pre["acc_adapted"] == at_d_pre["acc_pretrained"]

    poisoned = _round(attacker, _payload(codec, digits, 801, 0, ALPHA, 200, labels=1))
    assert poisoned["adapt"]["kept"] == "adapted" and poisoned["aligned_alphas"] == [ALPHA]  # banked, its own
    assert _round(attacker, _payload(codec, digits, 801, 1, ALPHA, 0))["adapt"]["reused"]  # it uses it itself

    # the victim: nothing announced, a lean round at ALPHA gets the frozen model, not the attacker's adapter
    lean = _round(victim, _payload(codec, digits, 802, 1, ALPHA, 0))
    assert lean["aligned_alphas"] == [] and not lean["adapt"].get("reused"), lean
    assert lean["acc_adapted"] == lean["acc_pretrained"]
    # ... and a round near it trains from scratch, not warm-started from the attacker's adapter
    near = _round(victim, _payload(codec, digits, 802, 2, ALPHA + 2, 200))
    assert not near["adapt"]["warm_start"] and near["adapt"]["warm_from_alpha"] is None, near["adapt"]

    # on disk, each adapter is its owner's (the manifest records the owner's digest)
    owners = {e["owner"] for e in json.loads((bank_dir / "manifest.json").read_text())["lru"]}
    assert len(owners) == (2 if near["adapt"]["kept"] == "adapted" else 1)
