"""fed-lora's contents of Flower messages: adapters as ``ArrayRecord``, the plan and the update.

Adapters are the wire lists of :mod:`common.wire.tensors` (name, ``float32``,
shape, little-endian bytes) on our side and ``ArrayRecord`` s of numpy arrays on
Flower's; a received ``ArrayRecord`` is turned back into a wire list and
checked by the same :func:`~common.modes.fed_lora.messages.adapter_from_wire`
the daemons use (names, shapes, float32, NaN/Inf). Names as in
``docs/modes/fed_lora.md``: ``<layer>.lora_A`` (r, in), ``<layer>.lora_B``
(out, r), ``head.weight`` (C, d), ``head.bias`` (C,).

A train message (server -> node) holds ``start`` (the global starting factors
and head of the planned module) and ``plan`` (``round``, ``module``, and the
plan's ``power-w`` W, ``bandwidth-hz`` Hz, ``energy-j`` J, ``success-prob``, for
the record); its reply holds ``adapter`` (the trained factors and head) and
``update`` (``module``, ``n-samples``, ``train-loss`` (-1 when not finite),
``train-s`` s). A query reply holds ``hello``: ``params`` (the device's HELLO
parameters as JSON, :meth:`FedLoraTx.hello_params`) and ``fingerprint``.
"""

from __future__ import annotations

import json
import math

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from common.modes.fed_lora.messages import FedUpdate
from common.wire.tensors import WIRE_DTYPES, TensorError


def arrayrecord_from_wire(items: list[dict]) -> ArrayRecord:
    """A wire list (:func:`~common.modes.fed_lora.messages.adapter_to_wire`) -> ``ArrayRecord``, same order."""
    return ArrayRecord({it["name"]: Array(np.frombuffer(it["data"], WIRE_DTYPES[it["dtype"]])
                                          .reshape(it["shape"]).astype(np.float32))
                        for it in items})


def wire_from_arrayrecord(record) -> list[dict]:
    """An ``ArrayRecord`` -> a wire list with each array's own dtype name (so that
    :func:`adapter_from_wire` refuses float64, a wrong shape or NaN with its codes).

    Raises :class:`TensorError` ``bad_tensor`` for something that is not an
    ``ArrayRecord`` of numpy arrays."""
    if not isinstance(record, ArrayRecord):
        raise TensorError("bad_tensor", f"expected an ArrayRecord, got {type(record).__name__}")
    items = []
    for name, arr in record.items():
        try:
            a = np.asarray(arr.numpy())
        except (TypeError, ValueError, OSError, EOFError) as e:
            raise TensorError("bad_tensor", f"{name}: unreadable array ({type(e).__name__}: {e})") from e
        if a.dtype.kind not in "fiub":
            raise TensorError("dtype", f"{name}: dtype {a.dtype}, only float32 is accepted")
        items.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape),
                      "data": np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()})
    return items


def hello_content(params: dict, fingerprint: str) -> RecordDict:
    """A query reply: the device's HELLO parameters and its task fingerprint."""
    return RecordDict({"hello": ConfigRecord({"params": json.dumps(params), "fingerprint": fingerprint})})


def hello_from_content(content: RecordDict) -> tuple[dict, str]:
    """``(params, fingerprint)`` of a query reply; ``ValueError`` naming what is wrong."""
    try:
        hello = content["hello"]
        params, fingerprint = json.loads(hello["params"]), hello["fingerprint"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed hello ({type(e).__name__}: {e})") from e
    if not isinstance(params, dict) or not isinstance(fingerprint, str):
        raise ValueError("malformed hello: params must be a JSON object and fingerprint a string")
    return params, fingerprint


def plan_content(r: int, decision, start: list[dict]) -> RecordDict:
    """A train message for round ``r``: the :class:`DeviceDecision` and the module's start factors."""
    return RecordDict({"start": arrayrecord_from_wire(start),
                       "plan": ConfigRecord({"round": r, "module": decision.module,
                                             "power-w": float(decision.power_w),
                                             "bandwidth-hz": float(decision.bandwidth_hz),
                                             "energy-j": _finite(decision.energy_j),
                                             "success-prob": float(decision.success_prob)})})


def plan_from_content(content: RecordDict) -> tuple[int, str, list[dict]]:
    """``(round, module, start wire list)`` of a train message; ``ValueError`` naming what is wrong."""
    try:
        plan = content["plan"]
        r, module = plan["round"], plan["module"]
        start = wire_from_arrayrecord(content["start"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed plan ({type(e).__name__}: {e})") from e
    if not isinstance(r, int) or not isinstance(module, str):
        raise ValueError(f"malformed plan: round {r!r} must be an int, module {module!r} a string")
    return r, module, start


def update_content(module: str, n_samples: int, loss: float, train_s: float, arrays: dict) -> RecordDict:
    """A train reply: the trained ``arrays`` (name -> float32) and what the base station records."""
    return RecordDict({"adapter": ArrayRecord({k: Array(np.ascontiguousarray(v, np.float32))
                                               for k, v in arrays.items()}),
                       "update": ConfigRecord({"module": module, "n-samples": int(n_samples),
                                               "train-loss": _finite(loss), "train-s": float(train_s)})})


def update_from_content(content: RecordDict, r: int, device_id: int) -> FedUpdate:
    """A train reply as the daemons' :class:`FedUpdate` (round ``r``, ``device_id``), for
    :meth:`BaseStation.on_update`. Raises :class:`TensorError` ``bad_message`` (fields missing or of
    the wrong type) or the codes of :func:`wire_from_arrayrecord`."""
    try:
        update, adapter = content["update"], content["adapter"]
        module, n, loss, train_s = (update[k] for k in ("module", "n-samples", "train-loss", "train-s"))
    except (KeyError, TypeError) as e:
        raise TensorError("bad_message", f"malformed update ({type(e).__name__}: {e})") from e
    if not (isinstance(module, str) and isinstance(n, int) and isinstance(loss, (int, float))
            and isinstance(train_s, (int, float)) and math.isfinite(train_s)):
        raise TensorError("bad_message", "malformed update: module str, n-samples int, train-loss and train-s "
                                         "numbers")
    return FedUpdate(0, r, device_id, module, n, float(loss), float(train_s), wire_from_arrayrecord(adapter))


def _finite(x: float) -> float:
    x = float(x)
    return x if math.isfinite(x) else -1.0
