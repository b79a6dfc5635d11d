"""slf's TX half (Alice): semantic rounds, and alignment rounds that run the paper's steps 1-3.

Round schedule (:class:`SlfTxConfig`): alignment at ``align_first`` and then
every ``align_every`` rounds (0: once); every other round is semantic. After
the RX reports that a session's alignment is gone (``stale_alignment``: the
RX restarted or re-opened the session), the TX falls back to its own
transceiver and re-aligns in the next round.

Alignment round (one ``seq``):

1. SLF_DOWNLOAD -> SLF_DECODER: the RX's decoder and codebook, checked
   against this TX's architecture (names, shapes, float32, finite, size).
2. Fine-tuning of ``[theta_i, Freeze_l(phi_j)]`` on the TX's training split
   through the K-ary DMC with the pair's ``eps`` (:func:`slf_finetune`),
   starting from the encoder the TX sends with (its own, or the one a
   previous alignment of this session fine-tuned: re-alignment continues).
3. SLF_UPLOAD (only the changed layers) -> RESULT. Only then does the TX
   switch to the fine-tuned encoder and codebook.

The record carries the recovery time: download bytes and air time (frame
bits / the CHANNEL's ``rate_bps``) plus the measured transfer, fine-tuning
wall time, upload bytes, air time and measured transfer, and Table I's model
(2 Mb/s links, fine-tuning FLOPs / 30 TFLOP/s). The first semantic round
after an alignment carries ``recovery``: the same breakdown with accuracy and
MSE before (the last semantic round before it) and after (this round).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from common.data.datasets import Dataset
from common.modes.base import RoundFailed, RoundIO, TxHalf
from common.modes.slf.configs import PAPER_BATCH_SIZE, TransceiverConfig
from common.modes.slf.dmc import pack_indices
from common.modes.slf.messages import (
    MAX_SEMANTIC_IMAGES,
    DecoderReply,
    DecoderRequest,
    Semantic,
    TensorError,
    Upload,
    arch_fingerprint,
    arch_mismatch,
    arch_params,
    decoder_frame_limit,
    tensors_from_wire,
    tensors_to_wire,
    wire_tensor_bytes,
)
from common.modes.slf.recovery import finetune_flops, recovery_time
from common.modes.slf.training import SlfConfig, SlfResult, slf_finetune
from common.modes.slf.transceiver import DECODER_LAYERS, Transceiver
from common.results.log import RoundRecord
from common.wire.protocol import Result, encode

log = logging.getLogger("semalign.tx")


@dataclass(frozen=True)
class SlfTxConfig:
    """What the TX does per round.

    ``n_frozen``: the paper's ``l`` (decoder layers frozen counted from the
    last, 0..4; 0 re-initialises the decoder). ``n_images``: test images per
    semantic round. ``finetune_epochs`` over ``finetune_images`` training
    images (0 = the whole training split), ``finetune_batch``,
    ``finetune_budget_s`` (wall-clock cap, None = none), ``finetune_lr``
    (None: the paper's, 1e-3 for l = 0, else 1e-4). ``align_first``: the
    round of the first alignment; ``align_every``: re-align every N rounds
    after it (0 = once). ``eps``: crossover probability to fine-tune for
    (None = the RX's: its HELLO ``eps``, or the round's BLER when the RX
    derives eps from BLER). ``seed``: image sampling, fine-tuning.
    """

    n_frozen: int = 2
    n_images: int = 500
    finetune_epochs: float = 1.0
    finetune_images: int = 0
    finetune_batch: int = PAPER_BATCH_SIZE
    finetune_budget_s: float | None = None
    finetune_lr: float | None = None
    align_first: int = 1
    align_every: int = 0
    eps: float | None = None
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.n_frozen <= len(DECODER_LAYERS):
            raise ValueError(f"n_frozen must be in 0..{len(DECODER_LAYERS)}, got {self.n_frozen}")
        if not 1 <= self.n_images <= MAX_SEMANTIC_IMAGES:
            raise ValueError(f"n_images must be in 1..{MAX_SEMANTIC_IMAGES}, got {self.n_images}")
        if self.finetune_images < 0 or self.align_first < 0 or self.align_every < 0:
            raise ValueError(f"finetune_images={self.finetune_images}, align_first={self.align_first}, "
                             f"align_every={self.align_every} must be >= 0")
        if self.eps is not None and not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"eps must be a probability in [0, 1], got {self.eps}")
        self.slf_config(0.0)  # checks epochs, batch and budget

    def slf_config(self, eps: float) -> SlfConfig:
        return SlfConfig(n_frozen=self.n_frozen, eps=eps, epochs=self.finetune_epochs,
                         batch_size=self.finetune_batch, seed=self.seed, budget_s=self.finetune_budget_s,
                         learning_rate=self.finetune_lr)

    def is_alignment(self, seq: int) -> bool:
        if seq == self.align_first:
            return True
        return self.align_every > 0 and seq > self.align_first and (seq - self.align_first) % self.align_every == 0


class SlfTx(TxHalf):
    """Owns the TX's transceiver and data split; aligns with the RX and sends codeword indices."""

    mode = "slf"

    def __init__(self, trx: Transceiver, trx_config: TransceiverConfig, data: Dataset,
                 config: SlfTxConfig = SlfTxConfig(), artifacts: str | None = None):
        self.own = trx.eval()
        self.trx_config = trx_config
        self.data = data
        self.config = config
        self.shape = trx.shape
        self.fingerprint = arch_fingerprint(trx.shape)
        self.artifacts = artifacts
        self.rx_params: dict = {}
        self.model = self.own  # encoder + codebook the TX sends with (the fine-tuned one once aligned)
        self.token = b""  # the installed alignment the RX decodes with (empty: its original decoder)
        self.realign = False
        self.last_semantic: dict | None = None  # {"round", "accuracy", "mse"} of the last semantic round
        self.pending_recovery: dict | None = None  # an alignment waiting for its "after" numbers
        self.x_finetune = self._finetune_images()

    # ------------------------------------------------------------ session

    def hello_params(self) -> dict:
        return {**arch_params(self.shape), "n_frozen": self.config.n_frozen, "trx": self.trx_config.name}

    def check_hello_reply(self, params: dict) -> str | None:
        problem = arch_mismatch(arch_params(self.shape), params, "TX")
        if problem:
            return problem
        self.rx_params = dict(params)
        # an RX session (new, or re-opened after a lost reply) starts on the RX's original decoder
        if self.token:
            log.warning("session re-opened: the RX dropped this session's alignment; re-aligning next round")
            self.realign = True
        self.model, self.token, self.pending_recovery = self.own, b"", None
        return None

    def config_record(self) -> dict:
        return {"artifacts": self.artifacts, "trx": self.trx_config.name, "dataset": self.trx_config.dataset,
                "fingerprint": self.fingerprint, "trx_eps": self.trx_config.eps,
                "train_images": len(self.data.y_train), "test_images": len(self.data.y_test),
                **dataclasses.asdict(self.config)}

    def eps_for(self, channel) -> float:
        """The pair's crossover probability to fine-tune for (config, else the RX's announced eps or BLER)."""
        if self.config.eps is not None:
            return self.config.eps
        if self.rx_params.get("eps_source") == "bler":
            return float(channel.bler)
        return float(self.rx_params.get("eps", self.trx_config.eps))

    def run_round(self, seq: int, channel, rec: RoundRecord, io: RoundIO) -> None:
        if self.config.is_alignment(seq) or self.realign:
            self.align(seq, channel, rec, io)
        else:
            self.semantic(seq, channel, rec, io)

    # ------------------------------------------------------------ alignment (steps 1-3)

    def align(self, seq: int, channel, rec: RoundRecord, io: RoundIO) -> None:
        cfg = self.config
        f = rec.fields
        eps = self.eps_for(channel)
        f.update(kind="align", n_frozen=cfg.n_frozen, eps=eps, acc_before=None, mse_before=None)
        if self.last_semantic is not None:
            f.update(acc_before=self.last_semantic["accuracy"], mse_before=self.last_semantic["mse"])
        t_start = time.perf_counter()

        # step 1: download
        reply: DecoderReply = io.exchange(DecoderRequest(io.session_id, seq), (DecoderReply.TYPE,))
        dl_sent, dl_replied = getattr(io, "sent_ns", 0), getattr(io, "replied_ns", 0)
        download_frame = len(encode(reply))
        limit = decoder_frame_limit(self.shape)
        if download_frame > limit:
            raise RoundFailed(f"download: {download_frame} B exceeds {limit} B for this architecture")
        try:
            downloaded = tensors_from_wire(reply.tensors, self.own.decoder_state())
        except TensorError as e:
            raise RoundFailed(f"download refused: {e.code}: {e}") from e
        missing = sorted(set(self.own.decoder_state()) - set(downloaded))
        if missing:
            raise RoundFailed(f"download refused: the decoder is incomplete, missing {missing}")
        rx_s = (reply.t_transmit_ns - reply.t_receive_ns) / 1e9
        f.update(download_frame_bytes=download_frame, download_tensor_bytes=wire_tensor_bytes(reply.tensors),
                 download_airtime_s=download_frame * 8 / channel.rate_bps,
                 download_transfer_s=max(0.0, (dl_replied - dl_sent) / 1e9 - rx_s), download_rx_s=rx_s)

        # step 2: fine-tuning at the TX, from the encoder it sends with now (a re-alignment continues)
        res: SlfResult = slf_finetune(self.model, downloaded, self.x_finetune, cfg.slf_config(eps))
        rep = res.report
        f.update(finetune_s=rep.seconds, finetune_steps=rep.steps, finetune_steps_planned=rep.steps_planned,
                 finetune_stopped_by=rep.stopped_by, finetune_loss=rep.last_loss,
                 finetune_images=len(self.x_finetune), finetune_epochs=cfg.finetune_epochs,
                 frozen_layers=list(res.frozen), changed_layers=list(res.changed_layers))

        # step 3: upload of the changed layers
        tensors = self.upload_tensors(res)
        upload = Upload(io.session_id, seq, reply.token, cfg.n_frozen, tensors)
        upload_frame = len(encode(upload))
        f.update(upload_frame_bytes=upload_frame, upload_tensor_bytes=wire_tensor_bytes(tensors))
        ack: Result = io.exchange(upload, (Result.TYPE,))
        up_sent, off = getattr(io, "sent_ns", 0), io.clock_offset_ns
        t_end = time.perf_counter()
        self.model, self.token, self.realign = res.model.eval(), reply.token, False
        airtime_ms = ack.timings_ms.get("airtime", 0.0)
        f.update(upload_airtime_s=airtime_ms / 1e3,
                 upload_transfer_s=(ack.t_receive_ns - off - up_sent) / 1e9,
                 installed_layers=ack.fields.get("installed_layers"),
                 upload_transmissions=ack.fields.get("transmissions"))
        # recovery time: link-rate model at the emulator's rate + measured fine-tuning; and Table I's model
        f["recovery_s"] = f["download_airtime_s"] + f["finetune_s"] + f["upload_airtime_s"]
        f["recovery_wall_s"] = t_end - t_start
        epochs_run = rep.steps / max(rep.steps_planned, 1) * cfg.finetune_epochs
        paper = recovery_time(f["download_tensor_bytes"], finetune_flops(self.own, cfg.n_frozen,
                                                                         len(self.x_finetune), epochs_run),
                              f["upload_tensor_bytes"])
        f["table1"] = {"download_s": paper.download_s, "finetune_flops": paper.finetune_flops,
                       "finetune_s": paper.finetune_s, "upload_s": paper.upload_s, "total_s": paper.total_s}
        rec.status, rec.rx_pid = "ok", ack.rx_pid
        rec.airtime_ms = f["download_airtime_s"] * 1e3 + airtime_ms
        rec.latency_ms = {"download": (f["download_transfer_s"] + rx_s) * 1e3, "finetune": rep.seconds * 1e3,
                          "upload": (ack.t_delivered_ns - off - up_sent) / 1e6,
                          "recovery": f["recovery_wall_s"] * 1e3}
        self.pending_recovery = {k: f[k] for k in (
            "n_frozen", "eps", "download_frame_bytes", "download_tensor_bytes", "download_airtime_s",
            "download_transfer_s", "finetune_s", "upload_frame_bytes", "upload_tensor_bytes", "upload_airtime_s",
            "upload_transfer_s", "recovery_s", "recovery_wall_s", "table1", "acc_before", "mse_before")}
        self.pending_recovery["align_round"] = seq
        log.info("round %d: aligned with l=%d (%s changed), download %d B, fine-tune %.1f s, upload %d B",
                 seq, cfg.n_frozen, ", ".join(res.changed_layers) or "nothing", download_frame, rep.seconds,
                 upload_frame)

    def upload_tensors(self, res: SlfResult) -> list[dict]:
        """The wire list of the layers fine-tuning changed (tests override this to send bad uploads)."""
        return tensors_to_wire(res.upload_state())

    # ------------------------------------------------------------ semantic rounds (step 4)

    @torch.no_grad()
    def semantic(self, seq: int, channel, rec: RoundRecord, io: RoundIO) -> None:
        cfg = self.config
        f = rec.fields
        n = min(cfg.n_images, len(self.data.y_test))
        rng = np.random.default_rng([cfg.seed, seq])
        pick = np.sort(rng.choice(len(self.data.y_test), n, replace=False))
        x = self.data.x_test[pick]
        t_start = time.time_ns()
        indices = self.model.encode(torch.from_numpy(x)).numpy()
        packed = pack_indices(indices, self.shape.n_codewords)
        pixels = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).tobytes()
        msg = Semantic(io.session_id, seq, self.token, n, packed, self.data.y_test[pick].astype(np.uint8).tobytes(),
                       pixels)
        t_encoded = time.time_ns()
        f.update(kind="semantic", n=n, semantic_bytes=len(packed), aligned=bool(self.token))
        try:
            r: Result = io.exchange(msg, (Result.TYPE,))
        except RoundFailed as e:
            if "stale_alignment" in str(e):
                log.warning("round %d: the RX lost this session's alignment; re-aligning next round", seq)
                self.model, self.token, self.realign = self.own, b"", True
            raise
        off = io.clock_offset_ns
        sent = getattr(io, "sent_ns", 0)
        rec.status, rec.rx_pid = "ok", r.rx_pid
        rec.airtime_ms = r.timings_ms.get("airtime")
        f.update(accuracy=r.fields["accuracy"], mse=r.fields["mse"], eps=r.fields["eps"],
                 symbol_errors=r.fields["symbol_errors"], decoder=r.fields["decoder"])
        rec.latency_ms = {"encode": (t_encoded - t_start) / 1e6,
                          "transfer": (r.t_delivered_ns - off - sent) / 1e6,
                          "decode": r.timings_ms.get("decode"), "classify": r.timings_ms.get("classify"),
                          "rtt": (getattr(io, "replied_ns", 0) - sent) / 1e6}
        if self.pending_recovery is not None and self.token:
            f["recovery"] = {**self.pending_recovery, "acc_after": f["accuracy"], "mse_after": f["mse"],
                             "after_round": seq}
            self.pending_recovery = None
        self.last_semantic = {"round": seq, "accuracy": f["accuracy"], "mse": f["mse"]}

    def _finetune_images(self) -> torch.Tensor:
        """The TX's fine-tuning images: its training split, cut to ``finetune_images`` (seeded) when set."""
        x = self.data.x_train
        k = self.config.finetune_images
        if k and k < len(x):
            x = x[np.sort(np.random.default_rng([self.config.seed, 1]).choice(len(x), k, replace=False))]
        return torch.from_numpy(np.ascontiguousarray(x))
