"""What a flood of large replies one key never reads costs the RX, and whether another key notices.

``python -m semalign.campaigns.slf.reply_bench [--workers W] [--connections C] [--requests N]
[--cap BYTES]`` pre-trains an slf transceiver on 8x8 digits whose decoder is the paper's size
(171 kB; one epoch: only its size matters), starts a CURVE RX serving it (throwaway keys), and:

1. idle: the RX's RSS (its processes summed) and a victim key's download round (SLF_DOWNLOAD to its
   SLF_DECODER) at rest;
2. flood: a second admitted key opens ``C`` connections that take nothing (receive high-water mark 1,
   a 16 KiB socket buffer) and sends ``N`` downloads on each, while the victim runs download rounds;
   the RX's peak RSS (``VmHWM`` after a reset) and its RSS once the flood is answered and unread;
3. after: the flood's connections read what was queued for them (each request was answered once:
   its decoder, or ERROR ``replies_unread``), close, and the RX's RSS 2 s later.

It prints one JSON object, with the load average. ``tests/test_reply_budget.py`` checks the same at
a small size, in bytes and ERROR codes; this is the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import zmq

from common.data.datasets import load_dataset
from common.modes.slf.configs import TransceiverConfig
from common.modes.slf.messages import DecoderRequest, arch_fingerprint, arch_params, decoder_bytes
from common.modes.slf.pretrain import pretrain_and_save
from common.modes.slf.shape import TransceiverShape
from common.net.security import TxSecurity, apply_client, load_public, load_secret
from common.wire.protocol import Hello, decode, encode
from semalign.campaigns.probes import PeakRss, rss_bytes, rx_pids, tx_socket, wait_for
from semalign.campaigns.processes import free_port, launch, stop_process, throwaway_keys

FLOOD_RCVBUF = 16 * 1024  # the flood's socket buffer: what the TX's kernel takes of the RX's replies


def shape(widths: tuple[int, int] = (32, 64)) -> TransceiverShape:
    """An slf transceiver for 8x8 digits; ``(32, 64)``: a 171 kB decoder (the paper's), ``(64, 128)``: 604 kB."""
    return TransceiverShape(image_size=8, widths=widths, code_dim=16, n_codewords=16, head_channels=(8, 8),
                            head_hidden=32)


def pretrain(out: Path, trx_shape: TransceiverShape, data=None) -> Path:
    """RX artifacts of ``trx_shape`` in ``out`` (one epoch: the replies' size is what matters)."""
    cfg = TransceiverConfig("rx", eps=1e-3, seed=1, dataset="digits", epochs=1, head_epochs=1, batch_size=256,
                            lr=1e-2, shape=trx_shape)
    pretrain_and_save(cfg, data or load_dataset("digits"), out)
    return out


def hello(trx_shape: TransceiverShape, session_id: int) -> bytes:
    return encode(Hello("tx", session_id, "slf", arch_fingerprint(trx_shape), arch_params(trx_shape), 0, 0,
                        os.getpid(), time.time_ns()))


def download(session_id: int, seq: int) -> bytes:
    return encode(DecoderRequest(session_id, seq))


def flood_socket(address: str, key_dir: Path, name: str, context: zmq.Context) -> zmq.Socket:
    """A CURVE DEALER of key ``name`` that takes (almost) nothing off the wire: receive high-water mark 1, a
    :data:`FLOOD_RCVBUF` socket buffer. Close it with ``linger=0``."""
    _, keys = throwaway_keys(key_dir, name)
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, FLOOD_RCVBUF)
    apply_client(sock, TxSecurity(load_secret(keys["curve_secret"]), load_public(keys["curve_server_public"])))
    sock.connect(address)
    return sock


def drain(sock: zmq.Socket, n: int, timeout_s: float) -> list:
    """The next ``n`` replies on ``sock`` (decoded), fewer when ``timeout_s`` passes first."""
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        if sock.poll(100, zmq.POLLIN):
            out.append(decode(sock.recv()))
    return out


