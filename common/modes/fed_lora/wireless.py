"""Uplink and on-device compute model of the federated fine-tuning round.

Channel: power gain ``g = 10^(-PL/10) |h|^2`` with the project's path loss
(:func:`common.link.channel.pathloss.pathloss_db`) and small-scale fading
(:class:`common.link.channel.fading.RicianFading`, one block per round, with
Jakes correlation between rounds). Noise: ``N0 = -174 dBm/Hz + NF``
(:func:`common.link.channel.pathloss.thermal_noise_dbm`).

Uplink of device k on bandwidth ``B`` Hz at power ``p`` W (FDMA, no
interference)::

    SINR = p g / (N0 B)
    rate = B log2(1 + SINR / Gamma)            bit/s, Gamma = SNR gap
    PER  = 1 / (1 + exp((SINR_dB - theta_dB) / s_dB))

The packet error probability is a logistic waterfall in dB: ``theta_dB`` is
the SINR at which half of the updates are lost, ``s_dB`` the width of the
transition (as in :mod:`common.link.channel.nr`'s BLER model). The whole
adapter update is one packet: it is lost with probability PER, with no
retransmission inside the round. Upload time ``bits / rate``, transmit energy
``p * t``.

Compute (CMOS dynamic power, the usual federated-learning model): a device
at CPU clock ``f`` Hz doing ``c`` FLOPs per cycle needs ``cycles = FLOPs / c``;
time ``cycles / f`` s, energy ``kappa f^2 cycles`` J, with ``kappa`` the
effective switched capacitance (about 1e-28 for mobile CPUs).

The downlink broadcast of the global adapter is not modelled (the base
station's power and bandwidth make it short next to the uplink).
All functions take floats or numpy arrays (broadcasting) and return float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from common.link.channel.fading import RicianFading, doppler_hz
from common.link.channel.pathloss import PATHLOSS_MODELS, pathloss_db, thermal_noise_dbm


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")


@dataclass(frozen=True)
class CellConfig:
    """The base station's uplink.

    ``total_bandwidth_hz``: shared by the devices each round; ``carrier_hz``
    and ``pathloss_model`` (one of ``PATHLOSS_MODELS``) give the path loss;
    ``noise_figure_db``: receiver noise figure; ``snr_gap_db``: Gamma in dB;
    ``per_threshold_db``/``per_slope_db``: the PER waterfall (module docstring).
    """

    total_bandwidth_hz: float = 10e6
    carrier_hz: float = 3.5e9
    pathloss_model: str = "free_space"
    noise_figure_db: float = 7.0
    snr_gap_db: float = 3.0
    per_threshold_db: float = 3.0
    per_slope_db: float = 1.0

    def __post_init__(self):
        _positive("total_bandwidth_hz", self.total_bandwidth_hz)
        _positive("carrier_hz", self.carrier_hz)
        _positive("per_slope_db", self.per_slope_db)
        if self.pathloss_model not in PATHLOSS_MODELS:
            raise ValueError(f"pathloss_model must be one of {PATHLOSS_MODELS}, got {self.pathloss_model!r}")
        for name in ("noise_figure_db", "snr_gap_db", "per_threshold_db"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")

    @property
    def noise_psd_w_per_hz(self) -> float:
        """``N0`` in W/Hz: -174 dBm/Hz plus the noise figure."""
        return 10.0 ** ((thermal_noise_dbm(1.0, self.noise_figure_db) - 30.0) / 10.0)

    def mean_gain(self, distance_m: float) -> float:
        """Large-scale power gain ``10^(-PL/10)`` (linear) at ``distance_m``."""
        return 10.0 ** (-pathloss_db(self.pathloss_model, distance_m, self.carrier_hz) / 10.0)

    def sinr(self, power_w, gain, bandwidth_hz):
        """``p g / (N0 B)`` (linear)."""
        return np.asarray(power_w) * np.asarray(gain) / (self.noise_psd_w_per_hz * np.asarray(bandwidth_hz))

    def rate_bps(self, power_w, gain, bandwidth_hz):
        """Shannon rate with gap, ``B log2(1 + SINR / Gamma)`` bit/s."""
        gap = 10.0 ** (self.snr_gap_db / 10.0)
        return np.asarray(bandwidth_hz) * np.log2(1.0 + self.sinr(power_w, gain, bandwidth_hz) / gap)

    def packet_error(self, power_w, gain, bandwidth_hz):
        """Probability (0..1) that an update sent at this SINR is lost (logistic waterfall in dB)."""
        with np.errstate(divide="ignore"):
            sinr_db = 10.0 * np.log10(self.sinr(power_w, gain, bandwidth_hz))
        x = np.clip((sinr_db - self.per_threshold_db) / self.per_slope_db, -700.0, 700.0)
        return 1.0 / (1.0 + np.exp(x))


@dataclass(frozen=True)
class DeviceProfile:
    """One device's radio, processor and energy budget.

    ``distance_m`` to the base station; ``max_power_w`` transmit power cap;
    ``cpu_hz`` clock; ``flops_per_cycle`` sustained FLOPs per cycle;
    ``kappa`` effective switched capacitance (J s^2 per cycle, energy =
    kappa f^2 cycles); ``energy_budget_j`` long-term average energy per round.
    """

    distance_m: float
    max_power_w: float = 0.2
    cpu_hz: float = 2e9
    flops_per_cycle: float = 16.0
    kappa: float = 1e-28
    energy_budget_j: float = 1.0

    def __post_init__(self):
        for name in ("distance_m", "max_power_w", "cpu_hz", "flops_per_cycle", "kappa", "energy_budget_j"):
            _positive(name, getattr(self, name))

    @property
    def flops_per_s(self) -> float:
        return self.cpu_hz * self.flops_per_cycle

    def compute_time_s(self, flops):
        """``FLOPs / (f c)`` s."""
        return np.asarray(flops, dtype=np.float64) / self.flops_per_s

    def compute_energy_j(self, flops):
        """``kappa f^2 FLOPs / c`` J."""
        return self.kappa * self.cpu_hz**2 * np.asarray(flops, dtype=np.float64) / self.flops_per_cycle


def upload_time_s(bits, rate_bps):
    """``bits / rate`` s (inf where the rate is 0)."""
    with np.errstate(divide="ignore"):
        return np.asarray(bits, dtype=np.float64) / np.asarray(rate_bps, dtype=np.float64)


def transmit_energy_j(power_w, time_s):
    """``p t`` J."""
    return np.asarray(power_w, dtype=np.float64) * np.asarray(time_s, dtype=np.float64)


class DeviceChannels:
    """Per-round channel power gains of many devices (path loss times block Rician fading).

    ``k_factor``: linear Rician K (0: Rayleigh); ``speed_mps``: device speed
    for the Doppler shift; ``round_s``: time between rounds (the fading
    correlation lag); ``seed``: device k uses ``seed + k``.
    """

    def __init__(self, cell: CellConfig, profiles: Sequence[DeviceProfile], k_factor: float = 0.0,
                 speed_mps: float = 1.0, round_s: float = 1.0, seed: int = 0):
        _positive("round_s", round_s)
        self.mean_gain = np.array([cell.mean_gain(p.distance_m) for p in profiles])
        f_d = doppler_hz(speed_mps, cell.carrier_hz)
        self._fading = [RicianFading(k_factor, f_d, round_s, rng=seed + k) for k in range(len(profiles))]

    def sample(self) -> np.ndarray:
        """The next round's power gains, float64 (K,)."""
        h = np.array([f.sample(1)[0] for f in self._fading])
        return self.mean_gain * np.abs(h) ** 2
