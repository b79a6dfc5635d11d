"""Coverage-guided fuzzing (atheris/libFuzzer) of the wire decoder and the RX's message handler.

Run (``pip install atheris``; not part of the pytest suite)::

    PYTHONPATH=. python tests/fuzz/fuzz_decode.py -atheris_runs=200000 [CORPUS_DIR]
    PYTHONPATH=. python tests/fuzz/fuzz_decode.py -max_total_time=300 runs/fuzz-corpus

Every input goes to ``decode()`` (must return a message or raise ProtocolError)
and to ``RxNode.handle`` of a small in-memory RX (must return reply frames
that decode, the first of them an ERROR naming the problem, a HELLO or a
RESULT; it must never raise). Anything else is a crash: libFuzzer stops and
writes the input to ``crash-*``. The seed corpus (valid HELLO/PAYLOAD frames
of each value format, and known length-field bombs) is written to the corpus
directory when it is empty. Results of our runs: docs/security.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["common", "rx_node"]):
    import numpy as np
    import torch

    from common.modes.pca_lora.adapt_config import AdaptConfig
    from common.modes.pca_lora.alignment import LoraAlignment
    from common.modes.pca_lora.codec import PcaCodec
    from common.learn.models import build_mlp
    from common.wire.protocol import DecodeLimits, Error, Hello, ProtocolError, Result, decode, encode
    from common.modes.pca_lora.messages import Payload
    from common.link.sidelink import create_sidelink
    from rx_node.daemon import RxNode

torch.set_num_threads(1)
logging.disable(logging.CRITICAL)  # the RX logs every refusal; millions of lines would dominate the run
D_RAW, D_PRE = 16, 8


def build_node() -> RxNode:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(D_RAW, D_PRE)))
    codec = PcaCodec(np.zeros(D_RAW, np.float32), q.T.astype(np.float32))
    model = build_mlp(D_RAW, (8,), 10).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    link = create_sidelink("loopback", trace="demo", rounds=3, sleep=lambda s: None)
    return RxNode(codec, model, LoraAlignment(adapt=AdaptConfig(steps=1)), link,
                  DecodeLimits(max_message_bytes=1 << 16, max_alpha=D_PRE))


NODE = build_node()
SESSION = 9


def seeds() -> list[bytes]:
    c = NODE.codec
    rng = np.random.default_rng(1)
    out = [encode(Hello("tx", SESSION, "pca-lora", c.fingerprint, {"codec": c.name, "d_raw": c.d_raw,
                                                              "d_pre": c.d_max, "value_dtype": "float16",
                                                              "deadline_s": 1.0},
                      0, 0, 1, 1))]
    for dtype in ("float32", "float16", "int8"):
        z = rng.normal(size=(6, 4)).astype(np.float32)
        out.append(encode(Payload.build(SESSION, 0, c.fingerprint, dtype, z, np.arange(6),
                                        rng.integers(0, 10, 6), 2)))
    out += [b"\xc6\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\x91" * 64, encode(Error(1, 1, "x", "y"))]
    return out


def test_one_input(data: bytes) -> None:
    try:
        decode(data, NODE.limits)
    except ProtocolError:
        pass
    peer = b"fuzz"
    if SESSION not in NODE.sessions:  # keep a session open so PAYLOAD inputs reach the deep paths
        NODE.handle(peer, [seeds()[0]])
    replies = NODE.handle(peer, [data])
    if not replies:
        raise RuntimeError("no reply")
    first = decode(replies[0])
    if not isinstance(first, (Error, Hello, Result)):
        raise RuntimeError(f"unexpected first reply {first!r}")
    if isinstance(first, Error) and not (first.code and first.message):
        raise RuntimeError(f"ERROR without a reason: {first!r}")
    for r in replies[1:]:
        decode(r)
    if len(NODE.sessions) > 64:
        NODE.sessions.clear()


def main() -> None:
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus and not Path(corpus[0]).is_file():  # a file argument replays that input
        d = Path(corpus[0])
        d.mkdir(parents=True, exist_ok=True)
        if not any(d.iterdir()):
            for i, s in enumerate(seeds()):
                (d / f"seed-{i}").write_bytes(s)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
