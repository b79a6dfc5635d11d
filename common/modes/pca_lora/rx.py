"""pca-lora's RX half: dequantize -> align (the adaptation recipe) -> classify -> RESULT.

One PAYLOAD is one round: the link delivers it (air time, HARQ), the features
are dequantized and checked, the classifier adapted on the training
vectors by the alignment strategy (a payload without training vectors is
classified by the frozen model, or by the bank's adapter for its alpha), and
the test vectors classified with both the frozen and the adapted model, the
reconstruction ``x_hat = z P_alpha + mean`` folded into the first layer (test
labels travel for evaluation only). RESULT also lists the alphas the RX can
serve this TX without training vectors (``aligned_alphas``: its adapters in
the bank), so the TX can leave them out.

The adapter bank (optional, :mod:`~common.modes.pca_lora.adapter_bank`) is
keyed by the round's session owner (``RoundContext.owner``): a round reads
and stores only its owner's adapters (all sessions one owner with
``bank_shared``); a session bound to nothing, and the start-up warm-up,
neither read nor store any.

A round in parts (``--train-parts K`` at the TX, announced in HELLO) sends the
training vectors first, in K PAYLOAD_TRAIN frames, then the test vectors in
PAYLOAD. The RX adapts on each part as it is delivered (its stretch of the
steps one PAYLOAD would get, continuing the previous part's training) and answers TRAIN_ACK
(not round-final); PAYLOAD is classified with the model adapted meanwhile.
The parts share the link in turn (each is delivered one air time after the
previous one), and adaptation runs one part at a time on the RX timeline, so
encoding at the TX, air time and adaptation overlap: classification starts at
``max(test part decoded, last part adapted)``.
"""


from __future__ import annotations

import logging
import time
import weakref

import numpy as np
from torch import nn

from common.codecs.base import Codec
from common.learn import process_tuning
from common.learn.models import accuracy, fold_decoder, predict
from common.modes.base import Reply, RoundContext, RoundError, RxHalf
from common.modes.pca_lora.adapter_bank import SHARED, AdapterBank
from common.modes.pca_lora.banked_alignment import BankedAlignment
from common.modes.pca_lora.strategy import AlignmentStrategy
from common.modes.pca_lora.limits import RxLimits
from common.modes.pca_lora.messages import MAX_TRAIN_PARTS, NO_LABEL, Payload, TrainAck, TrainPart
from common.wire.protocol import Result
from common.wire.values import VALUE_FORMATS

log = logging.getLogger("semalign.rx")


class _Held:
    """Bytes of training parts a session's unfinished round holds; kept in the session's store, counted
    per owner through weak references (a session the daemon evicts stops counting with it)."""

    __slots__ = ("nbytes", "__weakref__")

    def __init__(self):
        self.nbytes = 0


