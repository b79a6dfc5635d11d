"""The base station's per-round decision: module (or skip), transmit power and bandwidth per device.

**This is our method, not the paper's.** arXiv 2509.19306 publishes only its
abstract (a risk-gap bound, model switching + power control + bandwidth
allocation, online with long-term energy constraints, polynomial); the bound
and algorithm below are our own stand-ins in that spirit.

Risk proxy (dimensionless, 0..1). Device k holds ``n_k`` samples,
``w_k = n_k / sum(n)``. If it trains module m (relative capacity
``c_m`` in (0, 1], :func:`module_costs`: the square root of its trainable
parameters over the largest module's) and
its update arrives (probability ``pi_k = 1 - PER`` if it meets the deadline,
else 0), the share of its data the global model still fails to fit is
``exp(-c_m n_k / n_0)``, decreasing in capacity times samples; a lost or
skipped update leaves the whole share::

    risk = sum_k w_k (1 - pi_k (1 - exp(-c_m n_k / n_0)))

Long-term energy: device k may spend ``Ebar_k`` J per round on average. A
virtual queue ``Q_k(t+1) = max(Q_k(t) + E_k(t) - Ebar_k, 0)`` (J) counts the
excess (:class:`EnergyQueues`); drift-plus-penalty minimises, each round::

    V * risk + sum_k (Q_k + theta_k) E_k        (V in J^2: larger V favours accuracy)

``theta_k = c V w_k / Ebar_k`` is a place-holder backlog (``price_floor`` c,
0 by default): it keeps a price on energy while the queue is empty, where
plain drift-plus-penalty buys vanishing PER gains with full power.

subject to ``t_cmp + t_up <= deadline`` per participating device, ``p_k <=
p_max,k`` and ``sum_k B_k <= B_total``. Always ``mean_t E_k <= Ebar_k +
Q_k(T) / T``; since skipping costs no energy, a device skips once
``Q_k E_k`` outweighs its share of ``V * risk``, so ``Q_k`` stays ``O(V)`` and
the excess over the budget vanishes as ``O(V / T)``.

Solution (polynomial, ``O(K M P N_B I)``): the bandwidth constraint is
dualised with a price ``lambda`` per Hz; for a given lambda each device
independently enumerates its M modules (or skip) and, for each of N_B
bandwidth levels, searches a grid of P power levels (the 1-D power search),
keeping the minimum of ``cost + lambda B``; the bandwidth a device takes is non-increasing
in lambda, so I bisection steps find the smallest price whose choices fit
``B_total`` (the KKT point on the grid).

Baselines: :func:`fixed_plan` (one module, equal bandwidth, maximum power)
and :func:`random_plan` (a random module per device, same otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from common.modes.fed_lora.wireless import CellConfig, DeviceProfile, upload_time_s


@dataclass(frozen=True)
class ModuleCost:
    """What one LoRA module costs and buys: ``upload_bits`` per update, relative ``capacity`` in (0, 1]."""

    name: str
    upload_bits: int
    capacity: float

    def __post_init__(self):
        if self.upload_bits < 1:
            raise ValueError(f"module {self.name!r}: upload_bits must be >= 1, got {self.upload_bits}")
        if not (0 < self.capacity <= 1):
            raise ValueError(f"module {self.name!r}: capacity must be in (0, 1], got {self.capacity}")


def module_costs(upload_bits: Mapping[str, int], exponent: float = 0.5) -> list[ModuleCost]:
    """One :class:`ModuleCost` per module, capacity ``(bits / max bits) ** exponent``.

    ``upload_bits``: module name -> bits of one update (``AdapterTask.upload_bits``),
    32 bits per trainable parameter, so the ratio is the parameter ratio;
    ``exponent`` in (0, 1] models diminishing returns of extra parameters
    (1: linear; the default 0.5 is our assumption, not a fitted value).
    """
    if not upload_bits:
        raise ValueError("need at least one module")
    if not (0 < exponent <= 1):
        raise ValueError(f"exponent must be in (0, 1], got {exponent}")
    top = max(upload_bits.values())
    return [ModuleCost(name, int(bits), (bits / top) ** exponent) for name, bits in upload_bits.items()]


@dataclass(frozen=True)
class DeviceState:
    """What the base station knows of device k this round.

    ``gain``: channel power gain (linear); ``n_samples``: its shard size;
    ``train_flops``: module name -> FLOPs of this round's local training.
    """

    profile: DeviceProfile
    gain: float
    n_samples: int
    train_flops: Mapping[str, float]

    def __post_init__(self):
        if not (math.isfinite(self.gain) and self.gain > 0):
            raise ValueError(f"gain must be finite and > 0, got {self.gain!r}")
        if self.n_samples < 0:
            raise ValueError(f"n_samples must be >= 0, got {self.n_samples}")
        bad = {m: f for m, f in self.train_flops.items() if not (math.isfinite(f) and f >= 0)}
        if bad:
            raise ValueError(f"train_flops must be finite and >= 0, got {bad}")


@dataclass(frozen=True)
class OptimizerConfig:
    """``deadline_s`` per round; ``v`` the drift-plus-penalty weight (J^2); ``sample_scale``
    ``n_0`` of the risk proxy; grid sizes for power and bandwidth (geometric grids from
    ``min_ratio`` times the cap up to the cap); bisection steps on the bandwidth price;
    ``price_floor`` c >= 0: a place-holder backlog ``theta_k = c V w_k / Ebar_k`` (J) added to
    each queue in the decision (not in the queue itself), so that energy is never free: with
    an empty queue and c = 0, any vanishing gain in success probability justifies full power."""

    deadline_s: float
    v: float = 10.0
    sample_scale: float = 100.0
    power_levels: int = 32
    bandwidth_levels: int = 48
    min_ratio: float = 1e-3
    bisection_steps: int = 60
    price_floor: float = 0.0

    def __post_init__(self):
        for name in ("deadline_s", "sample_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)!r}")
        if not (math.isfinite(self.v) and self.v >= 0):
            raise ValueError(f"v must be finite and >= 0, got {self.v!r}")
        if self.power_levels < 1 or self.bandwidth_levels < 1 or self.bisection_steps < 1:
            raise ValueError(f"power_levels={self.power_levels}, bandwidth_levels={self.bandwidth_levels} "
                             f"and bisection_steps={self.bisection_steps} must be >= 1")
        if not (0 < self.min_ratio <= 1):
            raise ValueError(f"min_ratio must be in (0, 1], got {self.min_ratio}")
        if not (math.isfinite(self.price_floor) and self.price_floor >= 0):
            raise ValueError(f"price_floor must be finite and >= 0, got {self.price_floor!r}")


@dataclass(frozen=True)
class DeviceDecision:
    """One device's round: ``module`` (None: skip), ``power_w``, ``bandwidth_hz``, the
    modelled ``compute_s``, ``upload_s``, ``energy_j`` (compute + transmit) and
    ``success_prob`` (1 - PER when on time, else 0)."""

    module: str | None
    power_w: float
    bandwidth_hz: float
    compute_s: float
    upload_s: float
    energy_j: float
    success_prob: float

    @property
    def time_s(self) -> float:
        return self.compute_s + self.upload_s


SKIP = DeviceDecision(None, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class RoundPlan:
    """All devices' decisions, the risk proxy, the drift-plus-penalty objective and the bandwidth price (1/Hz)."""

    decisions: tuple[DeviceDecision, ...]
    risk: float
    objective: float
    price_per_hz: float


