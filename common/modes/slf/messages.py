"""slf's wire messages, tensor blobs, size limits and the session fingerprint.

One alignment round (the paper's steps 1-3) is two requests in one ``seq``::

    TX  SLF_DOWNLOAD  ->  RX      (RX answers SLF_DECODER, not round-final)
    TX  SLF_UPLOAD    ->  RX      (RX answers RESULT, round-final: CHANNEL follows)

and every semantic round (step 4) is ``SLF_SEMANTIC -> RESULT``. All four
types are plain msgpack maps (``common.wire.protocol.encode``); tensors
travel as a msgpack array of maps ``{name, dtype, shape, data}`` with ``data``
the raw little-endian bytes in C order. Byte layouts: ``docs/modes/slf.md``.

Decoding checks each field's msgpack type and the type's ``max_bytes``; what a
tensor list holds (names, shapes, dtypes, finiteness, sizes) is checked by
:func:`tensors_from_wire` in the handlers, so a bad upload is refused with a
RESULT-less ERROR that names the round and the problem.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch

from common.modes.slf.dmc import bits_per_index, packed_size_bytes
from common.modes.slf.limits import (
    MAX_CHANNELS,
    MAX_CODE_DIM,
    MAX_CODEWORDS,
    MAX_IMAGE_SIZE,
    MAX_SEMANTIC_IMAGES,
    MAX_WIDTH,
)
from common.modes.slf.shape import DECODER_LAYERS, KERNEL_DOWN, KERNEL_SAME, TransceiverShape
from common.wire.protocol import register_message
from common.wire.tensors import arrays_from_wire, arrays_to_wire

ARCH_VERSION = "slf-vqvae-deepjscc-1"  # changes with any change of the layer layout in transceiver.py
TOKEN_BYTES = 16  # the RX's random id of one decoder download
CREDENTIAL_BYTES = 32  # the RX's random secret naming one kept alignment (SLF_RESUME)
TENSOR_DTYPE = "float32"  # uploads, and downloads by default: IEEE 754 binary32, little-endian
ENVELOPE_ALLOWANCE_BYTES = 4096  # msgpack keys, tensor names, shapes and ints around the raw bytes



# ------------------------------------------------------------------ sizes


def decoder_param_count(shape: TransceiverShape) -> int:
    """Values in the codebook and the three decoder convs of ``shape`` (weights and biases)."""
    (w1, w2), d, c = shape.widths, shape.code_dim, shape.channels
    return (shape.n_codewords * d
            + d * w2 * KERNEL_SAME ** 2 + w2
            + w2 * w1 * KERNEL_DOWN ** 2 + w1
            + w1 * c * KERNEL_DOWN ** 2 + c)


def decoder_bytes(shape: TransceiverShape) -> int:
    """Raw float32 bytes of the whole decoder (codebook included) of ``shape``."""
    return 4 * decoder_param_count(shape)


def decoder_frame_limit(shape: TransceiverShape) -> int:
    """Largest SLF_DECODER / SLF_UPLOAD frame for ``shape``: the whole decoder plus the envelope."""
    return decoder_bytes(shape) + ENVELOPE_ALLOWANCE_BYTES


LARGEST_SHAPE = TransceiverShape(channels=MAX_CHANNELS, image_size=MAX_IMAGE_SIZE, widths=(MAX_WIDTH, MAX_WIDTH),
                                 code_dim=MAX_CODE_DIM, n_codewords=MAX_CODEWORDS)
MAX_DECODER_FRAME_BYTES = decoder_frame_limit(LARGEST_SHAPE)  # 10.8 MB
MAX_SEMANTIC_FRAME_BYTES = (
    packed_size_bytes(MAX_SEMANTIC_IMAGES * LARGEST_SHAPE.indices_per_image, MAX_CODEWORDS)  # indices
    + MAX_SEMANTIC_IMAGES  # labels
    + MAX_SEMANTIC_IMAGES * MAX_CHANNELS * MAX_IMAGE_SIZE ** 2  # evaluation pixels, uint8
    + ENVELOPE_ALLOWANCE_BYTES)


def shape_problem(shape: TransceiverShape) -> str | None:
    """Why the mode cannot carry transceivers of ``shape`` (None: it can)."""
    limits = {"channels": (shape.channels, MAX_CHANNELS), "image_size": (shape.image_size, MAX_IMAGE_SIZE),
              "widths": (max(shape.widths), MAX_WIDTH), "code_dim": (shape.code_dim, MAX_CODE_DIM),
              "n_codewords": (shape.n_codewords, MAX_CODEWORDS)}
    over = [f"{k}={v} > {cap}" for k, (v, cap) in limits.items() if v > cap]
    return f"transceiver too large for the slf wire limits: {', '.join(over)}" if over else None


# ------------------------------------------------------------------ session parameters


def arch_params(shape: TransceiverShape) -> dict:
    """What both ends of an slf session must share: the architecture, not the weights (HELLO params)."""
    return {"arch": ARCH_VERSION, "n_codewords": shape.n_codewords, "code_dim": shape.code_dim,
            "image_shape": [shape.channels, shape.image_size, shape.image_size],
            "widths": list(shape.widths), "bits_per_index": bits_per_index(shape.n_codewords)}


def arch_fingerprint(shape: TransceiverShape) -> str:
    """Session fingerprint: sha256 hex of the canonical JSON of :func:`arch_params` plus the decoder layout.

    The TX and RX transceivers of an SLF pair differ by design (that is what
    SLF repairs), so the fingerprint covers what they must agree on for the
    download, the upload and the indices to make sense: architecture version,
    decoder layer names, kernel sizes, widths, code dimension, K and image shape.
    """
    spec = {**arch_params(shape), "decoder_layers": list(DECODER_LAYERS),
            "kernels": [KERNEL_DOWN, KERNEL_SAME]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def arch_mismatch(own: dict, other: dict, who: str) -> str | None:
    """Why ``other``'s architecture params differ from ``own`` (None when they match); names each key."""
    diffs = [f"{k}={other.get(k)!r} != {who} {k}={own[k]!r}" for k in own if other.get(k) != own[k]]
    return "; ".join(diffs) or None


