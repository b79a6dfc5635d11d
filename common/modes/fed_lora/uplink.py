"""fed-lora's emulated uplink of one update: a pure function of the wireless model (:mod:`wireless`).

Device k's update of ``bits`` raw tensor bits, sent at the planned power ``p`` and bandwidth ``B`` over
its round-``r`` power gain ``g``: upload time ``bits / rate(p, g, B)``; compute time and energy of its
round's ``flops`` (:class:`~common.modes.fed_lora.wireless.DeviceProfile`); lost when compute + upload
time exceed ``deadline_s`` (``deadline``) or when the seeded draw ``U(0, 1)`` of
``numpy.random.default_rng([seed, 53, r, k])`` falls below ``PER(SINR)`` (``packet_error``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.modes.fed_lora.records import db, finite
from common.modes.fed_lora.wireless import CellConfig, DeviceProfile


@dataclass(frozen=True)
class UplinkOutcome:
    """``outcome`` delivered or lost (``reason`` deadline / packet_error / ""); times in s, energies in J
    (``upload_s`` -1 and energies 0 where not finite), ``uplink_sinr_db`` in dB, ``draw`` the uniform draw."""

    outcome: str
    reason: str
    upload_s: float
    compute_s: float
    transmit_energy_j: float
    compute_energy_j: float
    packet_error: float
    uplink_sinr_db: float
    draw: float


def uplink_outcome(cell: CellConfig, profile: DeviceProfile, power_w: float, bandwidth_hz: float, gain: float,
                   bits: int, flops: float, deadline_s: float, seed: int, r: int, k: int) -> UplinkOutcome:
    """What becomes of device ``k``'s update in round ``r`` (see the module docstring)."""
    rate = float(cell.rate_bps(power_w, gain, bandwidth_hz))
    upload_s = bits / rate if rate > 0 else math.inf
    compute_s = float(profile.compute_time_s(flops))
    compute_e = float(profile.compute_energy_j(flops))
    per = float(cell.packet_error(power_w, gain, bandwidth_hz))
    sinr_db = db(float(cell.sinr(power_w, gain, bandwidth_hz)))
    draw = float(np.random.default_rng([seed, 53, r, k]).uniform())
    if compute_s + upload_s > deadline_s:
        outcome, reason = "lost", "deadline"
    elif draw < per:
        outcome, reason = "lost", "packet_error"
    else:
        outcome, reason = "delivered", ""
    if not math.isfinite(upload_s):  # no rate (zero power): it transmits until the deadline in vain
        upload_s = max(deadline_s - compute_s, 0.0)
    return UplinkOutcome(outcome, reason, finite(upload_s, -1.0), compute_s, finite(power_w * upload_s),
                         compute_e, per, sinr_db, draw)
