"""fed-lora's wire messages and the adapter tensor list.

One federated round ``r`` is one ``seq = r`` of every device's session. The
base station never waits inside a handler: a device asks, and is told either
what to do or to come back later::

    TX  FED_POLL_<a> (want "plan")    ->  RX   FED_PLAN  (module or skip, power, bandwidth, factors)
                                              or FED_WAIT (retry_after_ms: round r not planned yet)
    TX  FED_UPDATE                    ->  RX   FED_ACK   (delivered, or lost with the reason)
    TX  FED_POLL_<a> (want "result")  ->  RX   RESULT    (round-final: the aggregate's accuracy, energy, queue)
                                              or FED_WAIT (round r's aggregate not formed yet)

A skipped device sends no FED_UPDATE. The RX daemon answers a repeated
request from its replay record: a FED_POLL is told apart by its ``attempt``
(0 .. MAX_POLLS - 1, numbered 0, 1, 2, ... per session and round, plan and
result polls together) and ``want``, a FED_UPDATE by its :attr:`FedUpdate.digest`.
The base station's ``retry_after_ms`` hints keep a round within
:data:`MAX_POLLS` polls (see :func:`retry_after_ms`).

All types are plain msgpack maps (``common.wire.protocol.encode``). Adapters
travel as a msgpack array of maps ``{name, dtype, shape, data}``: ``name`` as
in :mod:`~common.modes.fed_lora.foundation` (``<layer>.lora_A`` (r, in),
``<layer>.lora_B`` (out, r) with the LoRA scaling folded in,
``head.weight`` (C, d), ``head.bias`` (C,)), ``dtype`` ``"float32"``,
``shape`` a list of ints, ``data`` the raw little-endian bytes in C order.
Byte layouts: ``docs/modes/fed_lora.md``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from common.wire.protocol import ProtocolError, register_message
from common.wire.tensors import arrays_from_wire, arrays_to_wire

# fed-lora's own version, in both HELLOs' params (docs/protocol.md, "Mode fed-lora"): 2 = issue 19/21's
# rules (attempt numbering, duplicate/late/not_planned, no ERROR replayed, device keys, clipping)
FED_VERSION = 2
MAX_POLLS = 64  # polls per device and round, attempt 0 .. 63
TENSOR_DTYPE = "float32"  # the only tensor dtype on the wire: IEEE 754 binary32, little-endian
MAX_ADAPTER_BYTES = 8 * 2**20  # raw tensor bytes of one adapter (MiniLM's all-r16 + head: 2.7 MB)
ENVELOPE_ALLOWANCE_BYTES = 64 * 1024  # msgpack keys, names, shapes and scalars around the raw bytes
MAX_TENSORS = 200  # tensors per adapter (MiniLM all-r16: 36 layers x 2 + head 2 = 74)
WANTS = ("plan", "result")
# retry hints (ms): first wait, fraction of the time already waited, the deadline margin
RETRY_MIN_MS = 50
RETRY_GROWTH = 0.3
RETRY_MARGIN_MS = 100


# ------------------------------------------------------------------ messages


@register_message
@dataclass(frozen=True)
class FedPoll:
    """TX -> RX: "what do I do in round ``seq``" (``want`` "plan") or "how did it end" ("result").

    ``attempt``: this poll's number within the round, 0 .. MAX_POLLS-1; it is
    part of the RX's replay key (``REPLAY_FIELDS``), so every poll is answered
    afresh while a re-sent one is answered from the record. ``waited_ms``:
    how long the device has been waiting for this ``want`` so far (for the
    RX's retry hint).
    """

    TYPE: ClassVar[str] = "FED_POLL"
    REPLAY_FIELDS: ClassVar[tuple[str, ...]] = ("attempt", "want")
    max_bytes: ClassVar[int] = 1024
    session_id: int
    seq: int
    device_id: int
    attempt: int
    want: str
    waited_ms: int = 0

    def __post_init__(self):
        if not 0 <= self.attempt < MAX_POLLS:
            raise ProtocolError("bad_message", f"FED_POLL: attempt={self.attempt} outside [0, {MAX_POLLS - 1}]")
        if self.want not in WANTS:
            raise ProtocolError("bad_message", f"FED_POLL: want={self.want[:32]!r}, not one of {WANTS}")


def poll(attempt: int, session_id: int, seq: int, device_id: int, want: str, waited_ms: int = 0) -> FedPoll:
    """Poll number ``attempt`` of a round, checked."""
    if not 0 <= attempt < MAX_POLLS:
        raise ValueError(f"attempt must be in 0..{MAX_POLLS - 1}, got {attempt}")
    if want not in WANTS:
        raise ValueError(f"want must be one of {WANTS}, got {want!r}")
    return FedPoll(session_id, seq, device_id, attempt, want, int(waited_ms))


@register_message
@dataclass(frozen=True)
class FedWait:
    """RX -> TX (not round-final): not yet; poll again after ``retry_after_ms``.

    ``reason``: ``joining`` (round 0 waits for the devices to say HELLO),
    ``previous_round`` (round ``seq - 1`` is still collecting updates),
    ``collecting`` (round ``seq`` is) or ``forming`` (a round is being
    aggregated, evaluated and saved, off the path that answers polls: try
    again in ``retry_after_ms`` = max(20, 0.3 x ``waited_ms``)). ``deadline_ns``: RX wall clock (ns since
    the epoch) at which what is awaited closes at the latest (0: unknown).
    """

    TYPE: ClassVar[str] = "FED_WAIT"
    max_bytes: ClassVar[int] = 4096
    session_id: int
    seq: int
    device_id: int
    reason: str
    retry_after_ms: int
    deadline_ns: int


@register_message
@dataclass(frozen=True)
class FedPlan:
    """RX -> TX (not round-final): the device's decision for round ``seq``.

    ``module``: the LoRA module to train ("" = skip, with ``reason``);
    ``rank``: its rank; ``power_w``/``bandwidth_hz``: the uplink allocation;
    ``deadline_s``: the emulated latency budget (compute + upload) of the
    round; ``compute_s``, ``upload_s``, ``energy_j``, ``success_prob``: the
    plan's model of this device's round; ``gain_db``: the channel power gain
    the plan used; ``queue_j``: the device's virtual energy queue before the
    round; ``round_deadline_ns``: RX wall clock at which the round closes
    without late updates; ``tensors``: the global adapter's starting factors
    and head for ``module`` (empty when skipping).
    """

    TYPE: ClassVar[str] = "FED_PLAN"
    max_bytes: ClassVar[int] = MAX_ADAPTER_BYTES + ENVELOPE_ALLOWANCE_BYTES
    session_id: int
    seq: int
    device_id: int
    module: str
    reason: str
    rank: int
    power_w: float
    bandwidth_hz: float
    deadline_s: float
    compute_s: float
    upload_s: float
    energy_j: float
    success_prob: float
    gain_db: float
    queue_j: float
    round_deadline_ns: int
    policy: str
    n_planned: int
    tensors: list


@register_message
@dataclass(frozen=True)
class FedUpdate:
    """TX -> RX: the device's trained ``module`` (factors + head) for round ``seq``.

    ``n_samples``: its shard size (the aggregation weight); ``train_loss``:
    mean loss of the last epoch (-1 when not finite); ``train_s``: local
    training wall time, s.
    """

    TYPE: ClassVar[str] = "FED_UPDATE"
    REPLAY_FIELDS: ClassVar[tuple[str, ...]] = ("digest",)
    max_bytes: ClassVar[int] = MAX_ADAPTER_BYTES + ENVELOPE_ALLOWANCE_BYTES
    session_id: int
    seq: int
    device_id: int
    module: str
    n_samples: int
    train_loss: float
    train_s: float
    tensors: list

    @property
    def digest(self) -> bytes:
        """sha256 (16 bytes) of what the update says (module, n_samples and every tensor's name, dtype,
        shape and bytes; not the loss or time): part of the replay key, so only the same update again is
        answered from the record, and the base station tells a second, different update apart."""
        h = hashlib.sha256(f"{self.module}|{self.n_samples}|{len(self.tensors)}".encode())
        for t in self.tensors:
            if isinstance(t, Mapping):
                h.update(repr((t.get("name"), t.get("dtype"), t.get("shape"))).encode())
                data = t.get("data")
                h.update(data if isinstance(data, (bytes, bytearray)) else repr(data).encode())
            else:
                h.update(repr(type(t)).encode())
        return h.digest()[:16]


@register_message
@dataclass(frozen=True)
class FedAck:
    """RX -> TX (not round-final): what became of the update.

    ``outcome``: ``delivered`` or ``lost``; ``reason`` (lost): ``packet_error``
    (the seeded draw ``draw`` fell below ``packet_error``) or ``deadline``
    (emulated compute + upload time over the round's ``deadline_s``).
    ``upload_bits``: raw tensor bits; ``upload_s``: their emulated air time
    at the planned power and bandwidth; energies in J.
    """

    TYPE: ClassVar[str] = "FED_ACK"
    max_bytes: ClassVar[int] = 4096
    session_id: int
    seq: int
    device_id: int
    outcome: str
    reason: str
    upload_bits: int
    upload_s: float
    compute_s: float
    transmit_energy_j: float
    compute_energy_j: float
    packet_error: float
    uplink_sinr_db: float
    draw: float


# RESULT.fields of a fed-lora round (the device's view of the formed round)
RESULT_FIELDS = ("fed_round", "device_id", "module", "rank", "skip_reason", "power_w", "bandwidth_hz",
                 "upload_bits", "upload_s", "compute_s", "transmit_energy_j", "compute_energy_j", "energy_j",
                 "energy_budget_j", "queue_j", "outcome", "delivered", "loss_reason", "packet_error",
                 "uplink_sinr_db", "gain_db", "global_acc", "n_planned", "n_delivered", "closed_by",
                 "policy", "aggregation", "round_wall_s", "update_norm", "clip_scale")


def retry_after_ms(waited_ms: int, attempt: int, until_ns: int | None, now_ns: int) -> int:
    """The RX's hint: wait ``max(RETRY_MIN_MS, RETRY_GROWTH * waited_ms)``, but not past ``until_ns``.

    The hint grows with the time already waited (so a device polls about
    log(T / 50 ms) / log(1.3) times over a wait of T), never sleeps much past
    the moment the awaited round closes at the latest (``until_ns``, where the
    RX's next message forms it), and the last polls of a round are sent after
    that moment, so a round never runs out of :data:`MAX_POLLS`.
    """
    left_ms = max(0.0, (until_ns - now_ns) / 1e6) if until_ns else None
    hint = max(RETRY_MIN_MS, RETRY_GROWTH * max(0, waited_ms))
    if left_ms is not None:
        hint = min(hint, left_ms + RETRY_MARGIN_MS)
        if attempt >= MAX_POLLS - 4:
            hint = left_ms + RETRY_MARGIN_MS
    return math.ceil(hint)


# ------------------------------------------------------------------ tensors


def adapter_to_wire(arrays: Mapping[str, np.ndarray]) -> list[dict]:
    """``{name: float32 array}`` -> the wire list (:mod:`common.wire.tensors`), in ``arrays``' order."""
    return arrays_to_wire(arrays, TENSOR_DTYPE)


def adapter_from_wire(items, expected: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Check a wire list against ``expected`` (name -> shape): every tensor present once, float32, at
    most :data:`MAX_TENSORS`; :class:`TensorError` codes as :func:`common.wire.tensors.arrays_from_wire`."""
    return arrays_from_wire(items, expected, (TENSOR_DTYPE,), require_all=True, max_tensors=MAX_TENSORS)