def victim_round(sock, session_id: int, seq: int) -> tuple[float, object]:
    """One download round of the victim key: (seconds to its reply, the reply)."""
    t0 = time.monotonic()
    sock.send(download(session_id, seq))
    reply = wait_for(sock, ("SLF_DECODER", "ERROR"), 60)
    return time.monotonic() - t0, reply


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--requests", type=int, default=60, help="downloads per connection (SNDHWM is 64)")
    p.add_argument("--cap", type=int, default=None, help="--max-reply-bytes-per-key of the RX (default: its own)")
    p.add_argument("--widths", default="32,64")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="semalign-replies-"))
    trx_shape = shape(tuple(int(w) for w in a.widths.split(",")))
    artifacts = pretrain(work / "slf", trx_shape)
    rx_keys, _ = throwaway_keys(work / "keys", "victim")
    throwaway_keys(work / "keys", "flooder")
    address = f"tcp://127.0.0.1:{free_port()}"
    opts = {"bind": address, "artifacts": artifacts, "mode": "slf", "eps": 0.01, "workers": a.workers, **rx_keys}
    if a.cap is not None:
        opts["max_reply_bytes_per_key"] = a.cap
    rx = launch("rx", opts, work / "rx.log")
    contexts = [zmq.Context() for _ in range(3)]  # victim, flooder's reader, flood: one I/O thread each
    victim = tx_socket(address, work / "keys", "victim", contexts[0])
    reader = tx_socket(address, work / "keys", "flooder", contexts[1])
    floods = []
    out = {"workers": a.workers, "decoder_bytes": decoder_bytes(trx_shape), "connections": a.connections,
           "requests_per_connection": a.requests, "rx_log": str(work / "rx.log")}
    try:
        victim.send(hello(trx_shape, 2))
        assert wait_for(victim, ("HELLO",), 300), "the RX did not answer HELLO"
        reader.send(hello(trx_shape, 1))
        assert wait_for(reader, ("HELLO",), 60)
        for seq in range(3):  # warm-up: the first downloads' allocations
            victim_round(victim, 2, seq)
            victim_round(reader, 1, seq)
        time.sleep(1.0)
        pids = rx_pids(rx.pid)
        out["rss_idle_mib"] = round(rss_bytes(pids) / 2**20, 1)
        rest = [victim_round(victim, 2, 10 + i)[0] for i in range(10)]
        out["victim_round_at_rest_ms"] = {"median": round(1e3 * statistics.median(rest), 2),
                                          "max": round(1e3 * max(rest), 2)}
        peak = PeakRss(pids)
        floods = [flood_socket(address, work / "keys", "flooder", contexts[2]) for _ in range(a.connections)]
        during, replies = [], []

        def victim_rounds():
            for i in range(20):
                s, reply = victim_round(victim, 2, 100 + i)
                during.append(s)
                replies.append(getattr(reply, "TYPE", None))

        thread = threading.Thread(target=victim_rounds)
        thread.start()
        seq = 1000
        for sock in floods:
            for _ in range(a.requests):
                sock.send(download(1, seq))
                seq += 1
        thread.join()
        victim_round(reader, 1, seq)  # answered after (most of) the flood: the same key's reading connection
        time.sleep(2.0)
        out["rss_flood_unread_mib"] = round(rss_bytes(pids) / 2**20, 1)
        out["rss_peak_increase_mib"] = round(sum(peak.increases().values()) / 2**20, 1)
        out["victim_round_during_flood_ms"] = {"median": round(1e3 * statistics.median(during), 2),
                                               "max": round(1e3 * max(during), 2), "replies": sorted(set(replies))}
        got = [drain(sock, a.requests, 120) for sock in floods]
        kinds = [m.TYPE if m.TYPE != "ERROR" else f"ERROR {m.code}" for g in got for m in g]
        out["flood_replies"] = {k: kinds.count(k) for k in sorted(set(kinds))}
        for sock in floods:
            sock.close(linger=0)
        floods = []
        time.sleep(2.0)
        out["rss_after_mib"] = round(rss_bytes(pids) / 2**20, 1)
        out["rss_after_over_idle"] = round(out["rss_after_mib"] / out["rss_idle_mib"] - 1, 3)
        out["rx_alive"] = rx.poll() is None
        out["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    finally:
        for sock in floods:
            sock.close(linger=0)
        victim.close()
        reader.close()
        for context in contexts:
            context.term()
        stop_process(rx)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
