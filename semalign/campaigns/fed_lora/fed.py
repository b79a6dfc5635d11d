"""``semalign fed``: a fed-lora federation on loopback, one base station and N device processes.

For each policy asked for (ours, fixed, random) the campaign runs one
federation on one of two engines (:data:`ENGINES`):

- ``daemons`` (:func:`run_policy`): the base station (``semalign rx --mode
  fed-lora``) and N devices (``semalign tx --mode fed-lora --device-id k``) as
  separate processes through :mod:`semalign.campaigns.processes`, over CURVE with
  throwaway keys (one allowed key per device); it waits for the devices to
  finish their rounds, stops the base station, and reads every device's
  ``results.json`` and the base station's ``base_station.jsonl``;
- ``flower`` (:func:`run_policy_flower`): the same federation under Flower's
  deployment engine on loopback (a SuperLink, one SuperNode per device and
  ``flwr run``, TLS with SuperNode authentication unless ``--insecure``,
  :func:`~common.modes.fed_lora.flower.local.run_flower_local`);
  the device profiles become node configs and the federation's settings the
  run config (:func:`flower_configs`), and the per-device round rows are
  built from the base station's records (:func:`device_rows`).

Either way it prints per-round Markdown tables (global accuracy,
module, energy and queue per device, lost uploads) and a summary against the
energy budgets, and writes ``fed.json`` (everything, with every process id),
``fed.csv`` (one row per policy, round and device) and the figures of
:mod:`semalign.campaigns.fed_lora.fed_report` under ``out``.

With ``reference`` the campaign also trains the centralised-LoRA upper
reference in-process (:func:`run_central`): the same model and the largest
module, on the union of the devices' shards. :func:`run_fed_sweep` repeats
the campaign over several reference budgets and seeds (``fed_sweep.json``,
``fed_sweep.csv``, ``fed_sweep.md``, ``fed_sweep.png``).

Devices are heterogeneous by construction (:func:`device_profiles`):
distances from 150 m to 1.5 km, compute speeds, and energy budgets around
the task's default budget.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from common.files import read_jsonl
from common.modes.fed_lora.aggregation import AGGREGATIONS
from common.modes.fed_lora.spec import TASKS, preset
from common.results.log import load_results
from semalign.campaigns.processes import free_port, launch, stop_process, throwaway_keys
from semalign.campaigns.tables import markdown_lines

log = logging.getLogger("semalign.fed")
POLICIES = ("ours", "fixed", "random")
ENGINES = ("daemons", "flower")  # run_policy, run_policy_flower
FLOWER_JOIN_TIMEOUT_S = 120.0  # the ServerApp's wait for every SuperNode (returns as soon as all are there)
CSV_FIELDS = ("policy", "round", "device_id", "status", "module", "rank", "power_w", "bandwidth_hz",
              "upload_bits", "upload_s", "compute_s", "transmit_energy_j", "compute_energy_j", "energy_j",
              "energy_budget_j", "queue_j", "outcome", "loss_reason", "packet_error", "uplink_sinr_db",
              "local_train_s", "global_acc", "round_wall_s", "error")
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
        _write(result, out)
    if c.reference:
        result["reference"] = run_central(c)
    result["loadavg"]["end"] = _loadavg()
    _write(result, out)
    if c.plots:
        from semalign.campaigns.fed_lora.fed_report import write_plots

        result["figures"] = [str(p) for p in write_plots(result, out)]
        _write(result, out)
    return result


def _loadavg() -> float | None:
    """The 1-minute load average (``/proc/loadavg``), None where there is none."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_central(c: FedCampaign) -> dict:
    """The centralised-LoRA upper reference of ``c``, trained in-process (no daemons).

    The federation's model (same task, seed, so the same frozen base and initial head) trains the
    module fixed-rank FedAvg uses (``rx_options["fed_fixed_module"]``, else the largest) on the union
    of the devices' shards: per "round" ``epochs`` passes over the union with the devices' batch size
    and learning rate and a fresh Adam, like one device holding all the data. So it takes as many
    optimiser steps per round as all devices of a FedAvg round together (up to each shard's last short
    batch), and ``rounds`` rounds. After every round the model (base + the module's exact ``B A`` +
    head, :meth:`predict_merged`, as the base station evaluates) is scored on the base station's
    evaluation subset. Training runs on one torch thread, like every daemon of the campaign.

    Returns ``module``, ``n_train``, ``epochs``/``batch_size``/``lr`` per round, ``acc_before`` and
    ``acc_by_round`` (0..1), ``train_s`` (wall seconds of training, all rounds), ``steps`` (optimiser
    steps, all rounds), ``seed``.
    """
    import torch

    from common.learn.train import TrainConfig
    from common.modes.fed_lora.mode import fed_spec
    from common.modes.fed_lora.spec import build_task, eval_subset, load_fed_data, take

    spec = fed_spec(_shared(c))
    p = preset(c.task)
    data = load_fed_data(spec, c.data_dir)
    task = build_task(spec, data.n_classes)
    module = c.rx_options.get("fed_fixed_module") or max(task.modules, key=task.upload_bits)
    union = np.sort(np.concatenate(data.parts))
    x, y = take(data.train_x, union), data.train_y[union]
    eval_size = c.rx_options.get("fed_eval_size")
    idx = eval_subset(len(data.test_y), p.eval_size if eval_size is None else eval_size, spec.seed)
    ex, ey = take(data.test_x, idx), data.test_y[idx]
    epochs = c.tx_options.get("fed_epochs") or p.epochs
    batch = c.tx_options.get("fed_batch") or p.batch_size
    lr = c.tx_options.get("fed_lr") or p.lr

    def accuracy() -> float:
        return float(np.mean(task.predict_merged(ex, task.get_adapter(module)) == ey))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every daemon of the campaign
    try:
        accs, train_s, steps, before = [], 0.0, 0, accuracy()
        for r in range(c.rounds):
            cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=lr,
                              seed=int(np.random.default_rng([spec.seed, r, CENTRAL_SEED_TAG]).integers(2**31)))
            t0 = time.perf_counter()
            report = task.train_adapter(module, x, y, cfg)
            train_s += time.perf_counter() - t0
            steps += report.steps
            accs.append(accuracy())
            log.info("central reference: round %d, %s on %d samples, accuracy %.4f", r, module, len(y), accs[-1])
    finally:
        torch.set_num_threads(threads)
    return {"module": module, "n_train": int(len(y)), "epochs": float(epochs), "batch_size": int(batch),
            "lr": float(lr), "acc_before": before, "acc_by_round": accs, "train_s": train_s, "steps": steps,
            "seed": spec.seed, "eval_size": int(len(ey))}