class EnergyQueues:
    """Virtual energy queues ``Q_k(t+1) = max(Q_k(t) + E_k(t) - Ebar_k, 0)``, J, float64 (K,)."""

    def __init__(self, budgets_j: Sequence[float]):
        self.budgets_j = np.asarray(budgets_j, dtype=np.float64)
        if self.budgets_j.ndim != 1 or not np.all(np.isfinite(self.budgets_j)) or np.any(self.budgets_j <= 0):
            raise ValueError(f"budgets_j must be finite and > 0, got {list(budgets_j)}")
        self.q_j = np.zeros_like(self.budgets_j)

    def update(self, energy_j: Sequence[float]) -> None:
        """Advance one round with the energy each device actually spent."""
        e = np.asarray(energy_j, dtype=np.float64)
        if e.shape != self.q_j.shape or not np.all(np.isfinite(e)) or np.any(e < 0):
            raise ValueError(f"energy_j must be {len(self.q_j)} finite values >= 0, got {list(energy_j)}")
        self.q_j = np.maximum(self.q_j + e - self.budgets_j, 0.0)


def _weights(devices: Sequence[DeviceState]) -> np.ndarray:
    n = np.array([d.n_samples for d in devices], dtype=np.float64)
    return n / n.sum() if n.sum() > 0 else np.zeros_like(n)


