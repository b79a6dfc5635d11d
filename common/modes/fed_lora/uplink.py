"""fed-lora's emulated uplink of one update: a pure function of the wireless model (:mod:`wireless`).

Device k's update of ``bits`` raw tensor bits, sent at the planned power ``p`` and bandwidth ``B`` over
its round-``r`` power gain ``g``: upload time ``bits / rate(p, g, B)``; compute time and energy of its
round's ``flops`` (:class:`~common.modes.fed_lora.wireless.DeviceProfile`); lost when compute + upload
time exceed ``deadline_s`` (``deadline``) or when the seeded draw ``U(0, 1)`` of
``numpy.random.default_rng([seed, 53, r, k])`` falls below ``PER(SINR)`` (``packet_error``).

The radio part (rate, PER, the draw) is :class:`UplinkChannel`, a :class:`~common.link.model.Channel` of
bits; :func:`uplink_outcome` adds the device's compute and the round's deadline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from common.link.model import Transmission, check_size
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


@dataclass(frozen=True)
class UplinkTransmission(Transmission):
    """One update over the uplink: ``airtime_s`` = ``bits / rate`` (s; ``inf`` at zero rate), one attempt,
    ``lost`` (``reason`` "packet_error") when ``draw < packet_error``; ``packet_error`` the PER (0..1) at
    ``uplink_sinr_db`` (dB), ``draw`` the uniform draw."""

    packet_error: float
    uplink_sinr_db: float
    draw: float


@dataclass(frozen=True)
class UplinkChannel:
    """A device's uplink in one round as a :class:`~common.link.model.Channel` (``unit`` "bit"): the cell's
    rate and PER (:class:`~common.modes.fed_lora.wireless.CellConfig`) at power ``power_w`` (W), bandwidth
    ``bandwidth_hz`` (Hz) and power gain ``gain`` (linear); ``rng`` gives the one uniform draw per use."""

    cell: CellConfig
    power_w: float
    bandwidth_hz: float
    gain: float
    rng: np.random.Generator
    unit: ClassVar[str] = "bit"

    def transmit(self, size: int) -> UplinkTransmission:
        bits = check_size(size)
        p, g, b = self.power_w, self.gain, self.bandwidth_hz
        rate = float(self.cell.rate_bps(p, g, b))
        per = float(self.cell.packet_error(p, g, b))
        draw = float(self.rng.uniform())
        lost = draw < per
        return UplinkTransmission(bits / rate if rate > 0 else math.inf, 1, lost=lost,
                                  reason="packet_error" if lost else "", packet_error=per,
                                  uplink_sinr_db=db(float(self.cell.sinr(p, g, b))), draw=draw)


def uplink_outcome(cell: CellConfig, profile: DeviceProfile, power_w: float, bandwidth_hz: float, gain: float,
                   bits: int, flops: float, deadline_s: float, seed: int, r: int, k: int) -> UplinkOutcome:
    """What becomes of device ``k``'s update in round ``r`` (see the module docstring)."""
    sent = UplinkChannel(cell, power_w, bandwidth_hz, gain, np.random.default_rng([seed, 53, r, k])).transmit(bits)
    upload_s = sent.airtime_s
    compute_s = float(profile.compute_time_s(flops))
    compute_e = float(profile.compute_energy_j(flops))
    if compute_s + upload_s > deadline_s:
        outcome, reason = "lost", "deadline"
    elif sent.lost:
        outcome, reason = "lost", sent.reason
    else:
        outcome, reason = "delivered", ""
    if not math.isfinite(upload_s):  # no rate (zero power): it transmits until the deadline in vain
        upload_s = max(deadline_s - compute_s, 0.0)
    return UplinkOutcome(outcome, reason, finite(upload_s, -1.0), compute_s, finite(power_w * upload_s),
                         compute_e, sent.packet_error, sent.uplink_sinr_db, sent.draw)
