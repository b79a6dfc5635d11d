"""Per-key cap on the bytes that unfinished rounds in parts hold (pca-lora, a real RX process, plain TCP: an
owner is a HELLO credential): one key's parked parts are refused `parts_held` at the cap, another key's are
not touched, and finishing a round releases what it held."""

import os

import numpy as np

from common.modes.pca_lora.artifacts import load_codec
from common.modes.pca_lora.messages import TrainPart
from common.net.transport import TxSocket
from common.wire.protocol import Hello, encode
from tests.helpers import ask, payload, start_rx, stop


def _hello(codec, sid: int, credential: bytes) -> bytes:
    params = {"codec": codec.name, "d_raw": codec.d_raw, "d_pre": codec.d_max, "value_dtype": "float16",
              "deadline_s": 1.0, "train_parts": 1}
    return encode(Hello("tx", sid, "pca-lora", codec.fingerprint, params, 0, 0, os.getpid(), 0,
                        credential=credential))


def _part(codec, data, sid: int, seq: int) -> bytes:
    z = codec.encode(data.x_train[:300], 10)
    return encode(TrainPart.build(sid, seq, codec.fingerprint, "float16", z, np.arange(300), data.y_train[:300], 0))


def test_one_keys_parked_parts_are_capped_and_another_key_is_untouched(digits_artifacts, digits, tmp_path):
    codec, _ = load_codec(digits_artifacts)
    part_bytes = len(_part(codec, digits, 1, 0))
    cap = int(2.5 * part_bytes)  # two parked parts fit, a third does not
    proc, address = start_rx(digits_artifacts, "--max-held-bytes-per-key", str(cap), "--adapt-steps", "5",
                             log_file=tmp_path / "rx.log")
    key_a, key_b = os.urandom(32), os.urandom(32)
    socks = {}
    try:
        for sid, cred in ((1, key_a), (2, key_a), (3, key_a), (4, key_b)):
            socks[sid] = TxSocket(address)
            assert ask(socks[sid], _hello(codec, sid, cred), ("HELLO", "ERROR"), 60)[1].TYPE == "HELLO"
        for sid in (1, 2):  # key a parks two rounds in parts
            assert ask(socks[sid], _part(codec, digits, sid, 0), ("TRAIN_ACK", "ERROR"), 60)[1].TYPE == "TRAIN_ACK"
        err = ask(socks[3], _part(codec, digits, 3, 0), ("TRAIN_ACK", "ERROR"), 60)[1]
        assert err.TYPE == "ERROR" and err.code == "parts_held" and str(cap) in err.message, err
        other = ask(socks[4], _part(codec, digits, 4, 0), ("TRAIN_ACK", "ERROR"), 60)[1]
        assert other.TYPE == "TRAIN_ACK"  # key b holds nothing yet: untouched by key a's parts
        done = ask(socks[1], encode(payload(codec, digits, seq=0, alpha=10, n_train=0, session_id=1)),
                   ("RESULT", "ERROR"), 60)[1]
        assert done.TYPE == "RESULT" and done.fields["parts"] == 2  # session 1's round ends: its part released
        again = ask(socks[3], _part(codec, digits, 3, 1), ("TRAIN_ACK", "ERROR"), 60)[1]
        assert again.TYPE == "TRAIN_ACK", again
    finally:
        for s in socks.values():
            s.close()
        stop(proc)
