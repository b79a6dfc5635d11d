"""What one admitted slf key's floods cost another key's aligned session, over a real CURVE RX.

``python -m semalign.campaigns.slf.flood_bench [--workers W] [--semantic-bytes B] [--sessions S]
[--downloads D] [--flood-keys K]`` pre-trains an slf transceiver on 8x8 digits whose decoder is the
paper's size (171 kB, as ``reply_bench``), starts a CURVE RX serving it (throwaway keys), aligns a
victim key's session (a download, the same tensors uploaded back: its RESULT's credential and the
token then name that alignment) and times its 1-image SLF_SEMANTIC rounds at rest. Then, one after
the other, an attacker key:

1. ``semantic``: sends one SLF_SEMANTIC of 1 image whose ``token`` is padding up to ``B`` bytes (the
   type's cap, 25,958,400 B, by default); the victim's round is sent 0.3 s into it. Reported: when
   the attacker's ERROR came and its code, the victim's round time against rest;
2. ``sessions``: ``K`` attacker keys say HELLO for ``S`` session ids each (the RX holds 1,024
   sessions, 64 per key). Reported: sessions opened / refused (codes), and the victim's next
   semantic round: served by its alignment (``decoder: aligned``) or not;
3. ``replay``: the first attacker key sends ``D`` SLF_DOWNLOADs to each of its ``S`` session ids,
   reading every reply (up to 64 in flight). Reported: replies by type, bytes received, the RX's peak
   RSS increase (``VmHWM`` after a reset).

After each, the RX's RSS 2 s later (against its idle RSS before the first) and the victim's next
semantic round.

It prints one JSON object with the load average before and after. The properties are guarded by
``tests/test_reply_budget.py``, ``tests/test_session_binding.py`` and
``tests/test_slf_flood.py``; this is the measurement at the issue's sizes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import zmq

from common.modes.slf.messages import MAX_SEMANTIC_FRAME_BYTES, DecoderRequest, Semantic, Upload
from common.wire.protocol import decode, encode
from semalign.campaigns.probes import PeakRss, rss_bytes, rx_pids, tx_socket, wait_for
from semalign.campaigns.processes import free_port, launch, stop_process, throwaway_keys
from semalign.campaigns.slf.reply_bench import hello, pretrain, shape

WINDOW = 64  # downloads in flight on the replay flood's socket


def semantic(trx_shape, session_id: int, seq: int, token: bytes) -> bytes:
    """One image of all-zero indices (valid for any K) with label 0 and no pixels."""
    n_bytes = -(-trx_shape.indices_per_image * (trx_shape.n_codewords - 1).bit_length() // 8)
    return encode(Semantic(session_id, seq, token, 1, bytes(n_bytes), b"\x00", b""))


def padded_semantic(trx_shape, session_id: int, seq: int, frame_bytes: int) -> bytes:
    """:func:`semantic` whose token pads the frame to ``frame_bytes`` (within a few bytes)."""
    base = len(semantic(trx_shape, session_id, seq, b""))
    return semantic(trx_shape, session_id, seq, bytes(max(0, frame_bytes - base - 5)))


def victim_round(sock, trx_shape, seq: int, token: bytes) -> tuple[float, object]:
    """The victim's semantic round on session 2: (seconds to its answer, the answer)."""
    t0 = time.monotonic()
    sock.send(semantic(trx_shape, 2, seq, token))
    reply = wait_for(sock, ("RESULT", "ERROR"), 120)
    return time.monotonic() - t0, reply


def describe(reply) -> str:
    if reply is None:
        return "none"
    if reply.TYPE == "ERROR":
        return f"ERROR {reply.code}"
    fields = getattr(reply, "fields", None) or {}
    return f"{reply.TYPE} {fields.get('decoder', '')}".strip()


def align(sock, trx_shape) -> bytes:
    """Align the victim's session 2 (seq 0: download, upload the same tensors); returns its token."""
    sock.send(hello(trx_shape, 2))
    assert wait_for(sock, ("HELLO",), 300), "the RX did not answer HELLO"
    sock.send(encode(DecoderRequest(2, 0)))
    dec = wait_for(sock, ("SLF_DECODER",), 120)
    sock.send(encode(Upload(2, 0, dec.token, 0, dec.tensors)))
    res = wait_for(sock, ("RESULT", "ERROR"), 120)
    assert res is not None and res.TYPE == "RESULT", describe(res)
    return dec.token


def semantic_attack(attacker, victim, trx_shape, token: bytes, frame_bytes: int, seq: int) -> dict:
    attacker.send(hello(trx_shape, 1))
    assert wait_for(attacker, ("HELLO",), 60)
    frame = padded_semantic(trx_shape, 1, 0, frame_bytes)
    out = {}

    def later():
        time.sleep(0.3)
        out["s"], out["reply"] = victim_round(victim, trx_shape, seq, token)

    thread = threading.Thread(target=later)
    t0 = time.monotonic()
    thread.start()
    attacker.send(frame)
    err = wait_for(attacker, ("RESULT", "ERROR"), 300)
    refused = time.monotonic() - t0
    thread.join()
    return {"frame_bytes": len(frame), "attacker_answer": describe(err), "attacker_answered_after_s":
            round(refused, 3), "victim_round_s": round(out["s"], 4), "victim_answer": describe(out["reply"])}


