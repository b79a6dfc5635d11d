"""A device's profile and local training (:class:`DeviceConfig`), torch-free: the CLI's option specs read its
defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceConfig:
    """One device's profile and local training (units in the names).

    ``flops_per_s``: emulated sustained compute speed; ``flops_per_cycle``
    and ``kappa`` turn it into a CPU clock and the CMOS energy model
    (energy = kappa f^2 cycles); ``energy_budget_j``: long-term average
    energy per round; ``epochs``/``batch_size``/``lr``: local training.
    """

    device_id: int = 0
    distance_m: float = 300.0
    flops_per_s: float = 3.2e10
    flops_per_cycle: float = 16.0
    kappa: float = 1e-28
    max_power_w: float = 0.2
    energy_budget_j: float = 0.005
    epochs: float = 5.0
    batch_size: int = 32
    lr: float = 1e-2

    def __post_init__(self):
        if self.device_id < 0:
            raise ValueError(f"device_id must be >= 0, got {self.device_id}")
        for name in ("distance_m", "flops_per_s", "flops_per_cycle", "kappa", "max_power_w", "energy_budget_j",
                     "epochs", "lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0 (0 = full batch), got {self.batch_size}")

    def profile(self) -> dict:
        return {"distance_m": float(self.distance_m), "max_power_w": float(self.max_power_w),
                "flops_per_s": float(self.flops_per_s), "flops_per_cycle": float(self.flops_per_cycle),
                "kappa": float(self.kappa), "energy_budget_j": float(self.energy_budget_j)}
