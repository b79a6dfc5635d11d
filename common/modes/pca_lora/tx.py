"""pca-lora's TX half: channel feedback -> budget -> alpha -> encode -> PAYLOAD -> RESULT.

Per round (the paper's steps 2-3): the budget ``B_max = rate x deadline``,
``alpha`` from the policy, ``N_max`` training vectors from eq. 2 with the real
header sizes of the PAYLOAD layout, then ``n_test`` test and ``n_train``
training vectors PCA-encoded, quantized and sent in one PAYLOAD.

A round costs only what it must: when there is nothing to align, ``n_train``
is 0 (or what the policy table says still pays, :func:`lean_n_train`) instead
of ``N_max``. What the TX knows: alpha = d_pre is the RX's own pre-training
dimension (nothing to align, always); an alpha is also aligned when the RX's
last RESULT listed it in ``aligned_alphas`` (its adapter bank holds an
adapter for it; the TX cannot see the bank otherwise). ``fill_payload``
restores the paper's rule (every payload filled) to reproduce its figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from common.codecs.base import Codec
from common.data.datasets import Dataset
from common.modes.base import RoundFailed, RoundIO, TxHalf
from common.modes.pca_lora.budget import BudgetError, PayloadLayout, budget_bytes, n_train_max
from common.modes.pca_lora.messages import Payload
from common.modes.pca_lora.policy import AccuracyTable, AlphaPolicy, BudgetView, largest_fitting, lean_n_train
from common.results.log import RoundRecord
from common.wire.protocol import Result


@dataclass(frozen=True)
class PcaLoraTxConfig:
    """Per-round payload settings: vectors per payload, value format, deadline (s), sampling seed.

    ``n_min_train``: training vectors the alpha policy keeps room for;
    ``max_train``: cap on training vectors per payload (0 = no cap);
    ``fill_payload``: send ``N_max`` training vectors even when there is
    nothing to align (the paper's rule).
    """

    n_test: int = 500
    n_min_train: int = 2000
    max_train: int = 0
    value_dtype: str = "float16"
    deadline_s: float = 0.05
    seed: int = 0
    fill_payload: bool = False

    def __post_init__(self):
        if self.n_test < 1:
            raise ValueError(f"n_test must be >= 1, got {self.n_test}")
        if self.n_min_train < 0 or self.max_train < 0:
            raise ValueError(f"n_min_train={self.n_min_train} and max_train={self.max_train} must be >= 0")
        if not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")
        PayloadLayout.for_dtype(self.value_dtype)


class PcaLoraTx(TxHalf):
    """Owns the data and the codec; builds one PAYLOAD per round."""

    mode = "pca-lora"

    def __init__(self, codec: Codec, data: Dataset, config: PcaLoraTxConfig = PcaLoraTxConfig(),
                 policy: AlphaPolicy = largest_fitting, policy_name: str = "largest",
                 dataset: str | None = None, artifacts: str | None = None, table: AccuracyTable | None = None):
        self.codec = codec
        self.data = data
        self.config = config
        self.policy = policy
        self.policy_name = policy_name
        self.layout = PayloadLayout.for_dtype(config.value_dtype)
        self.fingerprint = codec.fingerprint
        self.source = {"dataset": dataset, "artifacts": artifacts}
        self.table = table
        self.aligned: set[int] = set()  # alphas the RX announced adapters for (RESULT aligned_alphas)

    def hello_params(self) -> dict:
        return {"codec": self.codec.name, "d_raw": self.codec.d_raw, "d_pre": self.codec.d_max,
                "value_dtype": self.config.value_dtype, "deadline_s": self.config.deadline_s}

    def config_record(self) -> dict:
        return {**self.source, "fingerprint": self.codec.fingerprint, "d_pre": self.codec.d_max, "policy": self.policy_name,
                **{k: getattr(self.config, k) for k in PcaLoraTxConfig.__dataclass_fields__}}

    def run_round(self, seq: int, channel, rec: RoundRecord, io: RoundIO) -> None:
        cfg = self.config
        f = rec.fields
        rec.deadline_s = cfg.deadline_s
        f.update(n_test=cfg.n_test, bytes_per_value=self.layout.bytes_per_value,
                 header_bytes=self.layout.header_bytes, vector_header_bytes=self.layout.vector_header_bytes)
        try:
            f["b_max_bytes"] = budget_bytes(channel.rate_bps, cfg.deadline_s)
            f["alpha"] = self.policy(BudgetView(f["b_max_bytes"], self.codec.d_max, cfg.n_test,
                                                cfg.n_min_train, self.layout))
            f["n_train_max"] = n_train_max(f["b_max_bytes"], f["alpha"], cfg.n_test, self.layout)
        except (BudgetError, ValueError) as e:
            raise RoundFailed(f"budget: {e}") from e
        f["nothing_to_align"] = self.nothing_to_align(f["alpha"])
        f["payload_rule"] = "fill" if cfg.fill_payload or not f["nothing_to_align"] else "lean"
        n_wanted = f["n_train_max"]
        if f["payload_rule"] == "lean":
            n_wanted = lean_n_train(self.table if f["nothing_to_align"] == "d_pre" else None, f["alpha"],
                                    n_wanted)
        f["n_train"] = self._n_train(n_wanted)
        t_start = time.time_ns()
        z, ids, labels = self._encode(seq, f["alpha"], f["n_train"])
        t_encoded = time.time_ns()
        msg = Payload.build(io.session_id, seq, self.codec.fingerprint, cfg.value_dtype, z, ids, labels,
                            cfg.n_test)
        reply: Result = io.exchange(msg, (Result.TYPE,))
        self._record(rec, reply, t_start, t_encoded, io)
        announced = reply.fields.get("aligned_alphas")
        if isinstance(announced, list):  # an RX that announces them; the latest list replaces the last
            self.aligned = {a for a in announced if isinstance(a, int) and 1 <= a <= self.codec.d_max}

    def nothing_to_align(self, alpha: int) -> str | None:
        """Why the RX needs no training vectors at ``alpha``: "d_pre", "bank", or None."""
        if alpha == self.codec.d_max:
            return "d_pre"
        return "bank" if alpha in self.aligned else None

    def _n_train(self, n_max: int) -> int:
        """``n_max`` capped by the training set size and by ``max_train`` (0 = no cap)."""
        cap = len(self.data.y_train)
        if self.config.max_train:
            cap = min(cap, self.config.max_train)
        return min(n_max, cap)

    def _encode(self, seq: int, alpha: int, n_train: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample round ``seq``'s vectors and PCA-encode them: z float32 (n, alpha), ids uint32, labels uint8."""
        rng = np.random.default_rng([self.config.seed, seq])
        test_idx = rng.choice(len(self.data.y_test), self.config.n_test, replace=False)
        train_idx = rng.choice(len(self.data.y_train), n_train, replace=False)
        x = np.concatenate([self.data.x_test[test_idx], self.data.x_train[train_idx]])
        z = self.codec.encode(x, alpha)
        labels = np.concatenate([self.data.y_test[test_idx], self.data.y_train[train_idx]])
        ids = np.concatenate([test_idx, train_idx]).astype(np.uint32)
        return z, ids, labels

    @staticmethod
    def _record(rec: RoundRecord, r: Result, t_start: int, t_encoded: int, io: RoundIO) -> None:
        """Fill ``rec`` from the RESULT: accuracies and the paper's latency definitions (ms)."""
        off = io.clock_offset_ns
        rec.status = "ok"
        rec.rx_pid = r.rx_pid
        rec.fields.update(acc_pretrained=r.fields["acc_pretrained"], acc_adapted=r.fields["acc_adapted"],
                          adapt=r.fields["adapt"])
        rec.airtime_ms = r.timings_ms.get("airtime")
        lat = {
            "encode": (t_encoded - t_start) / 1e6,
            "pack": (io.sent_ns - t_encoded) / 1e6,
            "transfer": (r.t_delivered_ns - off - io.sent_ns) / 1e6,
            "reconstruct": r.timings_ms["reconstruct"],
            "finetune": r.timings_ms["finetune"],
            "classify": r.timings_ms["classify"],
        }
        lat["communication"] = (r.t_decoded_ns - off - t_start) / 1e6
        lat["fine_tuning"] = lat["communication"] + lat["finetune"]
        lat["classification"] = lat["fine_tuning"] + lat["classify"]
        lat["rtt"] = (io.replied_ns - io.sent_ns) / 1e6
        rec.latency_ms = lat