def session_flood(attackers, trx_shape, sessions: int) -> dict:
    codes: dict[str, int] = {}
    t0 = time.monotonic()
    for k, sock in enumerate(attackers):
        for i in range(sessions):
            sock.send(hello(trx_shape, 100_000 * (k + 1) + i))
            got = wait_for(sock, ("HELLO", "ERROR"), 60)
            kind = describe(got)
            codes[kind] = codes.get(kind, 0) + 1
    return {"keys": len(attackers), "hellos_per_key": sessions, "answers": codes,
            "seconds": round(time.monotonic() - t0, 2)}


def replay_flood(sock, pids, sessions: int, downloads: int) -> dict:
    kinds: dict[str, int] = {}
    received = 0
    peak = PeakRss(pids)
    t0 = time.monotonic()
    requests = [(100_000 + i, 1 + j) for i in range(sessions) for j in range(downloads)]
    in_flight, sent = 0, 0
    while sent < len(requests) or in_flight:
        if sent < len(requests) and in_flight < WINDOW:  # at most WINDOW requests unanswered
            sock.send(encode(DecoderRequest(*requests[sent])))
            sent += 1
            in_flight += 1
            continue
        got = sock.recv(60_000)
        assert got is not None, "no reply within 60 s"
        received += len(got)
        kind = describe(decode(got))
        kinds[kind] = kinds.get(kind, 0) + 1
        in_flight -= 1
    seconds = time.monotonic() - t0
    return {"requests": len(requests), "answers": kinds, "bytes_received": received, "seconds": round(seconds, 2),
            "rss_peak_increase_mib": round(sum(peak.increases().values()) / 2**20, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--semantic-bytes", type=int, default=MAX_SEMANTIC_FRAME_BYTES)
    p.add_argument("--sessions", type=int, default=1024, help="session ids each attacker key says HELLO for")
    p.add_argument("--downloads", type=int, default=64, help="SLF_DOWNLOADs per session id (replay flood)")
    p.add_argument("--replay-sessions", type=int, default=256, help="session ids the replay flood downloads on")
    p.add_argument("--flood-keys", type=int, default=1)
    p.add_argument("--attacks", default="semantic,sessions,replay")
    a = p.parse_args(argv)
    if min(a.sessions, a.downloads, a.replay_sessions, a.flood_keys, a.semantic_bytes) < 1:
        p.error("--sessions, --downloads, --replay-sessions, --flood-keys and --semantic-bytes must be >= 1")
    work = Path(tempfile.mkdtemp(prefix="semalign-slf-flood-"))
    trx_shape = shape()
    artifacts = pretrain(work / "slf", trx_shape)
    rx_keys, _ = throwaway_keys(work / "keys", "victim")
    names = [f"attacker{k}" for k in range(a.flood_keys)]
    address = f"tcp://127.0.0.1:{free_port()}"
    rx = launch("rx", {"bind": address, "artifacts": artifacts, "mode": "slf", "eps": 0.01, "workers": a.workers,
                       **rx_keys}, work / "rx.log")
    contexts = [zmq.Context() for _ in range(2)]  # victim, attackers: one I/O thread each
    victim = tx_socket(address, work / "keys", "victim", contexts[0])
    attackers = [tx_socket(address, work / "keys", name, contexts[1]) for name in names]
    out = {"workers": a.workers, "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
           "rx_log": str(work / "rx.log")}
    try:
        token = align(victim, trx_shape)
        for seq in range(1, 4):  # warm-up
            victim_round(victim, trx_shape, seq, token)
        rest = [victim_round(victim, trx_shape, 10 + i, token)[0] for i in range(10)]
        out["victim_round_at_rest_ms"] = {"median": round(1e3 * statistics.median(rest), 2),
                                          "max": round(1e3 * max(rest), 2)}
        pids = rx_pids(rx.pid)
        out["rss_idle_mib"] = round(rss_bytes(pids) / 2**20, 1)
        seq = 100
        for kind in a.attacks.split(","):
            seq += 10
            if kind == "semantic":
                out["semantic"] = semantic_attack(attackers[0], victim, trx_shape, token, a.semantic_bytes, seq)
            elif kind == "sessions":
                out["sessions"] = session_flood(attackers, trx_shape, a.sessions)
            elif kind == "replay":
                out["replay"] = replay_flood(attackers[0], pids, a.replay_sessions, a.downloads)
            else:
                p.error(f"unknown attack {kind!r}; use semantic, sessions, replay")
            time.sleep(2.0)
            out[kind]["rss_after_mib"] = round(rss_bytes(pids) / 2**20, 1)
            took, reply = victim_round(victim, trx_shape, seq, token)
            out[kind]["victim_round_after_s"] = round(took, 4)
            out[kind]["victim_answer_after"] = describe(reply)
        out["rss_end_mib"] = round(rss_bytes(pids) / 2**20, 1)
        out["rss_end_over_idle"] = round(out["rss_end_mib"] / out["rss_idle_mib"] - 1, 3)
        out["rx_alive"] = rx.poll() is None
        out["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    finally:
        for sock in (victim, *attackers):
            sock.close()
        for context in contexts:
            context.term()
        stop_process(rx)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
