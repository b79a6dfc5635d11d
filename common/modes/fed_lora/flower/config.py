"""Flower's run config and node config as fed-lora options (no flwr import).

Flower hands a ServerApp and every ClientApp the run config (``[tool.flwr.app.config]``
of ``deploy/flower/pyproject.toml``, overridden by ``flwr run --run-config``) and a
ClientApp its SuperNode's node config (``flower-supernode --node-config``). Their
keys are the fed-lora options of ``semalign rx`` / ``semalign tx --mode fed-lora``
(:class:`~common.modes.fed_lora.mode.FedLora`) in kebab-case (``fed-policy``,
``fed-distance-m``, ...), plus :data:`RUN_EXTRA`. A Flower config cannot hold "not
set": for an option whose default depends on the task (its help says "[default:
mlp ..., text ...]"), ``0`` or ``""`` means "the task's default".

Run config: the federation (shared options), the base station's options, the
devices' local training (``fed-epochs``, ``fed-batch``, ``fed-lr``) and
:data:`RUN_EXTRA`. Node config: the device (:data:`NODE_KEYS`: ``device-id`` and
its profile), and optionally its own local training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.modes.fed_lora.mode import FedLora
from common.options import UNSET, Option

RUN_EXTRA: tuple[Option, ...] = (
    Option("seed", int, "seed of the federation: training pool, split, base model, fading, loss draws", 0),
    Option("rounds", int, "federated rounds this run plays", 2),
    Option("threads", int, "torch threads in each ServerApp / ClientApp process", 1),
)
TRAINING_KEYS = ("fed_epochs", "fed_batch", "fed_lr")  # run-wide, a node may override
NODE_KEYS = ("device_id", "fed_distance_m", "fed_flops_per_s", "fed_max_power_w", "fed_energy_budget_j")

_TX = {o.name: o for o in FedLora.tx_options}
RUN_OPTIONS: tuple[Option, ...] = (*FedLora.rx_options, *(_TX[k] for k in TRAINING_KEYS), *RUN_EXTRA)
NODE_OPTIONS: tuple[Option, ...] = tuple(_TX[k] for k in (*NODE_KEYS, *TRAINING_KEYS))


def flower_key(name: str) -> str:
    """An option's key in a Flower config: ``fed_distance_m`` -> ``fed-distance-m``."""
    return name.replace("_", "-")


def parse(config: Mapping[str, Any], options: tuple[Option, ...], where: str) -> dict[str, Any]:
    """``config`` (kebab-case keys, TOML values) -> ``{option name: value}``, typed and checked.

    An option without a fixed default given as ``0`` or ``""`` is left out (the
    task's default applies). Raises ``ValueError`` naming the key for an unknown
    key or a value of the wrong type; ``where`` names the config in the message.
    """
    by_key = {flower_key(o.name): o for o in options}
    out: dict[str, Any] = {}
    for key, value in config.items():
        o = by_key.get(key)
        if o is None:
            raise ValueError(f"unknown {where} key {key!r}; known: {', '.join(sorted(by_key))}")
        if o.default is UNSET and value in (0, "") and not isinstance(value, bool):
            continue
        out[o.name] = _typed(o, key, value, where)
    return out


def _typed(o: Option, key: str, value: Any, where: str) -> Any:
    if o.type is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} {key} must be true or false, got {value!r}")
        return value
    if o.type is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{where} {key} must be an integer, got {value!r}")
        return value
    if o.type is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{where} {key} must be a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{where} {key} must be a string, got {value!r}")
    return value


def run_options(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The run config as options: what ``FedLora.build_rx`` reads, plus ``rounds``, ``threads`` and the
    devices' local training. ``rounds`` must be >= 1; ``fed-out`` an absolute path (the ServerApp runs
    on the SuperLink's host, in a directory of Flower's choosing)."""
    opts = parse(run_config, RUN_OPTIONS, "run config")
    if "fed_out" in opts and not Path(opts["fed_out"]).is_absolute():
        raise ValueError(f"run config fed-out must be an absolute path on the SuperLink's host, got "
                         f"{opts['fed_out']!r}")
    if opts.get("rounds", 2) < 1:
        raise ValueError(f"run config rounds must be >= 1, got {opts['rounds']}")
    if opts.get("threads", 1) < 1:
        raise ValueError(f"run config threads must be >= 1, got {opts['threads']}")
    return opts


def device_options(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> dict[str, Any]:
    """What ``FedLora.build_tx`` reads for the device of this SuperNode: the run config's federation
    and local training, the node config's device (``device-id`` required) and its training overrides."""
    node = parse(node_config, NODE_OPTIONS, "node config")
    if "device_id" not in node:
        raise ValueError("node config needs device-id (flower-supernode --node-config 'device-id=0 ...')")
    return {**run_options(run_config), **node}