def _fit(module: ModuleCost, n_samples: int, config: OptimizerConfig) -> float:
    """Share of a device's data fitted by a delivered update: ``1 - exp(-c_m n / n_0)``."""
    return 1.0 - math.exp(-module.capacity * n_samples / config.sample_scale)


def _evaluate(device: DeviceState, module: ModuleCost, power_w, bandwidth_hz, cell: CellConfig,
              config: OptimizerConfig) -> tuple[np.ndarray, ...]:
    """(compute_s, upload_s, energy_j, success_prob) broadcast over power and bandwidth arrays."""
    if module.name not in device.train_flops:
        raise ValueError(f"device has no train_flops for module {module.name!r}")
    flops = device.train_flops[module.name]
    compute_s = float(device.profile.compute_time_s(flops))
    upload_s = upload_time_s(module.upload_bits, cell.rate_bps(power_w, device.gain, bandwidth_hz))
    energy_j = float(device.profile.compute_energy_j(flops)) + power_w * upload_s
    on_time = compute_s + upload_s <= config.deadline_s
    success = np.where(on_time, 1.0 - cell.packet_error(power_w, device.gain, bandwidth_hz), 0.0)
    return np.broadcast_to(compute_s, upload_s.shape), upload_s, energy_j, success


def plan_round(devices: Sequence[DeviceState], modules: Sequence[ModuleCost], queues_j: Sequence[float],
               cell: CellConfig, config: OptimizerConfig) -> RoundPlan:
    """Drift-plus-penalty decision for one round (see the module docstring).

    ``queues_j``: the devices' virtual queues (``EnergyQueues.q_j``).
    Choices that miss the deadline are never taken; a device with no feasible
    choice skips. The returned bandwidths sum to at most ``cell.total_bandwidth_hz``.
    """
    if not devices or not modules:
        raise ValueError(f"need at least one device and one module, got {len(devices)} and {len(modules)}")
    if len(queues_j) != len(devices):
        raise ValueError(f"{len(devices)} devices but {len(queues_j)} queues")
    w = _weights(devices)
    b_grid = cell.total_bandwidth_hz * np.geomspace(config.min_ratio, 1.0, config.bandwidth_levels)
    if len(devices) * b_grid[0] > cell.total_bandwidth_hz:
        raise ValueError(f"{len(devices)} devices cannot all get the smallest grid bandwidth "
                         f"{b_grid[0]:.3g} Hz; lower min_ratio")
    # cost[k, m, i_p, i_b] of participating, skip[k] of skipping
    cost = np.full((len(devices), len(modules), config.power_levels, config.bandwidth_levels), np.inf)
    p_grids = []
    theta = [config.price_floor * config.v * w[k] / dev.profile.energy_budget_j for k, dev in enumerate(devices)]
    for k, (dev, q) in enumerate(zip(devices, queues_j)):
        q = q + theta[k]
        p = dev.profile.max_power_w * np.geomspace(config.min_ratio, 1.0, config.power_levels)[:, None]
        p_grids.append(p[:, 0])
        for m, mod in enumerate(modules):
            _, _, energy, success = _evaluate(dev, mod, p, b_grid[None, :], cell, config)
            c = config.v * w[k] * (1.0 - success * _fit(mod, dev.n_samples, config)) + q * energy
            cost[k, m] = np.where(success > 0, c, np.inf)
    skip = config.v * w

    def choose(price: float) -> tuple[np.ndarray, np.ndarray]:
        total = (cost + price * b_grid).reshape(len(devices), -1)
        best = total.argmin(axis=1)
        take = total[np.arange(len(devices)), best] < skip
        return best, take

    def used_hz(price: float) -> float:
        best, take = choose(price)
        return float(b_grid[best % config.bandwidth_levels][take].sum())

    lo, hi = 0.0, 0.0
    if used_hz(0.0) > cell.total_bandwidth_hz:
        hi = (max(float(np.max(np.where(np.isfinite(cost), cost, 0.0))), float(skip.max())) + 1.0) / b_grid[0]
        for _ in range(config.bisection_steps):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if used_hz(mid) <= cell.total_bandwidth_hz else (mid, hi)
    best, take = choose(hi)
    decisions = []
    for k, dev in enumerate(devices):
        if not take[k]:
            decisions.append(SKIP)
            continue
        m, i_p, i_b = np.unravel_index(best[k], cost.shape[1:])
        p, b = float(p_grids[k][i_p]), float(b_grid[i_b])
        c_s, u_s, e_j, s = (float(x) for x in _evaluate(dev, modules[m], np.float64(p), np.float64(b), cell, config))
        decisions.append(DeviceDecision(modules[m].name, p, b, c_s, u_s, e_j, s))
    return _finish(decisions, devices, modules, queues_j, config, hi)


