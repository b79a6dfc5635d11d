"""Modes are plug-ins: a throwaway mode defined here runs over the real daemons, untouched.

The ``identity`` mode sends raw vectors (an identity codec) in its own
message type and the RX classifies nothing: it returns the per-vector sums,
which the TX checks. Nothing in ``rx_node`` or ``tx_node`` knows it exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from common.link.sidelink import create_sidelink
from common.modes.base import (
    MODES,
    Mode,
    Reply,
    RoundError,
    RoundFailed,
    RxHalf,
    TxHalf,
    get_mode,
    mode_names,
    register_mode,
)
from common.net.transport import TxSocket
from common.results.log import ResultsLog, load_results
from common.wire.protocol import Error, Result, decode, register_message
from rx_node.daemon import RxNode
from tests.helpers import ServedRx, hello
from tx_node.daemon import HandshakeFailed, TxConfig, TxNode

FINGERPRINT = "1d" * 32


@register_message
@dataclass(frozen=True)
class Vectors:
    """The identity mode's request: ``n`` float32 vectors of ``dim`` values, raw little-endian."""

    TYPE: ClassVar[str] = "TEST_VECTORS"
    session_id: int
    seq: int
    dim: int
    values: bytes


class IdentityRx(RxHalf):
    mode = "identity"
    fingerprint = FINGERPRINT

    def hello_params(self) -> dict:
        return {"dim": 4}

    def check_hello(self, params: dict) -> str | None:
        return None if params.get("dim") == 4 else f"dim={params.get('dim')}, this RX takes dim=4"

    def handlers(self) -> dict:
        return {Vectors.TYPE: self.on_vectors}

    def on_vectors(self, msg: Vectors, ctx) -> Reply:
        x = np.frombuffer(msg.values, "<f4").reshape(-1, msg.dim)
        if not np.isfinite(x).all():
            raise RoundError("non_finite", "vectors hold NaN/Inf")
        ctx.session["rounds"] = ctx.session.get("rounds", 0) + 1
        return Reply(Result(msg.session_id, msg.seq, {"sums": x.sum(1).tolist(), "seen": ctx.session["rounds"]},
                            b"", {}, ctx.rx_pid, ctx.received_ns, ctx.received_ns, ctx.received_ns, ctx.received_ns))


class IdentityTx(TxHalf):
    mode = "identity"
    fingerprint = FINGERPRINT

    def __init__(self, dim: int = 4, poison: int = -1):
        self.dim, self.poison = dim, poison

    def hello_params(self) -> dict:
        return {"dim": self.dim}

    def config_record(self) -> dict:
        return {"dim": self.dim}

    def run_round(self, seq, channel, rec, io) -> None:
        x = np.arange(3 * self.dim, dtype=np.float32).reshape(3, self.dim) + seq
        if seq == self.poison:
            x[0, 0] = np.nan
        reply = io.exchange(Vectors(io.session_id, seq, self.dim, x.tobytes()), (Result.TYPE,))
        if not np.allclose(reply.fields["sums"], x.sum(1)):
            raise RoundFailed(f"sums {reply.fields['sums']} != {x.sum(1).tolist()}")
        rec.fields.update(sums=reply.fields["sums"], seen=reply.fields["seen"])
        rec.status = "ok"


@register_mode
class Identity(Mode):
    name = "identity"
    summary = "test mode: raw vectors in, their sums out"

    @classmethod
    def build_rx(cls, opts):
        return IdentityRx()

    @classmethod
    def build_tx(cls, opts):
        return IdentityTx()


@pytest.fixture
def rx_thread():
    """An RX serving only the identity mode over real sockets, in a thread of this process."""
    served = ServedRx(RxNode({"identity": get_mode("identity").build_rx({})},
                             create_sidelink("loopback", trace="demo")), 1 << 20)
    yield served.node, served.address
    served.stop()


def tx(address, half, **cfg):
    return TxNode(half, TxSocket(address), TxConfig(hello_timeout_s=0.5, hello_attempts=4, clock_samples=1,
                                                     result_timeout_s=2.0, **cfg))


def test_a_new_mode_runs_over_the_unchanged_daemons(rx_thread, tmp_path):
    node, address = rx_thread
    results = ResultsLog(tmp_path, {"mode": "identity"})
    records = tx(address, IdentityTx(poison=1)).run(3, results)
    assert [r.status for r in records] == ["ok", "failed", "ok"], [r.error for r in records]
    assert "non_finite" in records[1].error  # the mode's refusal reaches the TX's record
    rows = load_results(tmp_path)["rounds"]
    assert rows[0]["mode"] == "identity" and rows[0]["sums"] == [6.0, 22.0, 38.0]
    assert rows[2]["seen"] == 2  # the mode's per-session store lives across rounds
    assert node.stats.ok == 2 and node.stats.failed == 1


def test_rx_refuses_a_mode_it_does_not_serve(rx_thread, digits_artifacts):
    from common.modes.pca_lora.artifacts import load_codec

    node, _ = rx_thread
    codec, _ = load_codec(digits_artifacts)
    err = decode(node.handle(b"p", [hello(codec, mode="pca-lora")])[0])
    assert isinstance(err, Error) and err.code == "mode"
    assert "serves mode identity, not 'pca-lora'" in err.message and "--mode" in err.message


def test_mode_parameters_are_checked_at_hello(rx_thread, tmp_path):
    _, address = rx_thread
    with pytest.raises(HandshakeFailed, match="params: mode identity: dim=5, this RX takes dim=4"):
        tx(address, IdentityTx(dim=5)).run(1, ResultsLog(tmp_path, {}))


def test_registry_names_modes_and_refuses_unknown_ones():
    assert {"pca-lora", "identity"} <= set(mode_names())
    assert get_mode("pca-lora").name == "pca-lora"  # built-in: imported on first use
    with pytest.raises(ValueError, match="unknown mode 'nope'; known modes: .*pca-lora"):
        get_mode("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_mode(type("Other", (Identity,), {}))
    assert MODES["identity"] is Identity