class PcaLoraRx(RxHalf):
    """Holds the codec, the frozen classifier, the alignment strategy and the adapter bank (optional;
    ``bank_shared``: one owner for every session, see the module docstring)."""

    mode = "pca-lora"

    def __init__(self, codec: Codec, model: nn.Sequential, strategy: AlignmentStrategy, n_classes: int = 10,
                 limits: "RxLimits | None" = None, bank: AdapterBank | None = None, bank_shared: bool = False):
        self.codec = codec
        self.model = model
        self.strategy = strategy
        self.bank = bank
        self.bank_shared = bank_shared
        self.n_classes = n_classes
        self.limits = limits or RxLimits()
        self.fingerprint = codec.fingerprint
        self._folded: dict[int, nn.Sequential] = {}  # the frozen model with the decoder folded in, by alpha
        self._held: dict[str | None, weakref.WeakSet] = {}  # owner -> its sessions' _Held

    def hello_params(self) -> dict:
        return {"codec": self.codec.name, "d_raw": self.codec.d_raw, "d_pre": self.codec.d_max}

    hello_param_keys = frozenset({"codec", "d_raw", "d_pre", "value_dtype", "deadline_s", "train_parts"})

    def check_hello(self, params: dict) -> str | None:
        if params.get("codec") != self.codec.name or params.get("d_raw") != self.codec.d_raw:
            return (f"codec {params.get('codec')}/d_raw={params.get('d_raw')} != RX "
                    f"{self.codec.name}/d_raw={self.codec.d_raw}")
        if params.get("d_pre") != self.codec.d_max:
            return f"d_pre={params.get('d_pre')!r} != the RX basis's d_pre={self.codec.d_max}"
        if params.get("value_dtype") not in VALUE_FORMATS:
            return f"value_dtype {params.get('value_dtype')!r} is not one of {sorted(VALUE_FORMATS)}"
        deadline = params.get("deadline_s")
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or \
                not 0 < deadline <= self.limits.max_deadline_s:
            return (f"deadline_s={deadline!r}: this RX takes deadlines in (0, {self.limits.max_deadline_s}] s "
                    "(its payload budget is rate x deadline)")
        parts = params.get("train_parts", 0)
        if isinstance(parts, bool) or not isinstance(parts, int) or not 0 <= parts <= MAX_TRAIN_PARTS:
            return f"train_parts={parts!r}: use an int in [0, {MAX_TRAIN_PARTS}]"
        return None

    def handlers(self) -> dict:
        return {Payload.TYPE: self.on_payload, TrainPart.TYPE: self.on_train_part}

    def strategy_for(self, owner: str | None) -> AlignmentStrategy:
        """The alignment of a round of a session bound to ``owner`` (``RoundContext.owner``): with a bank,
        through ``owner``'s adapters (:data:`SHARED`'s with ``bank_shared``); without one, or for a
        session bound to nothing, the strategy alone."""
        who = SHARED if self.bank_shared else owner
        if self.bank is None or who is None:
            return self.strategy
        return BankedAlignment(self.strategy, self.bank.owner(who))

    def warm_up(self) -> None:
        """Calibrate the adaptation's step count to its budget on this machine (once per process),
        pay the adaptation's one-time costs (:meth:`AlignmentStrategy.warm_up`: every stage, in its
        precision, at real round shapes; the strategy alone, so the adapter bank is never read or
        written) and run inference, so the
        first real round pays no start-up cost.

        numpy's BLAS is limited to torch's thread count first: its idle worker
        threads spin after each multi-threaded product and slowed the training
        steps that followed a reconstruction by up to 2x on a 2-core machine.
        """
        process_tuning.match_blas_threads()
        info = self.strategy.warm_up(self.model, self.codec)
        if info:
            log.info("adaptation: recipe %s, frozen layers in %s, %.2f ms/step at alpha %d, %.1f ms fixed",
                     info["recipe"], info["precision"], info["per_step_ms"][0][0] + info["per_step_ms"][0][1]
                     * self.codec.d_max, self.codec.d_max, info["overhead_ms"])
        self.classify(self.model, np.zeros((8, self.codec.d_max), np.float32))

    # ------------------------------------------------------------ PAYLOAD

    def check(self, p: Payload, ctx: RoundContext, earlier_bytes: int = 0) -> None:
        """Raise :class:`RoundError` for a payload this RX cannot use or that costs more than it may.

        Budget: the payload may not exceed ``rate x deadline`` of the round's
        announced CHANNEL and the session's HELLO, plus ``budget_tolerance``
        (``earlier_bytes``: what the round's earlier part already took of it).
        Work: at most ``max_test_vectors`` test vectors (each is classified).
        """
        declared = ctx.session.get("hello_params", {}).get("value_dtype")
        if declared is not None and p.value_dtype != declared:
            raise RoundError("bad_message", f"{p.TYPE} value_dtype {p.value_dtype} != {declared}, the session's "
                                            "(HELLO params value_dtype)")
        deadline_s = ctx.session.get("hello_params", {}).get("deadline_s")
        if deadline_s is not None:
            budget = ctx.state.rate_bps * deadline_s / 8 * (1 + self.limits.budget_tolerance)
            if ctx.nbytes + earlier_bytes > budget:
                raise RoundError("over_budget", f"payload of {ctx.nbytes + earlier_bytes} B exceeds the round's budget of "
                                                f"{int(budget)} B ({ctx.state.rate_bps / 1e6:.1f} Mb/s x "
                                                f"{deadline_s} s, +{self.limits.budget_tolerance:.0%})")
        if p.n_test > self.limits.max_test_vectors:
            raise RoundError("too_much_work", f"n_test={p.n_test} test vectors; this RX classifies at most "
                                              f"{self.limits.max_test_vectors} per payload")
        if p.fingerprint.hex() != self.codec.fingerprint:
            raise RoundError("fingerprint", f"payload basis fingerprint {p.fingerprint.hex()[:12]}... does "
                                            f"not match the RX's {self.codec.fingerprint[:12]}...")
        if p.alpha > self.codec.d_max:
            raise RoundError("alpha", f"alpha={p.alpha} exceeds d_pre={self.codec.d_max} of the RX's basis")
        train_labels = p.labels[p.n_test:]
        if np.any(train_labels >= self.n_classes):
            bad = int(train_labels[train_labels >= self.n_classes][0])
            raise RoundError("bad_label", f"training label {bad} outside [0, {self.n_classes})")

    def on_train_part(self, p: TrainPart, ctx: RoundContext) -> Reply:
        """One of the session's ``train_parts`` training parts of round ``p.seq``: adapt on every part so
        far, from the moment this one is delivered and the previous one's adaptation ended (RX timeline)."""
        parts = ctx.session.get("hello_params", {}).get("train_parts", 0)
        r = ctx.session.get("train_part")
        if r is None or r["seq"] != p.seq:  # a new round (an unfinished earlier one is dropped)
            r = ctx.session["train_part"] = {"seq": p.seq, "alpha": p.alpha, "z": [], "y": [], "sizes": [],
                                             "nbytes": 0, "link_free_ns": 0, "adapted_ns": 0, "carry": None,
                                             "finetune_s": 0.0, "transmissions": 0, "airtime_s": 0.0}
        if len(r["sizes"]) >= parts or p.alpha != r["alpha"]:
            raise RoundError("bad_message", f"PAYLOAD_TRAIN {len(r['sizes']) + 1} at alpha={p.alpha} in round "
                                            f"{p.seq}: the session announced train_parts={parts} (alpha "
                                            f"{r['alpha']})")
        held = self._holder(ctx)
        held.nbytes = r["nbytes"]  # what this round holds (an unfinished earlier round was dropped above)
        total = sum(h.nbytes for h in self._held[ctx.owner])
        if total + ctx.nbytes > self.limits.max_held_bytes_per_key:
            raise RoundError("parts_held", f"this key's unfinished rounds in parts hold {total} bytes; this "
                                           f"{ctx.nbytes}-byte part would pass the {self.limits.max_held_bytes_per_key}"
                                           "-byte limit per key (--max-held-bytes-per-key): finish or drop rounds")
        self.check(p, ctx, r["nbytes"])
        delivery = ctx.deliver(ctx.nbytes)
        t_delivered = max(delivery.delivered_ns, time.time_ns(), r["link_free_ns"] + int(delivery.delay_s * 1e9))
        z = self._features(p)
        r["z"].append(z)
        r["y"].append(p.labels)
        r["sizes"].append(p.n_train)
        t0 = time.perf_counter()
        r["adapted"], report, r["carry"] = self.strategy_for(ctx.owner).adapt_part(
            self.model, np.concatenate(r["z"]), np.concatenate(r["y"]), self.codec, r["sizes"], parts, r["carry"])
        finetune_s = time.perf_counter() - t0
        r["adapted_ns"] = max(t_delivered, r["adapted_ns"]) + int(finetune_s * 1e9)
        r["adapt"] = report.to_dict()
        r["nbytes"] += ctx.nbytes
        held.nbytes = r["nbytes"]
        r["link_free_ns"] = t_delivered
        r["finetune_s"] += finetune_s
        r["transmissions"] += delivery.transmissions
        r["airtime_s"] += delivery.airtime_s
        return Reply(TrainAck(p.session_id, p.seq, sum(r["sizes"]), finetune_s * 1e3), final=False,
                     not_before_ns=r["adapted_ns"])

    def _holder(self, ctx: RoundContext) -> _Held:
        """The session's :class:`_Held`, counted in its owner's set."""
        held = ctx.session.get("held")
        if held is None:
            held = ctx.session["held"] = _Held()
            self._held.setdefault(ctx.owner, weakref.WeakSet()).add(held)
        return held

    def on_payload(self, p: Payload, ctx: RoundContext) -> Reply:
        """One round (or its second part). The link's air time is emulated without holding the RX: the
        payload counts as delivered at ``t_delivered`` (receipt + air time; after a training part, one air
        time after that part's delivery, as the two share the link in turn), every RX timestamp is on that
        timeline, and the reply is held until ``t_transmit`` (``Reply.not_before_ns``) while other peers
        are served."""
        part = ctx.session.pop("train_part", None)
        if "held" in ctx.session:
            ctx.session["held"].nbytes = 0  # the round's parts are released with this PAYLOAD, whatever it is
        if part is not None and part["seq"] != p.seq:
            part = None  # parts of a round the TX gave up on
        if part is not None:
            parts = ctx.session.get("hello_params", {}).get("train_parts", 0)
            if p.n_train or p.alpha != part["alpha"] or len(part["sizes"]) != parts:
                raise RoundError("bad_message", f"PAYLOAD after {len(part['sizes'])} of {parts} training parts "
                                                f"(alpha {part['alpha']}) must follow all of them and carry test "
                                                f"vectors only at their alpha (got n_train={p.n_train}, "
                                                f"alpha={p.alpha})")
        self.check(p, ctx, part["nbytes"] if part else 0)
        strategy = self.strategy_for(ctx.owner)
        delivery = ctx.deliver(ctx.nbytes)
        t_delivered = max(delivery.delivered_ns, time.time_ns())
        if part is not None:  # the link carried the training parts first
            t_delivered = max(t_delivered, part["link_free_ns"] + int(delivery.delay_s * 1e9))
        t_start = time.perf_counter()

        t0 = time.perf_counter()
        z = self._features(p)
        z_test = z[: p.n_test]  # the decode x = z M + c is folded into the classifier (classify)
        t1 = time.perf_counter()
        t_decoded = t_delivered + int((t1 - t_start) * 1e9)

        if part is not None:
            adapted, adapt_info = part["adapted"], part["adapt"]
            finetune_ms = part["finetune_s"] * 1e3
            t_ready = max(t_decoded, part["adapted_ns"])  # classification waits for the adaptation
        else:
            if p.n_train:
                adapted, report = strategy.adapt(self.model, z[p.n_test:], p.labels[p.n_test:], self.codec)
                adapt_info = report.to_dict()
            else:  # nothing to align (alpha = d_pre, or an adapter the bank holds): no training
                adapted, adapt_info = strategy.without_training(self.model, p.alpha, self.codec)
            finetune_ms = (time.perf_counter() - t1) * 1e3
            t_ready = t_decoded + int(finetune_ms * 1e6)
        t2 = time.perf_counter()
        pred = self.classify(adapted, z_test)
        t3 = time.perf_counter()

        y_test = p.labels[: p.n_test]
        labelled = y_test != NO_LABEL
        acc_ada = accuracy(pred[labelled], y_test[labelled])
        # the frozen model's accuracy, for evaluation only (inferred again only when the model was adapted)
        acc_pre = acc_ada if adapted is self.model else accuracy(self.classify(self.model, z_test[labelled]),
                                                                  y_test[labelled])
        n_train = sum(part["sizes"]) if part else p.n_train
        log.info("seq %d: alpha=%d n_train=%d acc %.3f -> %.3f (finetune %.0f ms%s)", p.seq, p.alpha,
                 n_train, acc_pre, acc_ada, finetune_ms, ", overlapped" if part else "")
        airtime_ms = delivery.airtime_s * 1e3 + (part["airtime_s"] * 1e3 if part else 0.0)
        timings = {"deliver": (t_delivered - ctx.received_ns) / 1e6, "reconstruct": (t1 - t0) * 1e3,
                   "finetune": finetune_ms, "finetune_wait": (t_ready - t_decoded) / 1e6,
                   "classify": (t3 - t2) * 1e3, "airtime": airtime_ms}
        adapt_info["transmissions"] = delivery.transmissions + (part["transmissions"] if part else 0)
        fields = {"alpha": p.alpha, "n_test": p.n_test, "n_train": n_train, "acc_pretrained": acc_pre,
                  "acc_adapted": acc_ada, "adapt": adapt_info, "parts": 1 + (len(part["sizes"]) if part else 0),
                  "aligned_alphas": [int(a) for a in strategy.aligned_alphas()]}
        t_transmit = t_ready + int((t3 - t2) * 1e9)
        return Reply(Result(p.session_id, p.seq, fields, pred.tobytes(), timings, ctx.rx_pid,
                            ctx.received_ns, t_delivered, t_decoded, t_transmit), not_before_ns=t_transmit)

    def classify(self, model: nn.Sequential, z: np.ndarray) -> np.ndarray:
        """Class ids uint8 (n,) of received features ``z`` float32 (n, alpha) by ``model`` (input ``x_hat``).

        With a linear codec the decoder is folded into the first layer (no
        ``d_raw``-sized reconstruction; the frozen model's fold is kept per
        alpha, at most d_pre of them); otherwise ``x_hat = decode(z)`` first.
        """
        alpha = z.shape[1]
        linear = self.codec.linear_decoder(alpha)
        if linear is None:
            return predict(model, self.codec.decode(z))
        if model is self.model:
            folded = self._folded.get(alpha)
            if folded is None:
                folded = self._folded[alpha] = fold_decoder(model, *linear)
        else:
            folded = fold_decoder(model, *linear)
        return predict(folded, z)

    @staticmethod
    def _features(p: Payload) -> np.ndarray:
        """Dequantized features float32 (n, alpha); RoundError ``non_finite`` for NaN/Inf values."""
        z = p.features()
        if not np.isfinite(z).all():
            raise RoundError("non_finite", f"payload holds {int((~np.isfinite(z)).sum())} NaN/Inf "
                                           "feature values")
        return z
