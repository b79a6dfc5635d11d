"""Test helpers: build a RX node in-process, start an RX daemon process, make payloads."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from common.modes.pca_lora.artifacts import load_codec, load_model
from common.link.sidelink import create_sidelink
from common.modes.base import DEFAULT_MODE
from common.modes.pca_lora.adapt_config import AdaptConfig
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.messages import Payload
from common.modes.pca_lora.rx import PcaLoraRx
from common.modes.pca_lora.tx import PcaLoraTx, PcaLoraTxConfig
from common.net.transport import RxSocket
from common.wire.protocol import DecodeLimits, Hello, decode, encode
from rx_node.daemon import RxNode
from rx_node.serving import serve
from tx_node.daemon import TxConfig, TxNode
from common.files import free_port  # noqa: F401  (tests import free_port from here)
from semalign.campaigns.processes import daemon_argv

ROOT = Path(__file__).resolve().parent.parent


def rx_node(artifacts, **limits) -> RxNode:
    """An in-process RX serving pca-lora from ``artifacts`` over the loopback emulator."""
    codec, meta = load_codec(artifacts)
    model = load_model(artifacts, meta)
    link = create_sidelink("loopback", trace="demo", rounds=3)
    half = PcaLoraRx(codec, model, LoraAlignment(adapt=AdaptConfig(steps=20)), meta.n_classes)
    return RxNode({half.mode: half}, link, DecodeLimits(**limits))


class ServedRx:
    """``node`` serving over real sockets on a free loopback port, in a thread of this process.

    ``max_bytes``: the socket's message size limit; ``sock_cls`` and ``sock_kw``
    build another socket (e.g. one that drops messages). :meth:`stop` ends it.
    """

    def __init__(self, node: RxNode, max_bytes: int = 1 << 24, sock_cls=RxSocket, **sock_kw):
        self.node = node
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.sock = sock_cls(self.address, max_bytes, zmq.Context.instance(), **sock_kw)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=serve, args=(node, self.sock, self._stop), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def ask(sock, frame: bytes, want: tuple[str, ...], timeout_s: float = 10.0) -> tuple[bytes, object]:
    """Send ``frame`` on a TX socket and return (raw reply, decoded) of the first reply whose TYPE is in
    ``want`` (others, such as CHANNEL, skipped); AssertionError after ``timeout_s`` s without one."""
    sock.send(frame)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = sock.recv(200)
        if got is not None:
            msg = decode(got)
            if msg.TYPE in want:
                return got, msg
    raise AssertionError(f"no {want} within {timeout_s} s")


def hello(codec, session_id=5, next_seq=0, fingerprint=None, mode="pca-lora", **params) -> bytes:
    params = {"codec": codec.name, "d_raw": codec.d_raw, "d_pre": codec.d_max, "value_dtype": "float16",
              "deadline_s": 1.0,
              **params}
    return encode(Hello("tx", session_id, mode, fingerprint or codec.fingerprint, params, next_seq, 0,
                        os.getpid(), time.time_ns()))


def tx_node(codec, data, sock, stop=None, session_id=None, **cfg) -> TxNode:
    """A pca-lora TX node; ``cfg`` mixes PcaLoraTxConfig and TxConfig keys."""
    mode_keys = set(PcaLoraTxConfig.__dataclass_fields__)
    half = PcaLoraTx(codec, data, PcaLoraTxConfig(**{k: v for k, v in cfg.items() if k in mode_keys}))
    config = TxConfig(**{k: v for k, v in cfg.items() if k not in mode_keys})
    return TxNode(half, sock, config, stop, session_id)


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
    curve = any(a.startswith("--curve") for a in extra)
    modes = extra[extra.index("--mode") + 1].split(",") if "--mode" in extra else [DEFAULT_MODE]
    fixed_steps = {"adapt_steps": 20} if "pca-lora" in modes else {}  # a pca-lora option: refused by other modes
    argv = daemon_argv("rx", {"bind": address, "insecure": not curve, "artifacts": artifacts, **fixed_steps})
    proc = subprocess.Popen([*argv, *extra],
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
