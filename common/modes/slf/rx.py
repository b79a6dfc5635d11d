"""slf's RX half (David): serves its decoder, installs aligned decoders per session, decodes and classifies.

- SLF_DOWNLOAD -> SLF_DECODER (not round-final): the decoder the session
  decodes with (the RX's own until an upload was installed in this session),
  with a fresh random token that the upload must quote.
- SLF_UPLOAD -> RESULT (round-final): the link's air time is emulated by holding the reply
  (``Reply.not_before_ns``, the RX serves other peers meanwhile) on the
  frame, then the upload is checked (a download in this session with that
  token; known decoder tensors of the right shape, float32, finite, whole
  layers, none of the ``l`` frozen ones, within the frame limit) and
  installed in the session's store. Another session keeps its own decoder;
  a refused upload leaves the session's decoder as it was.
- SLF_SEMANTIC -> RESULT (round-final): the link's air time on the semantic
  bytes, the K-ary DMC on the indices (seeded by ``[seed, seq]``), decoding
  with the decoder the token names, the frozen task head; RESULT fields give
  accuracy and reconstruction MSE (pixels in [0, 1]).
- SLF_RESUME -> SLF_RESUMED (kept alignments, beyond the paper): every
  installed upload is also kept, across sessions, under a fresh random
  credential that only the uploading session's RESULT carries; a later
  session (the same TX, returning) that quotes the credential gets that
  decoder installed without steps 1-3. The store is keyed by the credential's
  sha256, bounded (least recently used first out) and in memory only.
  Security model and limits: ``docs/modes/slf.md``, "Kept alignments".
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from common.modes.base import Reply, RoundContext, RoundError, RxHalf
from common.modes.slf.artifacts import state_fingerprint
from common.modes.slf.dmc import dmc_numpy, packed_size_bytes, unpack_indices
from common.modes.slf.limits import DOWNLOAD_DTYPES, KEEP_ALIGNMENTS, MAX_SEMANTIC_IMAGES
from common.modes.slf.messages import (
    CREDENTIAL_BYTES,
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
    layers_of,
    tensors_from_wire,
    tensors_to_wire,
)
from common.wire.tensors import TensorError, wire_tensor_bytes
from common.modes.slf.transceiver import (
    DECODER_LAYERS,
    TaskHead,
    Transceiver,
    frozen_layers,
)
from common.wire.protocol import Result

log = logging.getLogger("semalign.rx")

# keys of the per-session store (RoundContext.session)
PENDING = "slf_pending"  # {"token", "seq", "base"}: the last download served in this session
DECODER = "slf_decoder"  # Transceiver whose decoder the session's aligned rounds use
TOKEN = "slf_token"  # token of the installed alignment
KEPT = "slf_kept"  # sha256 of the credential of the session's kept alignment (retired when it re-aligns)
KEEP_BYTES = 256 * 2**20  # ... and at most this many bytes of decoder tensors


@dataclass(frozen=True)
class KeptAlignment:
    """An installed upload kept across sessions: the whole aligned decoder and how it was made."""

    decoder: Transceiver
    n_frozen: int
    layers: tuple[str, ...]
    created: float


class SlfRx(RxHalf):
    """Holds the RX's transceiver (decoder + codebook used; its encoder is never used) and frozen task head.

    ``eps``: crossover probability of the K-ary DMC applied to received
    indices, or None to use each round's announced BLER (``eps_from_bler``).
    ``seed``: seeds the DMC draws of round ``seq`` with ``[seed, seq]``.
    """

    mode = "slf"
    fingerprint_hint = ("both nodes must run transceivers of the same architecture (layer widths, K, code "
                        "dim, image shape); their weights may differ, that is what slf aligns")

    def __init__(self, trx: Transceiver, head: TaskHead, eps: float | None, seed: int = 0, name: str = "",
                 keep_alignments: int = KEEP_ALIGNMENTS):
        if eps is not None and not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must be a probability in [0, 1], got {eps}")
        if keep_alignments < 0:
            raise ValueError(f"keep_alignments must be >= 0, got {keep_alignments}")
        self.trx = trx.eval()
        self.head = head.eval()
        self.eps = eps
        self.seed = seed
        self.name = name
        self.shape = trx.shape
        self.fingerprint = arch_fingerprint(trx.shape)
        self.upload_limit = decoder_frame_limit(trx.shape)
        # the RX's own decoder weights: a TX keys the alignments it keeps by them (another RX, another key)
        self.decoder_fingerprint = state_fingerprint(trx.decoder_state())
        self.keep_alignments = min(keep_alignments, KEEP_BYTES // self.upload_limit)
        self.kept: OrderedDict[bytes, KeptAlignment] = OrderedDict()  # sha256(credential) -> alignment
        self.shared_dir = None  # with RX workers: kept alignments also on disk, one file each (share_state)

    def share_state(self, directory) -> None:
        """Kept alignments also go to ``directory/slf-kept/`` (one ``<sha256 of the credential>.pt`` each:
        plain decoder tensors, written to a temporary file and renamed, read with ``weights_only``), so a
        returning TX resumes on whichever RX worker serves it. The directory holds the newest
        ``keep_alignments`` files (older ones removed by whoever writes)."""
        from pathlib import Path

        self.shared_dir = Path(directory) / "slf-kept"
        self.shared_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _kept_file(self, key: bytes):
        return self.shared_dir / f"{key.hex()}.pt"

    def _share(self, key: bytes, kept: KeptAlignment) -> None:
        path = self._kept_file(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"state": kept.decoder.decoder_state(), "n_frozen": torch.tensor(kept.n_frozen),
                    "layers": list(kept.layers)}, tmp)
        os.replace(tmp, path)
        files = sorted(self.shared_dir.glob("*.pt"), key=lambda f: f.stat().st_mtime if f.exists() else 0.0)
        for old in files[: max(0, len(files) - self.keep_alignments)]:
            old.unlink(missing_ok=True)

    def _shared(self, key: bytes) -> KeptAlignment | None:
        """A kept alignment another worker wrote, or None."""
        if self.shared_dir is None:
            return None
        try:
            data = torch.load(self._kept_file(key), weights_only=True)
            decoder = copy.deepcopy(self.trx)
            decoder.load_decoder_state(data["state"])
            return KeptAlignment(decoder.eval(), int(data["n_frozen"]), tuple(data["layers"]), time.time())
        except FileNotFoundError:
            return None
        except Exception as e:  # a file being replaced, or not ours: resume fails, the TX aligns anew
            log.warning("kept alignment %s unreadable (%s: %s)", key.hex()[:12], type(e).__name__, e)
            return None

    def hello_params(self) -> dict:
        return {**arch_params(self.shape), "eps": self.eps, "eps_source": "bler" if self.eps is None else "fixed",
                "n_classes": self.shape.n_classes, "max_images": MAX_SEMANTIC_IMAGES, "trx": self.name,
                "decoder_fingerprint": self.decoder_fingerprint, "keeps_alignments": self.keep_alignments > 0,
                "download_dtypes": list(DOWNLOAD_DTYPES)}

    @property
    def hello_param_keys(self) -> frozenset[str]:
        """The architecture (compared) plus the TX's ``n_frozen`` and ``trx`` name (informational, optional)."""
        return frozenset(arch_params(self.shape)) | {"n_frozen", "trx"}

    def check_hello(self, params: dict) -> str | None:
        return arch_mismatch(arch_params(self.shape), params, "RX")

    def handlers(self) -> dict:
        return {DecoderRequest.TYPE: self.on_download, Upload.TYPE: self.on_upload, Semantic.TYPE: self.on_semantic,
                Resume.TYPE: self.on_resume}

    @torch.no_grad()
    def warm_up(self) -> None:
        g = self.shape.indices_per_image
        self.head.predict(self.trx.decode(torch.zeros(2, g, dtype=torch.long)))

    # ------------------------------------------------------------ step 1: download

    def on_download(self, msg: DecoderRequest, ctx: RoundContext) -> Reply:
        if msg.dtype not in DOWNLOAD_DTYPES:
            raise RoundError("dtype", f"download dtype {msg.dtype[:32]!r}; this RX serves {list(DOWNLOAD_DTYPES)}")
        base = ctx.session.get(DECODER, self.trx)
        token = os.urandom(TOKEN_BYTES)
        ctx.session[PENDING] = {"token": token, "seq": msg.seq, "base": base}
        tensors = tensors_to_wire(base.decoder_state(), msg.dtype)
        log.info("session %d seq %d: serving the decoder (%d B of %s tensors, %s)", ctx.session_id, msg.seq,
                 wire_tensor_bytes(tensors), msg.dtype, "aligned" if base is not self.trx else "original")
        return Reply(DecoderReply(msg.session_id, msg.seq, token, self.shape.n_codewords, self.shape.code_dim,
                                  tensors, ctx.rx_pid, ctx.received_ns, time.time_ns()), final=False)

    # ------------------------------------------------------------ step 3: upload

    def on_upload(self, msg: Upload, ctx: RoundContext) -> Reply:
        if ctx.nbytes > self.upload_limit:
            raise RoundError("oversize", f"upload of {ctx.nbytes} B exceeds this RX's limit of "
                                         f"{self.upload_limit} B (whole decoder + envelope)")
        delivery = ctx.deliver(ctx.nbytes)
        t_delivered = max(delivery.delivered_ns, time.time_ns())
        t_work = time.perf_counter()
        pending = ctx.session.get(PENDING)
        if pending is None:
            raise RoundError("no_download", "upload without a decoder download in this session; "
                                            "send SLF_DOWNLOAD first")
        if not isinstance(msg.token, bytes) or msg.token != pending["token"]:
            raise RoundError("wrong_session", "upload token does not name the decoder this session downloaded "
                                              f"(seq {pending['seq']}); it belongs to another session or download")
        if not 0 <= msg.n_frozen <= len(DECODER_LAYERS):
            raise RoundError("n_frozen", f"n_frozen={msg.n_frozen} outside 0..{len(DECODER_LAYERS)}")
        base: Transceiver = pending["base"]
        own = base.decoder_state()
        try:
            state = tensors_from_wire(msg.tensors, own)
        except TensorError as e:
            raise RoundError(e.code, f"upload refused: {e}") from e
        layers = layers_of(state)
        partial = [k for k in own if k.rsplit(".", 1)[0] in layers and k not in state]
        if partial:
            raise RoundError("partial_layer", f"upload refused: layers must travel whole; missing {partial}")
        frozen = set(layers) & set(frozen_layers(msg.n_frozen))
        if frozen:
            raise RoundError("frozen_layer", f"upload refused: {sorted(frozen)} are frozen at "
                                             f"n_frozen={msg.n_frozen} and cannot have changed")
        new = copy.deepcopy(base)
        new.load_decoder_state(state)
        ctx.session[DECODER] = new.eval()
        ctx.session[TOKEN] = msg.token
        del ctx.session[PENDING]
        credential = self._keep(new, msg.n_frozen, layers, ctx)
        t_installed = t_delivered + int((time.perf_counter() - t_work) * 1e9)
        log.info("session %d seq %d: installed %s (l=%d, %d B)", ctx.session_id, msg.seq,
                 ", ".join(layers) or "no layers", msg.n_frozen, wire_tensor_bytes(msg.tensors))
        fields = {"kind": "align", "n_frozen": msg.n_frozen, "installed_layers": list(layers),
                  "upload_tensor_bytes": wire_tensor_bytes(msg.tensors), "upload_frame_bytes": ctx.nbytes,
                  "transmissions": delivery.transmissions, "credential": credential}
        timings = {"deliver": (t_delivered - ctx.received_ns) / 1e6, "airtime": delivery.airtime_s * 1e3,
                   "install": (t_installed - t_delivered) / 1e6}
        return Reply(Result(msg.session_id, msg.seq, fields, b"", timings, ctx.rx_pid, ctx.received_ns,
                            t_delivered, t_installed, t_installed), not_before_ns=t_installed)

    # ------------------------------------------------------------ kept alignments (beyond the paper)

    def _keep(self, decoder: Transceiver, n_frozen: int, layers: tuple[str, ...], ctx: RoundContext) -> bytes:
        """Keep the session's new alignment under a fresh credential (returned; b"" when keeping is off).

        The session's previous kept alignment (it resumed or uploaded before)
        is retired: only the session holding its credential gets here.
        """
        old = ctx.session.pop(KEPT, None)
        if old is not None:
            self.kept.pop(old, None)
            if self.shared_dir is not None:
                self._kept_file(old).unlink(missing_ok=True)
        if self.keep_alignments <= 0:
            return b""
        credential = os.urandom(CREDENTIAL_BYTES)
        key = hashlib.sha256(credential).digest()
        self.kept[key] = KeptAlignment(decoder, n_frozen, tuple(layers), time.time())
        while len(self.kept) > self.keep_alignments:
            self.kept.popitem(last=False)
        if self.shared_dir is not None:
            self._share(key, self.kept[key])
        ctx.session[KEPT] = key
        return credential

    def on_resume(self, msg: Resume, ctx: RoundContext) -> Reply:
        delivery = ctx.deliver(ctx.nbytes)
        due_ns = max(delivery.delivered_ns, time.time_ns())
        if not isinstance(msg.credential, bytes) or len(msg.credential) != CREDENTIAL_BYTES:
            raise RoundError("bad_message", f"credential must be {CREDENTIAL_BYTES} bytes")
        key = hashlib.sha256(msg.credential).digest()
        kept = self.kept.get(key)
        if kept is None:
            kept = self._shared(key)
            if kept is not None:
                self.kept[key] = kept
                while len(self.kept) > self.keep_alignments:
                    self.kept.popitem(last=False)
        if kept is None:
            log.info("session %d seq %d: no kept alignment for that credential; the TX aligns anew",
                     ctx.session_id, msg.seq)
            return Reply(Resumed(msg.session_id, msg.seq, False, b"", -1, [], delivery.airtime_s * 1e3,
                                 ctx.rx_pid, ctx.received_ns, due_ns), final=False, not_before_ns=due_ns)
        self.kept.move_to_end(key)
        token = os.urandom(TOKEN_BYTES)
        ctx.session.pop(PENDING, None)
        ctx.session[DECODER], ctx.session[TOKEN], ctx.session[KEPT] = kept.decoder, token, key
        log.info("session %d seq %d: resumed a kept alignment (l=%d, %s) without steps 1-3", ctx.session_id,
                 msg.seq, kept.n_frozen, ", ".join(kept.layers) or "no layers")
        return Reply(Resumed(msg.session_id, msg.seq, True, token, kept.n_frozen, list(kept.layers),
                             delivery.airtime_s * 1e3, ctx.rx_pid, ctx.received_ns, due_ns), not_before_ns=due_ns)

    # ------------------------------------------------------------ step 4: semantic rounds

    @torch.no_grad()
    def on_semantic(self, msg: Semantic, ctx: RoundContext) -> Reply:
        s = self.shape
        if not 1 <= msg.n <= MAX_SEMANTIC_IMAGES:
            raise RoundError("bad_message", f"n={msg.n} images outside [1, {MAX_SEMANTIC_IMAGES}]")
        count = msg.n * s.indices_per_image
        if len(msg.indices) != packed_size_bytes(count, s.n_codewords):
            raise RoundError("bad_message", f"indices: {len(msg.indices)} B, {msg.n} images of "
                                            f"{s.indices_per_image} indices need "
                                            f"{packed_size_bytes(count, s.n_codewords)} B")
        d_raw = s.channels * s.image_size ** 2
        if len(msg.labels) != msg.n or len(msg.pixels) not in (0, msg.n * d_raw):
            raise RoundError("bad_message", f"labels {len(msg.labels)} B / pixels {len(msg.pixels)} B do not "
                                            f"fit n={msg.n} images of {d_raw} pixels")
        # only the semantic part goes over the emulated link; labels and pixels ride along for evaluation
        delivery = ctx.deliver(ctx.nbytes - len(msg.labels) - len(msg.pixels))
        t_delivered = max(delivery.delivered_ns, time.time_ns())
        if msg.token:
            if msg.token != ctx.session.get(TOKEN):
                raise RoundError("stale_alignment", "this session has no installed alignment with that token "
                                                    "(the RX restarted, the session was re-opened, or it "
                                                    "belongs to another session); align again")
            decoder = ctx.session[DECODER]
        else:
            decoder = self.trx
        t0 = time.perf_counter()
        try:
            sent = unpack_indices(msg.indices, s.n_codewords, count)
        except ValueError as e:
            raise RoundError("bad_message", f"indices: {e}") from e
        labels = np.frombuffer(msg.labels, np.uint8)
        if labels.size and labels.max() >= s.n_classes:
            raise RoundError("bad_label", f"label {int(labels.max())} outside [0, {s.n_classes})")
        eps = ctx.state.bler if self.eps is None else self.eps
        received = dmc_numpy(sent, s.n_codewords, eps, np.random.default_rng([self.seed, msg.seq]))
        x_hat = decoder.decode(torch.from_numpy(received.reshape(msg.n, s.indices_per_image)))
        t1 = time.perf_counter()
        t_decoded = t_delivered + int((t1 - t0) * 1e9)
        pred = self.head.predict(x_hat).numpy().astype(np.uint8)
        t2 = time.perf_counter()
        mse = None
        if msg.pixels:
            x = torch.from_numpy(np.frombuffer(msg.pixels, np.uint8).astype(np.float32) / 255.0)
            mse = float(((x_hat.reshape(msg.n, -1) - x.reshape(msg.n, -1)) ** 2).mean())
        acc = float((pred == labels).mean())
        log.info("session %d seq %d: %d images, %s decoder, eps %.3g: accuracy %.4f, MSE %s", ctx.session_id,
                 msg.seq, msg.n, "aligned" if msg.token else "original", eps, acc,
                 "-" if mse is None else f"{mse:.4f}")
        fields = {"kind": "semantic", "n": msg.n, "accuracy": acc, "mse": mse, "semantic_bytes": len(msg.indices),
                  "eps": eps, "symbol_errors": int((received != sent).sum()),
                  "decoder": "aligned" if msg.token else "original", "transmissions": delivery.transmissions}
        timings = {"deliver": (t_delivered - ctx.received_ns) / 1e6, "airtime": delivery.airtime_s * 1e3,
                   "decode": (t1 - t0) * 1e3, "classify": (t2 - t1) * 1e3}
        t_transmit = t_delivered + int((time.perf_counter() - t0) * 1e9)
        return Reply(Result(msg.session_id, msg.seq, fields, pred.tobytes(), timings, ctx.rx_pid,
                            ctx.received_ns, t_delivered, t_decoded, t_transmit), not_before_ns=t_transmit)