CENTRAL_SEED_TAG = 1_000_003  # the reference's batch-order seed: default_rng([seed, round, tag])


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
            _write_sweep(sweep, out)
    sweep["loadavg"]["end"] = _loadavg()
    _write_sweep(sweep, out)
    if c.plots:
        from semalign.campaigns.fed_lora.fed_report import plot_sweep

        sweep["figure"] = str(plot_sweep(sweep, out / "fed_sweep.png"))
        _write_sweep(sweep, out)
    return sweep


def _write_sweep(sweep: dict, out: Path) -> None:
    from semalign.campaigns.fed_lora.fed_report import format_sweep

    (out / "fed_sweep.json").write_text(json.dumps(sweep, indent=1, default=str))
    with open(out / "fed_sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ("seed", "budget_ref_j") + CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for run in sweep["runs"]:
            for row in _csv_rows(run["result"]):
                w.writerow({**row, "seed": run["seed"], "budget_ref_j": run["budget_j"]})
    (out / "fed_sweep.md").write_text(format_sweep(sweep) + "\n")


def _shared(c: FedCampaign) -> dict:
    return {"mode": "fed-lora", "fed_task": c.task, "fed_devices": c.devices, "fed_beta": c.beta, "seed": c.seed,
            "fed_pool_size": c.pool_size, "data_dir": c.data_dir}


def run_policy(c: FedCampaign, policy: str, profiles: list[dict], out: Path) -> dict:
    """One federation with ``policy`` on our daemons: base station + devices as processes; their results
    (``devices``: every device's ``results.json`` rounds, ``base_station``: its records, ``summary``,
    the processes' pids)."""
    d = out / policy
    d.mkdir(parents=True, exist_ok=True)
    for old in (d / "bs").glob("*"):  # a fresh base-station log per run
        old.unlink()
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    keys = [throwaway_keys(out / "keys", f"dev{k}") for k in range(c.devices)] if c.secure else []
    rx_curve = keys[0][0] if keys else {"insecure": True}
    rx = launch("rx", {**_shared(c), "bind": address, "fed_policy": policy, "fed_aggregation": c.aggregation,
                       "fed_out": d / "bs", "threads": 1, **rx_curve, **c.rx_options}, d / "rx.log", env)
    log.info("%s: base station pid %d on %s", policy, rx.pid, address)
    devices: list[subprocess.Popen] = []
    try:
        for k, profile in enumerate(profiles):
            curve = keys[k][1] if keys else {"insecure": True}
            devices.append(launch("tx", {**_shared(c), "connect": address, "device_id": k, "rounds": c.rounds,
                                         "out": d / f"dev{k}", **profile, **curve, **c.tx_options},
                                  d / f"dev{k}.log", env))
        deadline = time.monotonic() + c.timeout_s
        codes = []
        for k, p in enumerate(devices):
            try:
                codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{policy}: device {k} still running after {c.timeout_s:.0f} s; "
                                   f"see {d / f'dev{k}.log'}") from None
    finally:
        for p in devices:
            if p.poll() is None:
                stop_process(p, 10.0)
        rx_code = stop_process(rx)
    bad = [k for k, code in enumerate(codes) if code != 0]
    if bad:
        raise RuntimeError(f"{policy}: device(s) {bad} exited with {[codes[k] for k in bad]}; "
                           f"see {d}/dev<k>.log")
    rows = {k: load_results(d / f"dev{k}") for k in range(c.devices)}
    bs_log = d / "bs" / "base_station.jsonl"
    bs = read_jsonl(bs_log) if bs_log.exists() else []
    rounds = {k: r["rounds"] for k, r in rows.items()}
    return {"engine": "daemons", "rx_pid": rx.pid, "rx_exit": rx_code, "tx_pids": [p.pid for p in devices],
            "devices": rounds, "device_config": {k: r["config"] for k, r in rows.items()}, "base_station": bs,
            "summary": summarise(rounds, bs, profiles)}