# ------------------------------------------------------------------ tensors


def tensors_to_wire(state: Mapping[str, torch.Tensor], dtype: str = TENSOR_DTYPE) -> list[dict]:
    """``{name: float32 tensor}`` -> the wire list (:mod:`common.wire.tensors`), in ``state``'s order.

    ``dtype``: ``"float32"`` (exact) or ``"float16"`` (only downloads may travel so, see
    :data:`DOWNLOAD_DTYPES`).
    """
    for name, t in state.items():
        if t.dtype != torch.float32:
            raise ValueError(f"{name}: only float32 tensors travel, got {t.dtype}")
    return arrays_to_wire({k: t.detach().cpu().contiguous().numpy() for k, t in state.items()}, dtype)


def tensors_from_wire(items: list, expected: Mapping[str, torch.Tensor],
                      dtypes: tuple[str, ...] = (TENSOR_DTYPE,)) -> dict[str, torch.Tensor]:
    """Check a wire list against ``expected`` (name -> tensor of the right shape) and build float32 tensors;
    :class:`TensorError` codes as :func:`common.wire.tensors.arrays_from_wire`."""
    arrays = arrays_from_wire(items, {k: tuple(t.shape) for k, t in expected.items()}, dtypes)
    return {k: torch.from_numpy(a) for k, a in arrays.items()}


def layers_of(names) -> tuple[str, ...]:
    """Decoder layers (``DECODER_LAYERS`` order) that tensor ``names`` belong to."""
    layers = {n.rsplit(".", 1)[0] for n in names}
    return tuple(layer for layer in DECODER_LAYERS if layer in layers)


# ------------------------------------------------------------------ messages


@register_message
@dataclass(frozen=True)
class DecoderRequest:
    """TX -> RX, step 1: "send me the decoder this session decodes with" (answer: :class:`DecoderReply`).

    ``dtype``: how the tensors should travel, one of :data:`DOWNLOAD_DTYPES`
    (float16 halves the download; the RX keeps its float32 weights).
    """

    TYPE: ClassVar[str] = "SLF_DOWNLOAD"
    max_bytes: ClassVar[int] = 1024
    session_id: int
    seq: int
    dtype: str = TENSOR_DTYPE