def _finish(decisions: list[DeviceDecision], devices: Sequence[DeviceState], modules: Sequence[ModuleCost],
            queues_j: Sequence[float], config: OptimizerConfig, price: float) -> RoundPlan:
    by_name = {m.name: m for m in modules}
    w = _weights(devices)
    risk = float(sum(wk * (1.0 - (d.success_prob * _fit(by_name[d.module], dev.n_samples, config)
                                  if d.module is not None else 0.0))
                     for wk, d, dev in zip(w, decisions, devices)))
    objective = config.v * risk + float(np.dot(queues_j, [d.energy_j for d in decisions]))
    return RoundPlan(tuple(decisions), risk, objective, price)


def _equal_split_plan(devices: Sequence[DeviceState], chosen: Sequence[ModuleCost], modules: Sequence[ModuleCost],
                      queues_j: Sequence[float], cell: CellConfig, config: OptimizerConfig) -> RoundPlan:
    b = cell.total_bandwidth_hz / len(devices)
    decisions = []
    for dev, mod in zip(devices, chosen):
        p = dev.profile.max_power_w
        c_s, u_s, e_j, s = (float(x) for x in _evaluate(dev, mod, np.float64(p), np.float64(b), cell, config))
        decisions.append(DeviceDecision(mod.name, p, b, c_s, u_s, e_j, s))
    return _finish(decisions, devices, modules, queues_j, config, 0.0)


def fixed_plan(devices: Sequence[DeviceState], module: ModuleCost, queues_j: Sequence[float],
               cell: CellConfig, config: OptimizerConfig) -> RoundPlan:
    """Baseline: every device trains ``module`` at maximum power on ``B_total / K``.

    Nobody skips: a device that misses the deadline still spends its energy and
    its update counts as lost (``success_prob`` 0).
    """
    if not devices:
        raise ValueError("need at least one device")
    return _equal_split_plan(devices, [module] * len(devices), [module], queues_j, cell, config)


def random_plan(devices: Sequence[DeviceState], modules: Sequence[ModuleCost], queues_j: Sequence[float],
                cell: CellConfig, config: OptimizerConfig, rng: np.random.Generator) -> RoundPlan:
    """Baseline: like :func:`fixed_plan` with a module drawn uniformly per device from ``rng``."""
    if not devices or not modules:
        raise ValueError("need at least one device and one module")
    chosen = [modules[int(i)] for i in rng.integers(len(modules), size=len(devices))]
    return _equal_split_plan(devices, chosen, modules, queues_j, cell, config)
