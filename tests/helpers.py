"""Test helpers: build a RX node in-process, start an RX daemon process, make payloads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common.modes.pca_lora.alignment import AdaptConfig, LoraAlignment
from common.artifacts import load_codec, load_model
from common.wire.protocol import Hello, Payload, encode
from common.link.sidelink import create_sidelink
from rx_node.daemon import RxNode
from semalign.processes import free_port  # noqa: F401  (tests import it from here)

ROOT = Path(__file__).resolve().parent.parent


def rx_node(artifacts, **limits) -> RxNode:
    from common.wire.protocol import DecodeLimits

    codec, meta = load_codec(artifacts)
    model = load_model(artifacts, meta)
    link = create_sidelink("loopback", trace="demo", rounds=3)
    return RxNode(codec, model, LoraAlignment(adapt=AdaptConfig(steps=20)), link,
                  DecodeLimits(max_alpha=codec.d_max, **limits))


def hello(codec, session_id=5, next_seq=0, fingerprint=None) -> bytes:
    return encode(Hello("tx", session_id, codec.name, fingerprint or codec.fingerprint, codec.d_raw,
                        codec.d_max, "float16", next_seq, 0, os.getpid(), time.time_ns()))


def payload(codec, data, seq=0, alpha=10, n_test=20, n_train=50, session_id=5, dtype="float16",
            fingerprint=None) -> Payload:
    x = np.concatenate([data.x_test[:n_test], data.x_train[:n_train]])
    labels = np.concatenate([data.y_test[:n_test], data.y_train[:n_train]])
    z = codec.encode(x, min(alpha, codec.d_max)) if alpha <= codec.d_max else \
        np.zeros((len(x), alpha), np.float32)
    return Payload.build(session_id, seq, fingerprint or codec.fingerprint, dtype, z,
                         np.arange(len(x)), labels, n_test)


def start_rx(artifacts, *extra: str, port: int | None = None, log_file=None) -> tuple[subprocess.Popen, str]:
    """An RX daemon in its own process; returns (process, address). Plain TCP unless ``extra`` has --curve-*."""
    address = f"tcp://127.0.0.1:{port or free_port()}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    plain = [] if any(a.startswith("--curve") for a in extra) else ["--insecure"]
    proc = subprocess.Popen([sys.executable, "-m", "semalign", "rx", "--bind", address, *plain, "--artifacts",
                             str(artifacts), "--adapt-steps", "20", *extra],
                            env=env, stdout=open(log_file, "a") if log_file else subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, address


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out
