"""What ``semalign fed`` writes and prints: ``fed.json`` and ``fed.csv`` (:func:`write_result`), a sweep's
``fed_sweep.json``, ``fed_sweep.csv`` and ``fed_sweep.md`` (:func:`write_sweep`), and the per-round and
summary Markdown tables (:func:`format_tables`; energies in mJ, times in s)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from semalign.campaigns.tables import markdown_lines

CSV_FIELDS = ("policy", "round", "device_id", "status", "module", "rank", "power_w", "bandwidth_hz",
              "upload_bits", "upload_s", "compute_s", "transmit_energy_j", "compute_energy_j", "energy_j",
              "energy_budget_j", "queue_j", "outcome", "loss_reason", "packet_error", "uplink_sinr_db",
              "local_train_s", "global_acc", "round_wall_s", "error")


def write_result(result: dict, out: Path) -> None:
    """``out/fed.json`` (all of ``result``) and ``out/fed.csv`` (:func:`csv_rows`)."""
    (out / "fed.json").write_text(json.dumps(result, indent=1, default=str))
    with open(out / "fed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(csv_rows(result))


def csv_rows(result: dict) -> list[dict]:
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


def write_sweep(sweep: dict, out: Path) -> None:
    """``out/fed_sweep.json``, ``out/fed_sweep.csv`` (one row per run, policy, round and device) and
    ``out/fed_sweep.md`` of a :func:`~semalign.campaigns.fed_lora.fed.run_fed_sweep` result."""
    from semalign.campaigns.fed_lora.fed_report import format_sweep

    (out / "fed_sweep.json").write_text(json.dumps(sweep, indent=1, default=str))
    with open(out / "fed_sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ("seed", "budget_ref_j") + CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for run in sweep["runs"]:
            for row in csv_rows(run["result"]):
                w.writerow({**row, "seed": run["seed"], "budget_ref_j": run["budget_j"]})
    (out / "fed_sweep.md").write_text(format_sweep(sweep) + "\n")