def flower_configs(c: FedCampaign, policy: str, profiles: list[dict]) -> tuple[list[dict], dict]:
    """``(node_configs, run_config)`` of ``c`` under Flower with ``policy``: device k's profile
    (:func:`device_profiles`: ``fed-distance-m`` m, ``fed-flops-per-s`` FLOP/s, ``fed-energy-budget-j``
    J) plus ``device-id`` k; the federation (task, devices, beta, pool size, seed, data dir as an absolute
    path), policy, aggregation, rounds, one torch thread per process, ``fed-join-timeout-s``
    (:data:`FLOWER_JOIN_TIMEOUT_S`) and ``c.rx_options``/``c.tx_options``; kebab-case keys, None left out.
    """
    from common.modes.fed_lora.flower.config import flower_key

    shared = {k: v for k, v in _shared(c).items() if k != "mode"}
    if c.data_dir:
        shared["data_dir"] = str(Path(c.data_dir).resolve())  # the apps run in directories of Flower's choosing
    run = {**shared, "fed_policy": policy, "fed_aggregation": c.aggregation, "rounds": c.rounds, "threads": 1,
           "fed_join_timeout_s": FLOWER_JOIN_TIMEOUT_S, **c.rx_options, **c.tx_options}
    nodes = [{"device-id": k, **{flower_key(key): v for key, v in p.items()}} for k, p in enumerate(profiles)]
    return nodes, {flower_key(k): v for k, v in run.items() if v is not None}


def run_policy_flower(c: FedCampaign, policy: str, profiles: list[dict], out: Path) -> dict:
    """One federation with ``policy`` under Flower's deployment engine on loopback (a SuperLink, one
    SuperNode per device, ``flwr run``; everything in ``out/<policy>/``); its results as
    :func:`run_policy`'s, the device rows built from the base station's records (:func:`device_rows`),
    plus ``initial_acc`` (0..1, the untrained model), ``nodes`` (the join outcome per SuperNode),
    ``flower_wall_s`` (s, SuperLink start to the end of ``flwr run``), ``pids`` and ``logs``."""
    from common.modes.fed_lora.flower.local import run_flower_local

    nodes, run_config = flower_configs(c, policy, profiles)
    d = out / policy
    log.info("%s: Flower run of %d SuperNodes in %s", policy, len(nodes), d)
    run = run_flower_local(d, nodes, run_config, timeout_s=c.timeout_s, secure=c.secure)
    devices = device_rows(run.records, c.devices)
    return {"engine": "flower", "pids": run.pids, "devices": devices, "base_station": run.records,
            "initial_acc": run.summary["initial_acc"], "nodes": run.summary["nodes"], "flower_wall_s": run.wall_s,
            "logs": {name: str(path) for name, path in run.logs.items()},
            "summary": summarise(devices, run.records, profiles)}