@register_message
@dataclass(frozen=True)
class DecoderReply:
    """RX -> TX, step 1's answer (not round-final): the whole decoder, codebook first.

    ``token``: 16 random bytes naming this download; the UPLOAD and every
    later SEMANTIC of the aligned session quote it. ``tensors``: wire list of
    ``codebook.weight`` (K, D) and ``decoder.{0,1,2}.{weight,bias}``.
    ``t_receive_ns`` / ``t_transmit_ns``: RX clock when the request arrived /
    the reply was built. ``request_digest``: digest of the SLF_DOWNLOAD frame
    it answers, filled in by the RX daemon (as for RESULT).
    """

    TYPE: ClassVar[str] = "SLF_DECODER"
    max_bytes: ClassVar[int] = MAX_DECODER_FRAME_BYTES
    session_id: int
    seq: int
    token: bytes
    n_codewords: int
    code_dim: int
    tensors: list
    rx_pid: int
    t_receive_ns: int
    t_transmit_ns: int
    request_digest: bytes = b""


@register_message
@dataclass(frozen=True)
class Upload:
    """TX -> RX, step 3: the decoder layers fine-tuning changed (whole layers), for the download ``token``.

    ``n_frozen``: the paper's ``l``; the last ``l`` of ``DECODER_LAYERS`` must
    not be in ``tensors``. Answered by RESULT (round-final).
    """

    TYPE: ClassVar[str] = "SLF_UPLOAD"
    max_bytes: ClassVar[int] = MAX_DECODER_FRAME_BYTES
    session_id: int
    seq: int
    token: bytes
    n_frozen: int
    tensors: list


@register_message
@dataclass(frozen=True)
class Semantic:
    """TX -> RX, step 4: ``n`` images as codeword indices (``ceil(log2 K)`` bits each, MSB first).

    ``token``: the installed alignment to decode with (empty: the RX's
    original decoder). ``indices``: ``n * grid**2`` indices, image by image,
    row-major over the latent grid. ``labels``: uint8 (n,) and ``pixels``:
    uint8 (n, C*H*W) = round(255 x), both for evaluation only (``pixels`` may
    be empty: no MSE); neither counts as semantic bytes nor goes through the
    link emulation.
    """

    TYPE: ClassVar[str] = "SLF_SEMANTIC"
    max_bytes: ClassVar[int] = MAX_SEMANTIC_FRAME_BYTES
    session_id: int
    seq: int
    token: bytes
    n: int
    indices: bytes
    labels: bytes
    pixels: bytes


@register_message
@dataclass(frozen=True)
class Resume:
    """TX -> RX: "install the alignment this credential names in this session" (skips steps 1-3).

    ``credential``: the :data:`CREDENTIAL_BYTES` random bytes the RX returned
    in the RESULT of the upload that made the alignment (``fields.credential``).
    Answered by :class:`Resumed`.
    """

    TYPE: ClassVar[str] = "SLF_RESUME"
    max_bytes: ClassVar[int] = 1024
    session_id: int
    seq: int
    credential: bytes


@register_message
@dataclass(frozen=True)
class Resumed:
    """RX -> TX, the answer to :class:`Resume`.

    ``found`` True: the alignment is installed in the session under the new
    ``token`` (round-final, like an upload's RESULT); False: the RX does not
    hold it (restarted, evicted, another RX), not round-final, ``token``
    empty: the TX goes on with SLF_DOWNLOAD in the same round. ``n_frozen``
    and ``installed_layers``: those of the upload that made it (-1 / [] when
    not found). ``airtime_ms``: the air time the link applied to the request.
    """

    TYPE: ClassVar[str] = "SLF_RESUMED"
    max_bytes: ClassVar[int] = 4096
    session_id: int
    seq: int
    found: bool
    token: bytes
    n_frozen: int
    installed_layers: list
    airtime_ms: float
    rx_pid: int
    t_receive_ns: int
    t_transmit_ns: int
    request_digest: bytes = b""

