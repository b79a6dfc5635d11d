"""pca-lora's TX half: channel feedback -> budget -> alpha -> encode -> PAYLOAD -> RESULT.

Per round (the paper's steps 2-3): the budget ``B_max = rate x deadline``,
``alpha`` from the policy, ``N_max`` training vectors from eq. 2 with the real
header sizes of the PAYLOAD layout, then ``n_test`` test and ``n_train``
training vectors PCA-encoded, quantized and sent in one PAYLOAD -- or, with
``train_parts = K``, in K + 1 frames sent back to back: K PAYLOAD_TRAIN (the
training vectors in equal parts) then PAYLOAD (the test vectors), each part
encoded just before it is sent, so encoding, air time and the RX's adaptation
overlap (the budget then pays every frame's header).

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
from common.modes.pca_lora.messages import MAX_TRAIN_PARTS, Payload, TrainAck, TrainPart
from common.modes.pca_lora.policy import AccuracyTable, AlphaPolicy, BudgetView, largest_fitting, lean_n_train
from common.results.log import RoundRecord
from common.wire.protocol import Result


@dataclass(frozen=True)
class PcaLoraTxConfig:
    """Per-round payload settings: vectors per payload, value format, deadline (s), sampling seed.

    ``n_min_train``: training vectors the alpha policy keeps room for;
    ``max_train``: cap on training vectors per payload (0 = no cap);
    ``fill_payload``: send ``N_max`` training vectors even when there is
    nothing to align (the paper's rule). ``train_parts``: 0 sends one PAYLOAD
    (test then training vectors: the paper's); K >= 1 sends the training
    vectors first in K PAYLOAD_TRAIN frames, then the test vectors in PAYLOAD.
    """

    n_test: int = 500
    n_min_train: int = 2000
    max_train: int = 0
    value_dtype: str = "float16"
    deadline_s: float = 0.05
    seed: int = 0
    fill_payload: bool = False
    # 0: one PAYLOAD (the paper's rounds). 4 parts reach classification 1.5x sooner at alpha 20 / 170 Mb/s
    # but 0.1-0.3 pp less accurate (the first parts train on fewer vectors): docs/benchmarks.md, "Rounds in parts"
    train_parts: int = 0

    def __post_init__(self):
        if not 0 <= self.train_parts <= MAX_TRAIN_PARTS:
            raise ValueError(f"train_parts must be in [0, {MAX_TRAIN_PARTS}], got {self.train_parts}")
        if self.n_test < 1:
            raise ValueError(f"n_test must be >= 1, got {self.n_test}")
        if self.n_min_train < 0 or self.max_train < 0:
            raise ValueError(f"n_min_train={self.n_min_train} and max_train={self.max_train} must be >= 0")
        if not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {self.deadline_s}")
        PayloadLayout.for_dtype(self.value_dtype)


class PcaLoraTx(TxHalf):
    """Owns the data and the codec; builds each round's frames (one PAYLOAD, or training parts then PAYLOAD)."""

    mode = "pca-lora"

    def __init__(self, codec: Codec, data: Dataset, config: PcaLoraTxConfig = PcaLoraTxConfig(),
                 policy: AlphaPolicy = largest_fitting, policy_name: str = "largest",
                 dataset: str | None = None, artifacts: str | None = None, table: AccuracyTable | None = None):
        self.codec = codec
        self.data = data
        self.config = config
        self.policy = policy
        self.policy_name = policy_name
        self.layout = PayloadLayout.for_dtype(config.value_dtype, config.train_parts)
        self.fingerprint = codec.fingerprint
        self.source = {"dataset": dataset, "artifacts": artifacts}
        self.table = table
        self.aligned: set[int] = set()  # alphas the RX announced adapters for (RESULT aligned_alphas)

    def hello_params(self) -> dict:
        return {"codec": self.codec.name, "d_raw": self.codec.d_raw, "d_pre": self.codec.d_max,
                "value_dtype": self.config.value_dtype, "deadline_s": self.config.deadline_s,
                "train_parts": self.config.train_parts}

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
        test_idx, train_idx = self._sample(seq, f["n_train"])
        # the session announced train_parts; fewer training vectors than that (none, in a lean round): one PAYLOAD
        parts = np.array_split(train_idx, cfg.train_parts) if 0 < cfg.train_parts <= len(train_idx) else []
        f["parts"] = len(parts) + 1
        stages = {"encode": 0, "build": 0}
        msgs = self._messages(io.session_id, seq, f["alpha"], test_idx, train_idx, parts, stages)
        reply: Result = io.exchange_all(msgs, [(TrainAck.TYPE,)] * len(parts) + [(Result.TYPE,)])[-1]
        self._record(rec, reply, t_start, stages, io)
        announced = reply.fields.get("aligned_alphas")
        if isinstance(announced, list):  # an RX that announces them; the latest list replaces the last
            self.aligned = {a for a in announced if isinstance(a, int) and 1 <= a <= self.codec.d_max}

    def _messages(self, session_id: int, seq: int, alpha: int, test_idx: np.ndarray, train_idx: np.ndarray,
                  parts: list[np.ndarray], stages: dict):
        """The round's frames, each encoded when it is about to be sent (a generator): one PAYLOAD with
        the test then the training rows, or one PAYLOAD_TRAIN per part of ``train_idx`` then PAYLOAD with
        the test rows. ``stages`` accumulates encode and build time (ns)."""
        cfg, fp, d = self.config, self.codec.fingerprint, self.data

        def build(cls, x_test_idx, x_train_idx):
            t0 = time.time_ns()
            x = np.concatenate([d.x_test[x_test_idx], d.x_train[x_train_idx]])
            z = self.codec.encode(x, alpha)
            labels = np.concatenate([d.y_test[x_test_idx], d.y_train[x_train_idx]])
            ids = np.concatenate([x_test_idx, x_train_idx]).astype(np.uint32)
            t1 = time.time_ns()
            msg = cls.build(session_id, seq, fp, cfg.value_dtype, z, ids, labels, len(x_test_idx))
            stages["encode"] += t1 - t0
            stages["build"] += time.time_ns() - t1
            stages.setdefault("first", time.time_ns() - t0)
            return msg

        none = np.zeros(0, np.int64)
        if not parts:
            yield build(Payload, test_idx, train_idx)
            return
        for part in parts:
            yield build(TrainPart, none, part)
        yield build(Payload, test_idx, none)

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

    def _sample(self, seq: int, n_train: int) -> tuple[np.ndarray, np.ndarray]:
        """Round ``seq``'s test and training row indices (seeded by the config's seed and ``seq``)."""
        rng = np.random.default_rng([self.config.seed, seq])
        test_idx = rng.choice(len(self.data.y_test), self.config.n_test, replace=False)
        return test_idx, rng.choice(len(self.data.y_train), n_train, replace=False)

    @staticmethod
    def _record(rec: RoundRecord, r: Result, t_start: int, stages: dict, io: RoundIO) -> None:
        """Fill ``rec`` from the RESULT: accuracies and the paper's latency definitions (ms).

        ``stages``: encode and build time (ns) of all the round's frames. With
        several frames, ``encode`` and ``pack`` (quantize and build, plus the
        first frame's serialization up to its send) sum over them (the later
        frames' overlap the earlier ones' transfer), ``transfer`` runs from the
        first send to the PAYLOAD's delivery; the cumulative figures
        (``communication`` .. ``classification``) stay times since ``t_start``.
        """
        off = io.clock_offset_ns
        rec.status = "ok"
        rec.rx_pid = r.rx_pid
        rec.fields.update(acc_pretrained=r.fields["acc_pretrained"], acc_adapted=r.fields["acc_adapted"],
                          adapt=r.fields["adapt"])
        rec.airtime_ms = r.timings_ms.get("airtime")
        lat = {
            "encode": stages["encode"] / 1e6,
            "pack": (stages["build"] + io.sent_ns - t_start - stages["first"]) / 1e6,
            "transfer": (r.t_delivered_ns - off - io.sent_ns) / 1e6,
            "reconstruct": r.timings_ms["reconstruct"],
            "finetune": r.timings_ms["finetune"],
            "classify": r.timings_ms["classify"],
        }
        lat["communication"] = (r.t_decoded_ns - off - t_start) / 1e6
        # the adapted model is ready this long after the test vectors are decoded (with a training part
        # sent first, the adaptation overlapped their air time)
        lat["fine_tuning"] = lat["communication"] + r.timings_ms.get("finetune_wait", lat["finetune"])
        lat["classification"] = lat["fine_tuning"] + lat["classify"]
        lat["rtt"] = (io.replied_ns - io.sent_ns) / 1e6
        rec.latency_ms = lat