def device_rows(records: Sequence[dict], n_devices: int) -> dict[int, list[dict]]:
    """Per-device round rows (``device id -> [row per round]``, ids 0..n_devices-1) from the base station's
    records (``base_station.jsonl``, one per formed round, every planned device's record in it).

    A row is the device's record of that round (module, energies in J, queue in J, outcome, ...) with
    ``round`` (the base station's), ``status`` (``error`` for the outcome ``failed``: the device raised,
    else ``ok``) and ``error`` (its reason, else None), as a device's ``results.json`` holds them. A device
    the base station did not plan in a round (not connected, joined late) has no row for it.
    """
    rows: dict[int, list[dict]] = {k: [] for k in range(n_devices)}
    for rec in records:
        for key, dev in rec.get("devices", {}).items():
            failed = dev.get("outcome") == "failed"
            rows.setdefault(int(key), []).append({**dev, "round": rec["round"], "status": "error" if failed else "ok",
                                                  "error": dev.get("loss_reason") if failed else None})
    return rows


def summarise(devices: dict, bs: list[dict], profiles: list[dict]) -> dict:
    """Final accuracy, per-device mean energy vs budget, lost uploads, round times; ``devices``: device
    id -> its round rows (a device's ``results.json`` rounds, or :func:`device_rows`)."""
    per_device = {}
    for k, rounds in devices.items():
        ok = [r for r in rounds if r["status"] == "ok"]
        energy = [r.get("energy_j") or 0.0 for r in ok]
        budget = profiles[k]["fed_energy_budget_j"]
        per_device[k] = {"mean_energy_j": sum(energy) / len(energy) if energy else None, "budget_j": budget,
                         "final_queue_j": ok[-1].get("queue_j") if ok else None,
                         "lost": sum(r.get("outcome") == "lost" for r in ok),
                         "skipped": sum(r.get("outcome") == "skipped" for r in ok),
                         "failed": sum(r["status"] != "ok" for r in rounds),
                         "modules": [r.get("module") for r in rounds]}
    accs = [b["global_acc"] for b in bs]
    walls = [b["round_wall_s"] for b in bs]
    means = [v["mean_energy_j"] for v in per_device.values() if v["mean_energy_j"] is not None]
    return {"final_acc": accs[-1] if accs else None, "best_acc": max(accs) if accs else None,
            "rounds_formed": len(bs), "mean_energy_j": sum(means) / len(means) if means else None,
            "budgets_met": all(v["mean_energy_j"] is not None and v["mean_energy_j"] <= v["budget_j"] * (1 + 1e-9)
                               for v in per_device.values()),
            "lost": sum(v["lost"] for v in per_device.values()),
            "failed": sum(v["failed"] for v in per_device.values()),
            "mean_round_wall_s": sum(walls) / len(walls) if walls else None, "devices": per_device}


