"""One ``semalign fed`` federation under one policy, on either engine: our daemons as processes
(:func:`run_policy`) or Flower's deployment engine on loopback (:func:`run_policy_flower`); the per-device
round rows (:func:`device_rows`) and their summary against the energy budgets (:func:`summarise`)."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from common.files import read_jsonl
from common.results.log import load_results
from semalign.campaigns.fed_lora.fed_config import FedCampaign, flower_configs, shared_options
from semalign.campaigns.processes import free_port, launch, stop_process, throwaway_keys

log = logging.getLogger("semalign.fed")


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
    rx = launch("rx", {**shared_options(c), "bind": address, "fed_policy": policy, "fed_aggregation": c.aggregation,
                       "fed_out": d / "bs", "threads": 1, **rx_curve, **c.rx_options}, d / "rx.log", env)
    log.info("%s: base station pid %d on %s", policy, rx.pid, address)
    devices: list[subprocess.Popen] = []
    try:
        for k, profile in enumerate(profiles):
            curve = keys[k][1] if keys else {"insecure": True}
            devices.append(launch("tx", {**shared_options(c), "connect": address, "device_id": k, "rounds": c.rounds,
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
