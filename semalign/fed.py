"""``semalign fed``: a fed-lora federation on loopback, one base station and N device processes.

For each policy asked for (ours, fixed, random) the campaign starts the base
station (``semalign rx --mode fed-lora``) and N devices (``semalign tx --mode
fed-lora --device-id k``) as separate processes through
:mod:`semalign.processes`, over CURVE with throwaway keys (one allowed key
per device), waits for the devices to finish their rounds, stops the base
station, and reads every device's ``results.json`` and the base station's
``base_station.jsonl``. It prints per-round Markdown tables (global accuracy,
module, energy and queue per device, lost uploads) and a summary against the
energy budgets, and writes ``fed.json`` (everything, with every process id)
and ``fed.csv`` (one row per policy, round and device) under ``out``.

Devices are heterogeneous by construction (:func:`device_profiles`):
distances from 150 m to 1.5 km, compute speeds, and energy budgets around
the task's default budget.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.modes.fed_lora.spec import TASKS, preset
from common.results.log import load_results
from semalign.processes import free_port, launch, stop_process, throwaway_keys

log = logging.getLogger("semalign.fed")
POLICIES = ("ours", "fixed", "random")
CSV_FIELDS = ("policy", "round", "device_id", "status", "module", "rank", "power_w", "bandwidth_hz",
              "upload_bits", "upload_s", "compute_s", "transmit_energy_j", "compute_energy_j", "energy_j",
              "energy_budget_j", "queue_j", "outcome", "loss_reason", "packet_error", "uplink_sinr_db",
              "local_train_s", "global_acc", "error")
# per device, cycled: distance (m), compute speed (FLOP/s: 2.5, 1.5, 1.0, 2.0 GHz x 16 FLOP/cycle, as in
# runs/fed_lab.md), energy budget as a multiple of the task's default budget
PROFILE_CYCLE = ((150.0, 4.0e10, 2.0), (400.0, 2.4e10, 1.0), (800.0, 1.6e10, 0.6), (1500.0, 3.2e10, 1.2))


@dataclass(frozen=True)
class FedCampaign:
    """What ``semalign fed`` runs: ``devices`` x ``rounds`` for each of ``policies`` on ``task``.

    ``budget_j``: the reference energy budget per round that device budgets
    are multiples of (None: the task's default device budget).
    ``rx_options``/``tx_options``: further daemon options (name -> value) for
    the base station / every device. ``timeout_s``: wall-clock cap per policy.
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

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
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
    """Run every policy of ``c``; returns (and writes to ``out/fed.json``) the collected results."""
    out.mkdir(parents=True, exist_ok=True)
    profiles = device_profiles(c.devices, c.task, c.budget_j)
    result = {"config": {**asdict(c), "policies": list(c.policies)}, "profiles": profiles, "policies": {}}
    for policy in c.policies:
        t0 = time.perf_counter()
        result["policies"][policy] = run_policy(c, policy, profiles, out)
        result["policies"][policy]["wall_s"] = time.perf_counter() - t0
        _write(result, out)
    return result


def _shared(c: FedCampaign) -> dict:
    return {"mode": "fed-lora", "fed_task": c.task, "fed_devices": c.devices, "fed_beta": c.beta, "seed": c.seed,
            "fed_pool_size": c.pool_size, "data_dir": c.data_dir}


def run_policy(c: FedCampaign, policy: str, profiles: list[dict], out: Path) -> dict:
    """One federation with ``policy``: base station + devices as processes; their results."""
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
    bs = [json.loads(x) for x in bs_log.read_text().splitlines() if x.strip()] if bs_log.exists() else []
    return {"rx_pid": rx.pid, "rx_exit": rx_code, "tx_pids": [p.pid for p in devices],
            "devices": {k: r["rounds"] for k, r in rows.items()},
            "device_config": {k: r["config"] for k, r in rows.items()}, "base_station": bs,
            "summary": summarise(rows, bs, profiles)}


def summarise(rows: dict, bs: list[dict], profiles: list[dict]) -> dict:
    """Final accuracy, per-device mean energy vs budget, lost uploads, round times."""
    per_device = {}
    for k, res in rows.items():
        ok = [r for r in res["rounds"] if r["status"] == "ok"]
        energy = [r.get("energy_j") or 0.0 for r in ok]
        budget = profiles[k]["fed_energy_budget_j"]
        per_device[k] = {"mean_energy_j": sum(energy) / len(energy) if energy else None, "budget_j": budget,
                         "final_queue_j": ok[-1].get("queue_j") if ok else None,
                         "lost": sum(r.get("outcome") == "lost" for r in ok),
                         "skipped": sum(r.get("outcome") == "skipped" for r in ok),
                         "failed": sum(r["status"] != "ok" for r in res["rounds"]),
                         "modules": [r.get("module") for r in res["rounds"]]}
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
        for policy, res in result["policies"].items():
            for k, rounds in res["devices"].items():
                for r in rounds:
                    w.writerow({**r, "policy": policy, "device_id": k})


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
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
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
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### summary", ""]
    head = ["policy", "final acc", "best acc", "mean E/device mJ"] + \
        [f"dev{k} mean E / budget mJ" for k in range(n)] + ["budgets met", "lost", "failed", "s/round"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
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
        lines.append("| " + " | ".join(cells) + " |")
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
