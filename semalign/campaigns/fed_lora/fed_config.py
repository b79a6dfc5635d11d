"""``semalign fed``'s settings: :class:`FedCampaign`, the devices' profiles (:func:`device_profiles`:
distances in m, compute speeds in FLOP/s, energy budgets in J per round) and the Flower engine's node and
run configs (:func:`flower_configs`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from common.modes.fed_lora.aggregation import AGGREGATIONS
from common.modes.fed_lora.spec import TASKS, preset
from common.modes.fed_lora.station_config import POLICIES

ENGINES = ("daemons", "flower")  # run_policy, run_policy_flower
FLOWER_JOIN_TIMEOUT_S = 120.0  # the ServerApp's wait for every SuperNode (returns as soon as all are there)
# per device, cycled: distance (m), compute speed (FLOP/s: 2.5, 1.5, 1.0, 2.0 GHz x 16 FLOP/cycle, as in
# runs/fed_lab.md), energy budget as a multiple of the task's default budget
PROFILE_CYCLE = ((150.0, 4.0e10, 2.0), (400.0, 2.4e10, 1.0), (800.0, 1.6e10, 0.6), (1500.0, 3.2e10, 1.2))


@dataclass(frozen=True)
class FedCampaign:
    """What ``semalign fed`` runs: ``devices`` x ``rounds`` for each of ``policies`` on ``task``.

    ``budget_j``: the reference energy budget per round that device budgets
    are multiples of (None: the task's default device budget).
    ``rx_options``/``tx_options``: further daemon options (name -> value) for
    the base station / every device (under Flower: the run config, kebab-case, :func:`flower_configs`).
    ``engine``: ``daemons`` (our ZeroMQ daemons) or ``flower`` (Flower's deployment engine on loopback).
    ``secure``: CURVE with throwaway keys (daemons), or TLS and SuperNode authentication with throwaway
    certificates and node keys (Flower).
    ``timeout_s``: wall-clock cap per policy.
    ``reference``: also train the centralised-LoRA reference (:func:`run_central`).
    ``plots``: write the figures of :mod:`semalign.campaigns.fed_lora.fed_report`.
    """

    devices: int = 4
    rounds: int = 8
    task: str = "mlp"
    policies: tuple[str, ...] = ("ours",)
    data_dir: str | None = None
    seed: int = 0
    beta: float = 0.5
    pool_size: int = 0
    aggregation: str = "stack-svd"
    budget_j: float | None = None
    secure: bool = True
    timeout_s: float = 1800.0
    rx_options: dict = field(default_factory=dict)
    tx_options: dict = field(default_factory=dict)
    reference: bool = False
    plots: bool = True
    engine: str = "daemons"

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        bad = [p for p in self.policies if p not in POLICIES]
        if bad or not self.policies:
            raise ValueError(f"policies must be among {POLICIES}, got {list(self.policies)}")
        if self.devices < 1 or self.rounds < 1:
            raise ValueError(f"devices={self.devices} and rounds={self.rounds} must be >= 1")
        if self.task != "mlp" and not self.data_dir:
            raise ValueError(f"task {self.task} needs --data-dir (<dir>/{self.task}/*.tsv)")
        if self.budget_j is not None and not (math.isfinite(self.budget_j) and self.budget_j > 0):
            raise ValueError(f"budget_j must be finite and > 0, got {self.budget_j}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.engine == "flower":  # a key Flower's app does not know fails here, not in the ServerApp
            from common.modes.fed_lora.flower.config import NODE_OPTIONS, parse, run_options

            nodes, run = flower_configs(self, self.policies[0], device_profiles(self.devices, self.task,
                                                                                 self.budget_j))
            run_options(run)
            for node in nodes:
                parse(node, NODE_OPTIONS, "node config")


def device_profiles(n: int, task: str, budget_j: float | None = None) -> list[dict]:
    """Device ``k``'s daemon options: distance, compute speed and energy budget (cycled, see the module doc).

    Budgets are multiples of ``budget_j`` (None: the task's default device budget).
    """
    budget = budget_j or preset(task).energy_budget_j
    out = []
    for k in range(n):
        d, flops, scale = PROFILE_CYCLE[k % len(PROFILE_CYCLE)]
        out.append({"fed_distance_m": d * (1 + 0.1 * (k // len(PROFILE_CYCLE))), "fed_flops_per_s": flops,
                    "fed_energy_budget_j": round(budget * scale, 9)})
    return out


def shared_options(c: FedCampaign) -> dict:
    """The daemon options every process of ``c``'s federation shares (mode, task, devices, split, seed)."""
    return {"mode": "fed-lora", "fed_task": c.task, "fed_devices": c.devices, "fed_beta": c.beta, "seed": c.seed,
            "fed_pool_size": c.pool_size, "data_dir": c.data_dir}


def flower_configs(c: FedCampaign, policy: str, profiles: list[dict]) -> tuple[list[dict], dict]:
    """``(node_configs, run_config)`` of ``c`` under Flower with ``policy``: device k's profile
    (:func:`device_profiles`: ``fed-distance-m`` m, ``fed-flops-per-s`` FLOP/s, ``fed-energy-budget-j``
    J) plus ``device-id`` k; the federation (task, devices, beta, pool size, seed, data dir as an absolute
    path), policy, aggregation, rounds, one torch thread per process, ``fed-join-timeout-s``
    (:data:`FLOWER_JOIN_TIMEOUT_S`) and ``c.rx_options``/``c.tx_options``; kebab-case keys, None left out.
    """
    from common.modes.fed_lora.flower.config import flower_key

    shared = {k: v for k, v in shared_options(c).items() if k != "mode"}
    if c.data_dir:
        shared["data_dir"] = str(Path(c.data_dir).resolve())  # the apps run in directories of Flower's choosing
    run = {**shared, "fed_policy": policy, "fed_aggregation": c.aggregation, "rounds": c.rounds, "threads": 1,
           "fed_join_timeout_s": FLOWER_JOIN_TIMEOUT_S, **c.rx_options, **c.tx_options}
    nodes = [{"device-id": k, **{flower_key(key): v for key, v in p.items()}} for k, p in enumerate(profiles)]
    return nodes, {flower_key(k): v for k, v in run.items() if v is not None}
