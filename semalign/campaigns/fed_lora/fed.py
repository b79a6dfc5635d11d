"""``semalign fed``: a fed-lora federation on loopback, one base station and N device processes.

For each policy asked for (ours, fixed, random) the campaign runs one
federation on one of two engines (:data:`~.fed_config.ENGINES`):

- ``daemons`` (:func:`~.fed_engines.run_policy`): the base station (``semalign rx --mode
  fed-lora``) and N devices (``semalign tx --mode fed-lora --device-id k``) as
  separate processes through :mod:`semalign.campaigns.processes`, over CURVE with
  throwaway keys (one allowed key per device); it waits for the devices to
  finish their rounds, stops the base station, and reads every device's
  ``results.json`` and the base station's ``base_station.jsonl``;
- ``flower`` (:func:`~.fed_engines.run_policy_flower`): the same federation under Flower's
  deployment engine on loopback (a SuperLink, one SuperNode per device and
  ``flwr run``, TLS with SuperNode authentication unless ``--insecure``,
  :func:`~common.modes.fed_lora.flower.local.run_flower_local`);
  the device profiles become node configs and the federation's settings the
  run config (:func:`~.fed_config.flower_configs`), and the per-device round rows are
  built from the base station's records (:func:`~.fed_engines.device_rows`).

Either way it prints per-round Markdown tables (global accuracy,
module, energy and queue per device, lost uploads) and a summary against the
energy budgets, and writes ``fed.json`` (everything, with every process id),
``fed.csv`` (one row per policy, round and device) and the figures of
:mod:`semalign.campaigns.fed_lora.fed_report` under ``out``.

With ``reference`` the campaign also trains the centralised-LoRA upper
reference in-process (:func:`~.fed_central.run_central`): the same model and the largest
module, on the union of the devices' shards. :func:`run_fed_sweep` repeats
the campaign over several reference budgets and seeds (``fed_sweep.json``,
``fed_sweep.csv``, ``fed_sweep.md``, ``fed_sweep.png``).

Devices are heterogeneous by construction (:func:`~.fed_config.device_profiles`):
distances from 150 m to 1.5 km, compute speeds, and energy budgets around
the task's default budget.

Here: the campaign and the sweep; the settings and profiles in
:mod:`.fed_config`, the engines in :mod:`.fed_engines`, the reference in
:mod:`.fed_central`, the files and tables in :mod:`.fed_output`.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from semalign.campaigns.fed_lora.fed_central import run_central
from semalign.campaigns.fed_lora.fed_config import FedCampaign, device_profiles
from semalign.campaigns.fed_lora.fed_engines import run_policy, run_policy_flower
from semalign.campaigns.fed_lora.fed_output import format_tables, write_result, write_sweep

log = logging.getLogger("semalign.fed")


def run_fed(c: FedCampaign, out: Path) -> dict:
    """Run every policy of ``c`` (and the reference); returns (and writes to ``out/fed.json``,
    ``out/fed.csv`` and the figures) the collected results. ``result["loadavg"]``: the 1-minute load
    average at the start and the end."""
    if c.engine == "flower" and importlib.util.find_spec("flwr") is None:
        raise RuntimeError("--engine flower needs Flower: pip install 'semalign[flower]'")
    out.mkdir(parents=True, exist_ok=True)
    profiles = device_profiles(c.devices, c.task, c.budget_j)
    runner = run_policy_flower if c.engine == "flower" else run_policy
    result = {"config": {**asdict(c), "policies": list(c.policies)}, "profiles": profiles, "policies": {},
              "loadavg": {"start": _loadavg()}}
    for policy in c.policies:
        t0 = time.perf_counter()
        result["policies"][policy] = runner(c, policy, profiles, out)
        result["policies"][policy]["wall_s"] = time.perf_counter() - t0
        write_result(result, out)
    if c.reference:
        result["reference"] = run_central(c)
    result["loadavg"]["end"] = _loadavg()
    write_result(result, out)
    if c.plots:
        from semalign.campaigns.fed_lora.fed_report import write_plots

        result["figures"] = [str(p) for p in write_plots(result, out)]
        write_result(result, out)
    return result


def _loadavg() -> float | None:
    """The 1-minute load average (``/proc/loadavg``), None where there is none."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_fed_sweep(c: FedCampaign, budgets_j: Sequence[float], seeds: Sequence[int], out: Path) -> dict:
    """``c`` for every seed in ``seeds`` and, for the online policy, every reference budget (J) in
    ``budgets_j``; each campaign in ``out/seed<s>/budget<b>/`` with its own figures.

    Only ``ours`` plans by the budgets: ``fixed`` and ``random`` (and the reference) run once per seed,
    at the first budget. Returns (and writes ``fed_sweep.json``, ``fed_sweep.csv`` one row per run,
    policy and device, ``fed_sweep.md``, ``fed_sweep.png``) ``config``, ``budgets_j``, ``seeds``,
    ``runs`` (each ``seed``, ``budget_j``, ``dir``, ``result``) and ``loadavg``.
    """
    if not budgets_j or not seeds:
        raise ValueError(f"a sweep needs budgets and seeds, got {list(budgets_j)} and {list(seeds)}")
    bad = [b for b in budgets_j if not (math.isfinite(b) and b > 0)]
    if bad:
        raise ValueError(f"budgets must be finite and > 0 J, got {bad}")
    out.mkdir(parents=True, exist_ok=True)
    sweep = {"config": {**asdict(c), "policies": list(c.policies)}, "budgets_j": [float(b) for b in budgets_j],
             "seeds": [int(s) for s in seeds], "runs": [], "loadavg": {"start": _loadavg()}}
    for seed in seeds:
        for i, budget in enumerate(budgets_j):
            policies = c.policies if i == 0 else tuple(p for p in c.policies if p == "ours")
            if not policies:
                continue
            d = out / f"seed{seed}" / f"budget{budget:g}"
            cc = replace(c, seed=seed, budget_j=budget, policies=policies, reference=c.reference and i == 0)
            log.info("sweep: seed %d, reference budget %g J, policies %s", seed, budget, ",".join(policies))
            sweep["runs"].append({"seed": seed, "budget_j": float(budget), "dir": str(d), "result": run_fed(cc, d)})
            write_sweep(sweep, out)
    sweep["loadavg"]["end"] = _loadavg()
    write_sweep(sweep, out)
    if c.plots:
        from semalign.campaigns.fed_lora.fed_report import plot_sweep

        sweep["figure"] = str(plot_sweep(sweep, out / "fed_sweep.png"))
        write_sweep(sweep, out)
    return sweep


def run_fed_demo(rounds: int, out: Path, devices: int, task: str, policy: str, data_dir: str | None,
                 config: Path | None) -> dict:
    """``semalign demo --mode fed-lora``: one federation on loopback (a base station and ``devices``
    device processes, CURVE with throwaway keys) under one policy; prints the per-round tables."""
    if config is not None:
        raise ValueError("--config: the fed-lora demo takes its settings from its options; for a TOML-driven "
                         "federation start `semalign rx --mode fed-lora` and the devices yourself")
    result = run_fed(FedCampaign(devices=devices, rounds=rounds, task=task, policies=(policy,),
                                 data_dir=data_dir), out)
    print(format_tables(result))
    print(f"results in {out / 'fed.json'} and {out / 'fed.csv'}")
    return result
