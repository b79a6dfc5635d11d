"""Large-scale path loss in dB (distance in m, carrier in Hz).

- ``free_space``: Friis, ``20 log10(4 pi d f / c)``.
- ``v2v_highway_los``: 3GPP TR 37.885 Table 6.2.1-1 highway LOS,
  ``32.4 + 20 log10(d) + 20 log10(f_GHz)`` (free space within 0.05 dB).
- ``v2v_urban_los``: TR 37.885 Table 6.2.1-1 urban LOS,
  ``38.77 + 16.7 log10(d) + 18.2 log10(f_GHz)``.

No shadowing: a static link must give a repeatable mean SNR; fading supplies
the randomness. Distances below 1 m are clamped to 1 m (near field).
"""

from __future__ import annotations

import math

from common.link.channel.fading import SPEED_OF_LIGHT_MPS

PATHLOSS_MODELS: tuple[str, ...] = ("free_space", "v2v_highway_los", "v2v_urban_los")


def pathloss_db(model: str, distance_m: float, carrier_hz: float) -> float:
    """Path loss in dB of ``model`` at ``distance_m`` and ``carrier_hz``."""
    if model not in PATHLOSS_MODELS:
        raise ValueError(f"pathloss model must be one of {PATHLOSS_MODELS}, got {model!r}")
    if not (math.isfinite(distance_m) and distance_m > 0):
        raise ValueError(f"distance_m must be finite and > 0, got {distance_m!r}")
    if not (math.isfinite(carrier_hz) and carrier_hz > 0):
        raise ValueError(f"carrier_hz must be finite and > 0, got {carrier_hz!r}")
    d = max(distance_m, 1.0)
    f_ghz = carrier_hz / 1e9
    if model == "free_space":
        return 20 * math.log10(4 * math.pi * d * carrier_hz / SPEED_OF_LIGHT_MPS)
    if model == "v2v_highway_los":
        return 32.4 + 20 * math.log10(d) + 20 * math.log10(f_ghz)
    return 38.77 + 16.7 * math.log10(d) + 18.2 * math.log10(f_ghz)


def thermal_noise_dbm(bandwidth_hz: float, noise_figure_db: float) -> float:
    """Receiver noise power in dBm: ``-174 dBm/Hz + 10 log10(B) + NF`` (290 K)."""
    if not (math.isfinite(bandwidth_hz) and bandwidth_hz > 0):
        raise ValueError(f"bandwidth_hz must be finite and > 0, got {bandwidth_hz!r}")
    if not math.isfinite(noise_figure_db):
        raise ValueError(f"noise_figure_db must be finite, got {noise_figure_db!r}")
    return -174.0 + 10 * math.log10(bandwidth_hz) + noise_figure_db
