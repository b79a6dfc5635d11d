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

Beyond the paper (all optional, ``docs/modes/slf.md``):

- ``recovery_deadline_s``: the TX picks ``l`` itself each alignment, the
  smallest whose predicted recovery time (download and upload frames at the
  CHANNEL's rate, fine-tuning FLOPs at this TX's measured or given FLOP/s)
  meets the deadline (:func:`choose_n_frozen`), and caps fine-tuning at what
  the deadline leaves after the transfers.
- ``alignment_cache``: a directory where the TX keeps its fine-tuned
  transceiver and the RX's credential after an upload; a later TX (same
  directory, same RX decoder, same eps) sends SLF_RESUME instead of steps 1-3.
- ``download_dtype = "float16"``: the RX sends its decoder as binary16.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from common.data.datasets import Dataset
from common.modes.base import RoundFailed, RoundIO, TxHalf
from common.modes.slf.artifacts import state_fingerprint
from common.modes.slf.cache import AlignmentCache, alignment_key
from common.modes.slf.configs import TransceiverConfig
from common.modes.slf.dmc import pack_indices
from common.modes.slf.messages import (
    TOKEN_BYTES,
    DecoderReply,
    DecoderRequest,
    Resume,
    Resumed,
    Semantic,
    Upload,
    arch_fingerprint,
    arch_mismatch,
    arch_params,
    decoder_frame_limit,
    tensors_from_wire,
    tensors_to_wire,
)
from common.wire.tensors import TensorError, wire_tensor_bytes
from common.modes.slf.recovery import (
    LINK_RATE_BPS,
    choose_n_frozen,
    finetune_flops,
    recovery_time,
)
from common.modes.slf.tx_config import SlfTxConfig
from common.modes.slf.training import SlfConfig, SlfResult, slf_finetune
from common.modes.slf.transceiver import DECODER_LAYERS, Transceiver
from common.results.log import RoundRecord
from common.wire.protocol import Result, encode