def _write(result: dict, out: Path) -> None:
    (out / "fed.json").write_text(json.dumps(result, indent=1, default=str))
    with open(out / "fed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(_csv_rows(result))


def _csv_rows(result: dict) -> list[dict]:
    """fed.csv's rows: one per policy, round and device; the reference's as policy ``central``, one per
    round, with ``device_id`` empty and its training seconds of that round as ``round_wall_s`` (mean)."""
    rows = [{**r, "policy": policy, "device_id": k} for policy, res in result["policies"].items()
            for k, rounds in res["devices"].items() for r in rounds]
    ref = result.get("reference")
    if ref:
        n = len(ref["acc_by_round"])
        rows += [{"policy": "central", "round": i, "device_id": "", "status": "ok", "module": ref["module"],
                  "global_acc": acc, "round_wall_s": ref["train_s"] / n} for i, acc in enumerate(ref["acc_by_round"])]
    return rows


def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def format_tables(result: dict) -> str:
    """Markdown: one per-round table per policy, then the comparison of the policies."""
    lines = []
    profiles = result["profiles"]
    n = len(profiles)
    for policy, res in result["policies"].items():
        lines += [f"### policy {policy}", ""]
        head = ["round", "global acc"] + [f"dev{k} module / E mJ / Q mJ" for k in range(n)] + ["lost", "s"]
        table = []
        by_round = {b["round"]: b for b in res["base_station"]}
        rounds = sorted({r["round"] for rs in res["devices"].values() for r in rs})
        for rnd in rounds:
            cells = [str(rnd), _fmt(by_round.get(rnd, {}).get("global_acc"), ".3f")]
            lost = 0
            for k in range(n):
                r = next((x for x in res["devices"][k] if x["round"] == rnd), None)
                if r is None or r["status"] != "ok":
                    cells.append(f"failed: {(r or {}).get('error', 'no record')}"[:60])
                    continue
                lost += r.get("outcome") == "lost"
                mark = {"lost": " LOST", "missing": " missing"}.get(r.get("outcome"), "")
                cells.append(f"{r.get('module')}{mark} / {_fmt(1e3 * (r.get('energy_j') or 0), '.2f')} / "
                             f"{_fmt(1e3 * (r.get('queue_j') or 0), '.2f')}")
            cells += [str(lost), _fmt(by_round.get(rnd, {}).get("round_wall_s"), ".2f")]
            table.append(cells)
        lines += markdown_lines(head, table) + [""]
    lines += ["### summary", ""]
    head = ["policy", "final acc", "best acc", "mean E/device mJ"] + \
        [f"dev{k} mean E / budget mJ" for k in range(n)] + ["budgets met", "lost", "failed", "s/round"]
    table = []
    for policy, res in result["policies"].items():
        s = res["summary"]
        cells = [policy, _fmt(s["final_acc"], ".3f"), _fmt(s["best_acc"], ".3f"),
                 _fmt(1e3 * s["mean_energy_j"] if s["mean_energy_j"] is not None else None, ".2f")]
        for k in range(n):
            v = s["devices"][k] if k in s["devices"] else s["devices"][str(k)]
            cells.append(f"{_fmt(1e3 * v['mean_energy_j'] if v['mean_energy_j'] is not None else None, '.2f')}"
                         f" / {1e3 * v['budget_j']:.2f}")
        cells += ["yes" if s["budgets_met"] else "no", str(s["lost"]), str(s["failed"]),
                  _fmt(s["mean_round_wall_s"], ".2f")]
        table.append(cells)
    ref = result.get("reference")
    if ref:
        accs = ref["acc_by_round"]
        table.append(["central (reference)", _fmt(accs[-1] if accs else None, ".3f"),
                      _fmt(max(accs) if accs else None, ".3f"), "-"] + ["-"] * n +
                     ["-", "-", "-", _fmt(ref["train_s"] / len(accs) if accs else None, ".2f")])
    lines += markdown_lines(head, table)
    if ref:
        lines += ["", f"central reference: {ref['module']} on the union of the shards ({ref['n_train']} samples), "
                  f"{ref['epochs']:g} epochs per round, batch {ref['batch_size']}, lr {ref['lr']:g}, "
                  f"{ref['steps']} optimiser steps in all; accuracy {ref['acc_before']:.3f} before training; "
                  f"its s/round is training time in-process"]
    engines = {res.get("engine", "daemons") for res in result["policies"].values()}
    if "flower" in engines:
        before = ", ".join(f"{p} {_fmt(res.get('initial_acc'), '.3f')}" for p, res in result["policies"].items())
        lines += ["", "engine: Flower's deployment engine on loopback (a SuperLink, one SuperNode per device, "
                  f"`flwr run`; {'TLS + SuperNode authentication' if result.get('config', {}).get('secure', True) else 'insecure'}); "
                  f"global accuracy before any round: {before}; s/round is the "
                  "ServerApp's, with a fresh ClientApp process per device and round"]
    la = result.get("loadavg") or {}
    if la:
        lines += ["", f"load average (1 min): {_fmt(la.get('start'), '.2f')} at the start, "
                  f"{_fmt(la.get('end'), '.2f')} at the end"]
    return "\n".join(lines)


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
