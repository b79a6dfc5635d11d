"""What a hostile message costs the RX before it is refused, and whether another peer notices.

``python -m semalign.campaigns.pca_lora.refusal_bench [--workers W] [--frames N --frame-mib M]
[--bomb-strings S]`` starts a CURVE RX (digits artifacts, throwaway keys), opens a session for an
honest TX (its round time is measured first at rest), and then has a second admitted TX send, one
after the other:

- ``multipart``: one ZeroMQ message of ``N`` frames of ``M`` MiB each (the protocol takes one frame);
- ``bomb``: one frame holding a msgpack array nesting of ``S**3`` two-character strings (every
  container within ``--max-container-len``: 256 by default, the issue's 50.5 MB / 16.7 M objects);
- ``parts``: ``--part-sessions`` sessions (40) of the attacker's key each send one PAYLOAD_TRAIN of
  about ``--part-mb`` MB (9.8) and never finish their round: the answers by code, the RX's peak RSS
  increase and its RSS increase 2 s after the last part, against the bytes sent.

For each it prints the time from the last byte handed to ZeroMQ to the ERROR, the code, the peak
RSS increase of the RX's processes (``VmHWM`` after resetting it through ``/proc/PID/clear_refs``;
with workers: front end and workers summed) against the message size, and the honest TX's round
time for a round sent 0.3 s after the attack began. The test suite checks the same at small sizes
(``tests/test_early_refusal.py``); this is the measurement at the issue's sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from common.data.datasets import load_dataset
from common.modes.pca_lora.artifacts import load_codec
from common.net.transport import TxSocket
from common.modes.pca_lora.messages import Payload, TrainPart
from common.wire.protocol import PROTOCOL_VERSION, Hello, encode
from semalign.campaigns.pca_lora.runner import ensure_artifacts
from semalign.campaigns.probes import PeakRss, rss_bytes, rx_pids, tx_socket, wait_for
from semalign.campaigns.processes import free_port, launch, stop_process, throwaway_keys


def object_bomb(strings_per_level: int = 256, session_id: int = 1, seq: int = 0) -> bytes:
    """A PAYLOAD-typed msgpack map whose field ``x`` nests 3 levels of arrays of ``strings_per_level``
    each, ending in ``strings_per_level**3`` fixstr ``"ab"`` (3 bytes each): no container exceeds
    ``strings_per_level`` entries, so length limits alone let it through."""
    n = strings_per_level

    def array(count: int) -> bytes:
        return b"\xdc" + count.to_bytes(2, "big")  # array 16

    inner = array(n) + b"\xa2ab" * n
    middle = array(n) + inner * n
    head = (b"\x85" + b"\xa1v" + bytes([PROTOCOL_VERSION]) + b"\xa4type\xa7PAYLOAD"
            + b"\xaasession_id" + b"\xcf" + session_id.to_bytes(8, "big")
            + b"\xa3seq" + b"\xcf" + seq.to_bytes(8, "big") + b"\xa1x")
    return head + array(n) + middle * n


def hello_frame(codec, session_id: int, train_parts: int | None = None) -> bytes:
    """A TX's HELLO for a pca-lora session on ``codec`` (float16 values, 1 s deadline; rounds in
    ``train_parts`` parts when given)."""
    params = {"codec": codec.name, "d_raw": codec.d_raw, "d_pre": codec.d_max, "value_dtype": "float16",
              "deadline_s": 1.0, **({"train_parts": train_parts} if train_parts else {})}
    return encode(Hello("tx", session_id, "pca-lora", codec.fingerprint, params, 0, 0, os.getpid(), time.time_ns()))


def honest_round(sock: TxSocket, codec, data, seq: int, n_test: int = 20, n_train: int = 50) -> tuple[float, object]:
    """Round ``seq`` of session 2 at alpha 10: (seconds to its reply, the reply)."""
    x = np.concatenate([data.x_test[:n_test], data.x_train[:n_train]])
    labels = np.concatenate([data.y_test[:n_test], data.y_train[:n_train]])
    frame = encode(Payload.build(2, seq, codec.fingerprint, "float16", codec.encode(x, 10), np.arange(len(x)),
                                 labels, n_test))
    t0 = time.monotonic()
    sock.send(frame)
    msg = wait_for(sock, ("RESULT", "ERROR"), 60)
    return time.monotonic() - t0, msg


def attack(kind: str, attacker: TxSocket, pids: list[int], honest: TxSocket, codec, data, seq: int,
           frames: int, frame_bytes: int, bomb_strings: int) -> dict:
    """One attack of ``kind`` (``multipart`` / ``bomb``) with an honest round sent 0.3 s into it."""
    if kind == "multipart":
        chunk = bytes(frame_bytes)
        parts = [chunk] * frames
    else:
        parts = [object_bomb(bomb_strings, session_id=1, seq=seq)]
    size = sum(len(p) for p in parts)
    peak = PeakRss(pids)
    honest_out = {}

    def honest_later():
        time.sleep(0.3)
        honest_out["s"], honest_out["msg"] = honest_round(honest, codec, data, seq)

    thread = threading.Thread(target=honest_later)
    t0 = time.monotonic()
    thread.start()
    attacker.sock.send_multipart(parts, copy=False)
    sent = time.monotonic()
    err = wait_for(attacker, ("ERROR",), 120)
    refused = time.monotonic()
    thread.join()
    per_process = peak.increases()
    increase = sum(per_process.values())
    return {"attack": kind, "bytes": size, "frames": len(parts), "send_s": round(sent - t0, 3),
            "refused_after_s": round(refused - t0, 3), "code": getattr(err, "code", None),
            "message": getattr(err, "message", None), "rss_peak_increase_mib": round(increase / 2**20, 1),
            "rss_peak_over_size": round(increase / size, 2),
            "rss_peak_increase_mib_per_process": [round(v / 2**20, 1) for v in per_process.values()],
            "rx_processes_gone": peak.gone, "honest_round_s": round(honest_out["s"], 3),
            "honest_reply": honest_out["msg"].TYPE}


def parked_parts(attacker: TxSocket, pids: list[int], codec, data, sessions: int, part_bytes: int) -> dict:
    """Sessions 1000.. of the attacker's key (rounds in 2 parts) each send one PAYLOAD_TRAIN of about
    ``part_bytes`` and never finish the round."""
    n = max(1, part_bytes // (2 * codec.d_max + 5))  # float16 values, a uint8 label, a uint32 id
    z = np.random.default_rng(0).normal(size=(n, codec.d_max)).astype(np.float32)
    labels = np.resize(data.y_train, n)
    answers: dict[str, int] = {}
    for sid in range(1000, 1000 + sessions):
        attacker.send(hello_frame(codec, sid, train_parts=2))
        assert wait_for(attacker, ("HELLO",), 60), f"no HELLO for session {sid}"
    before = rss_bytes(pids)
    peak = PeakRss(pids)
    sent = 0
    for sid in range(1000, 1000 + sessions):
        frame = encode(TrainPart.build(sid, 0, codec.fingerprint, "float16", z, np.arange(n), labels, 0))
        sent += len(frame)
        attacker.send(frame)
        got = wait_for(attacker, ("TRAIN_ACK", "ERROR"), 300)
        kind = "none" if got is None else got.TYPE if got.TYPE != "ERROR" else f"ERROR {got.code}"
        answers[kind] = answers.get(kind, 0) + 1
    time.sleep(2.0)
    increase = sum(peak.increases().values())
    return {"attack": "parts", "sessions": sessions, "part_bytes": len(frame), "bytes": sent, "answers": answers,
            "rss_peak_increase_mib": round(increase / 2**20, 1),
            "rss_held_increase_mib": round((rss_bytes(pids) - before) / 2**20, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--frame-mib", type=int, default=32)
    p.add_argument("--bomb-strings", type=int, default=256)
    p.add_argument("--part-sessions", type=int, default=40)
    p.add_argument("--part-mb", type=float, default=9.8)
    p.add_argument("--attacks", default="multipart,bomb", help="any of multipart, bomb, parts")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="semalign-refusal-"))
    artifacts = ensure_artifacts("digits", work / "artifacts", progress=False)
    codec, _ = load_codec(artifacts)
    data = load_dataset("digits")
    rx_keys, _ = throwaway_keys(work / "keys", "honest")
    throwaway_keys(work / "keys", "attacker")
    address = f"tcp://127.0.0.1:{free_port()}"
    rx = launch("rx", {"bind": address, "artifacts": artifacts, "adapt_steps": 20, "trace": "demo",
                       "trace_rounds": 3, "workers": a.workers, **rx_keys}, work / "rx.log")
    contexts = zmq.Context(), zmq.Context()
    honest = tx_socket(address, work / "keys", "honest", contexts[0])
    attacker = tx_socket(address, work / "keys", "attacker", contexts[1])
    out = {"workers": a.workers, "rx_log": str(work / "rx.log"), "runs": []}
    try:
        honest.send(hello_frame(codec, 2))
        assert wait_for(honest, ("HELLO",), 300), "the RX did not answer HELLO"
        attacker.send(hello_frame(codec, 1))
        assert wait_for(attacker, ("HELLO",), 60)
        honest_round(honest, codec, data, 0)  # warm-up
        rest_s, _ = honest_round(honest, codec, data, 1)
        out["honest_round_at_rest_s"] = round(rest_s, 3)
        for i, kind in enumerate(a.attacks.split(",")):
            if kind == "parts":
                out["runs"].append(parked_parts(attacker, rx_pids(rx.pid), codec, data, a.part_sessions,
                                                int(a.part_mb * 1e6)))
                after_s, reply = honest_round(honest, codec, data, 2 + i)
                out["runs"][-1].update(honest_round_s=round(after_s, 3), honest_reply=reply.TYPE)
                continue
            out["runs"].append(attack(kind, attacker, rx_pids(rx.pid), honest, codec, data, 2 + i, a.frames,
                                      a.frame_mib << 20, a.bomb_strings))
        out["rx_alive"] = rx.poll() is None
    finally:
        for sock, context in zip((honest, attacker), contexts):
            sock.close()
            context.term()
        stop_process(rx)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