log = logging.getLogger("semalign.tx")


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
        self.own_fingerprint = state_fingerprint(trx.state_dict())
        self.cache = AlignmentCache(config.alignment_cache) if config.alignment_cache else None
        self.flops_per_s: float | None = config.compute_flops  # measured at the first deadline alignment
        self._frame_sizes: dict | None = None  # download / upload-by-l frame bytes, for the deadline

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
        f.update(kind="align", n_frozen=cfg.n_frozen, eps=eps, download_dtype=cfg.download_dtype, resumed=False,
                 acc_before=None, mse_before=None)
        if self.last_semantic is not None:
            f.update(acc_before=self.last_semantic["accuracy"], mse_before=self.last_semantic["mse"])
        key = self.cache_key(eps)
        # a session without an installed alignment first asks for a kept one (a returning TX skips steps 1-3)
        if key is not None and not self.token and self.resume(seq, key, rec, io, time.perf_counter()):
            return
        n_frozen, budget_s = self.plan(channel, f)  # the first deadline alignment also times this TX once
        f["n_frozen"] = n_frozen
        t_start = time.perf_counter()

        # step 1: download
        reply: DecoderReply = io.exchange(DecoderRequest(io.session_id, seq, cfg.download_dtype),
                                          (DecoderReply.TYPE,))
        dl_sent, dl_replied = getattr(io, "sent_ns", 0), getattr(io, "replied_ns", 0)
        download_frame = len(encode(reply))
        limit = decoder_frame_limit(self.shape)
        if download_frame > limit:
            raise RoundFailed(f"download: {download_frame} B exceeds {limit} B for this architecture")
        try:
            downloaded = tensors_from_wire(reply.tensors, self.own.decoder_state(), (cfg.download_dtype,))
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
        res: SlfResult = slf_finetune(self.model, downloaded, self.x_finetune,
                                      cfg.slf_config(eps, n_frozen, budget_s))
        rep = res.report
        f.update(finetune_s=rep.seconds, finetune_steps=rep.steps, finetune_steps_planned=rep.steps_planned,
                 finetune_stopped_by=rep.stopped_by, finetune_loss=rep.last_loss,
                 finetune_images=len(self.x_finetune), finetune_epochs=cfg.finetune_epochs,
                 frozen_layers=list(res.frozen), changed_layers=list(res.changed_layers))

        # step 3: upload of the changed layers
        tensors = self.upload_tensors(res)
        upload = Upload(io.session_id, seq, reply.token, n_frozen, tensors)
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
        if "deadline" in f:
            f["deadline"]["met_measured"] = f["recovery_s"] <= f["deadline"]["deadline_s"]
        epochs_run = rep.steps / max(rep.steps_planned, 1) * cfg.finetune_epochs
        paper = recovery_time(f["download_tensor_bytes"], finetune_flops(self.own, n_frozen,
                                                                         len(self.x_finetune), epochs_run),
                              f["upload_tensor_bytes"])
        f["table1"] = {"download_s": paper.download_s, "finetune_flops": paper.finetune_flops,
                       "finetune_s": paper.finetune_s, "upload_s": paper.upload_s, "total_s": paper.total_s}
        rec.status, rec.rx_pid = "ok", ack.rx_pid
        rec.airtime_ms = f["download_airtime_s"] * 1e3 + airtime_ms
        rec.latency_ms = {"download": (f["download_transfer_s"] + rx_s) * 1e3, "finetune": rep.seconds * 1e3,
                          "upload": (ack.t_delivered_ns - off - up_sent) / 1e6,
                          "recovery": f["recovery_wall_s"] * 1e3}
        credential = ack.fields.get("credential")
        f["kept"] = bool(key is not None and isinstance(credential, bytes) and credential)
        if f["kept"]:
            self.cache.save(key, n_frozen, res.model, credential,
                            {"eps": eps, "rx_trx": self.rx_params.get("trx"), "download_dtype": cfg.download_dtype,
                             "changed_layers": list(res.changed_layers), "finetune_s": rep.seconds,
                             "finetune_steps": rep.steps, "recovery_s": f["recovery_s"]})
        self._await_after(seq, f)
        log.info("round %d: aligned with l=%d (%s changed), download %d B, fine-tune %.1f s, upload %d B",
                 seq, n_frozen, ", ".join(res.changed_layers) or "nothing", download_frame, rep.seconds,
                 upload_frame)

    RECOVERY_KEYS = ("n_frozen", "eps", "resumed", "download_dtype", "download_frame_bytes", "download_tensor_bytes",
                     "download_airtime_s", "download_transfer_s", "finetune_s", "upload_frame_bytes",
                     "upload_tensor_bytes", "upload_airtime_s", "upload_transfer_s", "resume_frame_bytes",
                     "resume_airtime_s", "resume_transfer_s", "recovery_s", "recovery_wall_s", "table1", "deadline",
                     "acc_before", "mse_before")

    def _await_after(self, seq: int, f: dict) -> None:
        """Keep the alignment's breakdown for the next semantic round, which adds the "after" numbers."""
        self.pending_recovery = {k: f[k] for k in self.RECOVERY_KEYS if k in f}
        self.pending_recovery["align_round"] = seq

    # ------------------------------------------------------------ kept alignments (beyond the paper)

    def cache_key(self, eps: float) -> str | None:
        """Key of the kept alignments valid with this RX (None: no cache, or the RX keeps none)."""
        fp = self.rx_params.get("decoder_fingerprint")
        if self.cache is None or not isinstance(fp, str) or not self.rx_params.get("keeps_alignments"):
            return None
        return alignment_key(fp, self.own_fingerprint, eps, self.config.download_dtype)

    def resume(self, seq: int, key: str, rec: RoundRecord, io: RoundIO, t_start: float) -> bool:
        """SLF_RESUME with a kept alignment; True when the RX installed it (the round is done)."""
        f = rec.fields
        wanted = None if self.config.recovery_deadline_s is not None else self.config.n_frozen
        entry = self.cache.lookup(key, self.own, wanted)
        if entry is None:
            f["resume"] = "none kept"
            return False
        msg = Resume(io.session_id, seq, entry.credential)
        reply: Resumed = io.exchange(msg, (Resumed.TYPE,))
        sent, replied = getattr(io, "sent_ns", 0), getattr(io, "replied_ns", 0)
        if not reply.found or len(reply.token) != TOKEN_BYTES:
            self.cache.remove(key, entry.n_frozen)
            f["resume"] = "the RX no longer holds it (restarted or evicted): aligning anew"
            log.info("round %d: %s", seq, f["resume"])
            return False
        t_end = time.perf_counter()
        self.model, self.token, self.realign = entry.model, reply.token, False
        frame = len(encode(msg))
        air = reply.airtime_ms / 1e3
        rx_s = (reply.t_transmit_ns - reply.t_receive_ns) / 1e9
        f.update(resume="resumed", resumed=True, n_frozen=entry.n_frozen, eps=entry.meta.get("eps", f["eps"]),
                 installed_layers=list(reply.installed_layers), changed_layers=list(reply.installed_layers),
                 resume_frame_bytes=frame, resume_airtime_s=air,
                 resume_transfer_s=max(0.0, (replied - sent) / 1e9 - rx_s),
                 download_frame_bytes=0, download_tensor_bytes=0, download_airtime_s=0.0, finetune_s=0.0,
                 upload_frame_bytes=0, upload_tensor_bytes=0, upload_airtime_s=0.0,
                 recovery_s=air, recovery_wall_s=t_end - t_start,
                 kept_recovery_s=entry.meta.get("recovery_s"), kept_saved_at=entry.meta.get("saved_at"))
        resume_model = frame * 8 / LINK_RATE_BPS
        f["table1"] = {"download_s": 0.0, "finetune_flops": 0.0, "finetune_s": 0.0, "upload_s": resume_model,
                       "total_s": resume_model}
        rec.status, rec.rx_pid, rec.airtime_ms = "ok", reply.rx_pid, reply.airtime_ms
        rec.latency_ms = {"resume": (replied - sent) / 1e6, "recovery": f["recovery_wall_s"] * 1e3}
        self._await_after(seq, f)
        log.info("round %d: resumed a kept alignment (l=%d) without steps 1-3 in %.1f ms", seq, entry.n_frozen,
                 f["recovery_wall_s"] * 1e3)
        return True

    # ------------------------------------------------------------ l from a recovery-time deadline

    def plan(self, channel, f: dict) -> tuple[int, float | None]:
        """``l`` and the fine-tuning budget (s) of this alignment; with a deadline, the choice goes in ``f``."""
        cfg = self.config
        if cfg.recovery_deadline_s is None:
            return cfg.n_frozen, cfg.finetune_budget_s
        if self.flops_per_s is None:
            self.flops_per_s, f["compute_calibration_s"] = self.calibrate()
        download, uploads = self.frame_sizes()
        n = len(self.x_finetune)
        flops = {l: finetune_flops(self.own, l, n, cfg.finetune_epochs) for l in uploads}
        choice = choose_n_frozen(cfg.recovery_deadline_s, download, uploads, flops, channel.rate_bps,
                                 self.flops_per_s)
        best = choice.predicted[choice.n_frozen]
        left = cfg.recovery_deadline_s - best.download_s - best.upload_s
        budget = cfg.finetune_budget_s
        if left > 0:
            budget = left if budget is None else min(budget, left)
        f["deadline"] = {**choice.to_dict(), "rate_bps": channel.rate_bps, "compute_flops_per_s": self.flops_per_s,
                         "finetune_budget_s": budget}
        log.info("deadline %.3f s at %.1f Mb/s: l=%d (predicted %.3f s%s)", cfg.recovery_deadline_s,
                 channel.rate_bps / 1e6, choice.n_frozen, best.total_s, "" if choice.met else ", misses it")
        return choice.n_frozen, budget

    def frame_sizes(self) -> tuple[int, dict[int, int]]:
        """Bytes of the SLF_DECODER frame (in the download dtype) and of the SLF_UPLOAD frame for each ``l``.

        Encoded once from this TX's own decoder, which has the RX's shapes;
        the integers take their largest msgpack size, so these are upper bounds.
        """
        if self._frame_sizes is None:
            big, tag = 2**62, bytes(TOKEN_BYTES)
            state = self.own.decoder_state()
            s = self.shape
            download = len(encode(DecoderReply(big, big, tag, s.n_codewords, s.code_dim,
                                               tensors_to_wire(state, self.config.download_dtype), 2**31, big, big,
                                               bytes(16))))
            uploads = {}
            for l in range(len(DECODER_LAYERS) + 1):
                layers = DECODER_LAYERS[:len(DECODER_LAYERS) - l]
                part = {k: t for k, t in state.items() if k.rsplit(".", 1)[0] in layers}
                uploads[l] = len(encode(Upload(big, big, tag, l, tensors_to_wire(part))))
            self._frame_sizes = {"download": download, "uploads": uploads}
        return self._frame_sizes["download"], dict(self._frame_sizes["uploads"])

    def calibrate(self) -> tuple[float, float]:
        """This TX's fine-tuning speed in FLOP/s (the recovery model's FLOP count over measured seconds).

        Times one pass of ``l = 0`` fine-tuning over 4 batches of its images,
        after a 1-batch warm-up; returns (FLOP/s, seconds spent calibrating).
        """
        t0 = time.perf_counter()
        batch = self.config.finetune_batch
        x = self.x_finetune[:4 * batch]
        state = self.own.decoder_state()
        slf_finetune(self.own, state, x[:batch], SlfConfig(0, 0.0, 1.0, batch, self.config.seed))
        res = slf_finetune(self.own, state, x, SlfConfig(0, 0.0, 1.0, batch, self.config.seed))
        rate = finetune_flops(self.own, 0, len(x), 1.0) / max(res.report.seconds, 1e-9)
        log.info("fine-tuning speed: %.3g FLOP/s (recovery model)", rate)
        return rate, time.perf_counter() - t0

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
