"""What fed-lora's base station checks of a device, as pure functions: its HELLO parameters
(:func:`hello_problem`, :func:`train_flops_from_claim`, :func:`profile_from_hello`) and each update it sends
(:func:`check_update`). The base station (:mod:`.base_station`) calls them and keeps the state.
"""

from __future__ import annotations

import math

import numpy as np

from common.modes.fed_lora.aggregation import update_norm
from common.modes.fed_lora.messages import FED_VERSION, FedUpdate, adapter_from_wire
from common.modes.fed_lora.spec import FedData, FedSpec, preset
from common.modes.fed_lora.wireless import DeviceProfile
from common.wire.tensors import TensorError

PROFILE_KEYS = ("distance_m", "max_power_w", "flops_per_s", "flops_per_cycle", "kappa", "energy_budget_j")
PROFILE_LIMITS = {"distance_m": (1.0, 1e6), "max_power_w": (1e-6, 10.0), "flops_per_s": (1e3, 1e18),
                  "flops_per_cycle": (0.01, 1e4), "kappa": (1e-40, 1e-20), "energy_budget_j": (1e-9, 1e6)}
# train_flops: the base station recomputes each module's FLOPs per epoch on the device's part of the split;
# the claim only tells the epoch count, which must be the same for every module and within these factors
# of the task preset's epochs (docs/modes/fed_lora.md, "Checks")
EPOCHS_RANGE = (0.1, 4.0)
# an update whose delta from the global (product space, float64) is above float32's range (or not finite)
# is refused ``non_finite``: its product would overflow the float32 global adapter
MAX_UPDATE_NORM = float(np.finfo(np.float32).max)
EPOCHS_RTOL = 1e-3


def hello_problem(spec: FedSpec, data: FedData, modules: list[str], params: dict) -> str | None:
    """Why a device's HELLO ``params`` cannot join a federation of ``spec`` (its split ``data``, the task's
    ``modules``), by the parameters alone (None: they are well formed); the claimed ``train_flops`` are
    checked against the base station's own count by :func:`train_flops_from_claim`."""
    problem = spec.mismatch(params)
    if problem:
        return problem
    if params.get("fed_version") != FED_VERSION:
        return (f"fed_version {params.get('fed_version')!r}: this base station speaks fed-lora version "
                f"{FED_VERSION} (docs/protocol.md); upgrade the device")
    k = params.get("device_id")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < spec.n_devices:
        return f"device_id {k!r} must be an int in 0..{spec.n_devices - 1}"
    expected = len(data.parts[k])
    if params.get("n_samples") != expected:
        return (f"device {k}: n_samples={params.get('n_samples')!r}, but part {k} of the agreed split "
                f"holds {expected} samples (other data?)")
    if params.get("modules") != modules:
        return f"modules {params.get('modules')!r} != the base station's {modules}"
    profile = params.get("profile")
    if not isinstance(profile, dict) or sorted(profile) != sorted(PROFILE_KEYS):
        return f"profile must be a map with keys {list(PROFILE_KEYS)}"
    for key, (lo, hi) in PROFILE_LIMITS.items():
        v = profile[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (math.isfinite(v) and lo <= v <= hi):
            return f"profile {key}={v!r} outside [{lo:g}, {hi:g}]"
    flops = params.get("train_flops")
    if not isinstance(flops, dict) or sorted(flops) != sorted(modules) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 1e21
            for v in flops.values()):
        return f"train_flops must map each of {modules} to a finite FLOP count in (0, 1e21]"
    return None


def train_flops_from_claim(k: int, claimed: dict, per_epoch: dict[str, float], modules: list[str],
                           task: str) -> dict[str, float]:
    """The FLOPs per round the base station plans device ``k`` with: its own per-epoch count
    (``per_epoch``: module -> FLOPs of one epoch on device ``k``'s part of the split) times the epoch
    count the ``claimed`` FLOPs imply, which must be one number for all modules (relative spread <=
    :data:`EPOCHS_RTOL`) within :data:`EPOCHS_RANGE` x the preset epochs of ``task``; ``ValueError`` names
    what does not hold. A device therefore cannot make one module look cheaper than another, nor its
    training arbitrarily fast or slow."""
    epochs = {m: float(claimed[m]) / per_epoch[m] for m in modules if per_epoch[m] > 0}
    if not epochs:
        raise ValueError(f"device {k}: no module has a positive FLOP count")
    lo_e, hi_e = min(epochs.values()), max(epochs.values())
    if hi_e > lo_e * (1 + EPOCHS_RTOL):
        raise ValueError(f"device {k}: train_flops {claimed} imply different epoch counts per module "
                         f"({', '.join(f'{m} {e:.4g}' for m, e in epochs.items())}); the base station "
                         "computes each module's FLOPs itself")
    base = preset(task).epochs
    lo, hi = EPOCHS_RANGE[0] * base, EPOCHS_RANGE[1] * base
    e = sum(epochs.values()) / len(epochs)
    if not lo <= e <= hi:
        raise ValueError(f"device {k}: train_flops imply {e:.4g} epochs per round, outside [{lo:g}, {hi:g}] "
                         f"({EPOCHS_RANGE[0]:g}..{EPOCHS_RANGE[1]:g} x the task's {base:g})")
    return {m: per_epoch[m] * e for m in modules}


def profile_from_hello(p: dict) -> DeviceProfile:
    """The :class:`DeviceProfile` of a checked HELLO's ``profile`` map (:data:`PROFILE_KEYS`; the CPU clock,
    Hz, is ``flops_per_s / flops_per_cycle``)."""
    return DeviceProfile(distance_m=float(p["distance_m"]), max_power_w=float(p["max_power_w"]),
                         cpu_hz=float(p["flops_per_s"]) / float(p["flops_per_cycle"]),
                         flops_per_cycle=float(p["flops_per_cycle"]), kappa=float(p["kappa"]),
                         energy_budget_j=float(p["energy_budget_j"]))


def check_update(msg: FedUpdate, module: str, n_samples: int, k: int, shapes: dict[str, tuple[int, ...]],
                 global_state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """``(arrays, norm)`` of device ``k``'s update ``msg``, planned to train ``module`` on ``n_samples``
    samples: its tensors as float32 arrays of ``shapes`` (:func:`adapter_from_wire`) and the norm of its
    delta from ``global_state`` (:func:`update_norm`); :class:`TensorError` names what is wrong (the
    module, the sample count, a tensor, or a delta whose norm exceeds :data:`MAX_UPDATE_NORM`)."""
    if msg.module != module:
        raise TensorError("module", f"update trains module {msg.module!r}, the plan says {module!r}")
    if msg.n_samples != n_samples:
        raise TensorError("n_samples", f"n_samples={msg.n_samples}, device {k} holds {n_samples}")
    arrays = adapter_from_wire(msg.tensors, shapes)
    norm = update_norm(arrays, global_state)
    if not norm <= MAX_UPDATE_NORM:  # finite float32 values whose product overflows: this update alone goes
        raise TensorError("non_finite", f"the update's delta from the global model has norm {norm} "
                                        "(its factors' product overflows)")
    return arrays, norm
