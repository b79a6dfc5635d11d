"""``semalign fed``'s report: figures, tables, the sweep summary and the centralised reference (fast).

The campaign's end-to-end run through real daemons is in tests/test_fed_lora_mode.py.
"""

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from semalign.cli import app
from semalign.campaigns.fed_lora.fed_central import run_central
from semalign.campaigns.fed_lora.fed_config import FedCampaign
from semalign.campaigns.fed_lora.fed_output import format_tables, write_result
from semalign.campaigns.fed_lora.fed_report import PLOT_FILES, format_sweep, plot_sweep, policy_series, sweep_rows, write_plots

BUDGETS_J = (0.010, 0.005, 0.003)  # per device


def _device_rounds(energies_j, budget_j, modules, failed=()):
    """A device's round records as results.json holds them; the queue follows Q = max(Q + E - budget, 0)."""
    rows, q = [], 0.0
    for r, (e, m) in enumerate(zip(energies_j, modules)):
        if r in failed:
            rows.append({"round": r, "status": "failed", "error": "round_closed"})
            continue
        q = max(q + e - budget_j, 0.0)
        rows.append({"round": r, "status": "ok", "module": m, "energy_j": e, "energy_budget_j": budget_j,
                     "queue_j": q, "outcome": "skipped" if m == "skip" else "delivered",
                     "upload_bits": 0 if m == "skip" else 67904, "round_wall_s": 0.2})
    return rows


def _policy(accs, energies_per_device, modules, failed=None):
    n = len(energies_per_device)
    devices = {k: _device_rounds(energies_per_device[k], BUDGETS_J[k], modules[k], (failed or {}).get(k, ()))
               for k in range(n)}
    bs = [{"round": r, "global_acc": a, "round_wall_s": 0.1 * (r + 1)} for r, a in enumerate(accs)]
    means = [float(np.mean(e)) for e in energies_per_device]
    return {"devices": devices, "base_station": bs,
            "summary": {"final_acc": accs[-1], "best_acc": max(accs), "mean_energy_j": float(np.mean(means)),
                        "budgets_met": all(m <= b for m, b in zip(means, BUDGETS_J)), "lost": 0, "failed": 0,
                        "mean_round_wall_s": 0.25,
                        "devices": {k: {"mean_energy_j": means[k], "budget_j": BUDGETS_J[k]} for k in range(n)}}}


def _result(seed=0, budget_j=0.005, ours_scale=1.0, policies=("ours", "fixed"), reference=True):
    """A realistic 3-device, 4-round result: ours spends about its budgets, fixed ~10x them."""
    profiles = [{"fed_distance_m": d, "fed_flops_per_s": 4e10, "fed_energy_budget_j": b * budget_j / 0.005}
                for d, b in zip((150.0, 400.0, 800.0), BUDGETS_J)]
    out = {"config": {"task": "mlp", "devices": 3, "rounds": 4, "seed": seed, "policies": list(policies)},
           "profiles": profiles, "policies": {}, "loadavg": {"start": 1.0, "end": 1.5}}
    if "ours" in policies:
        e = [[ours_scale * x * b for x in (0.9, 1.1, 0.8, 1.0)] for b in BUDGETS_J]
        out["policies"]["ours"] = _policy([0.5, 0.7, 0.8, 0.85 + 0.05 * (ours_scale > 1)], e,
                                          [["all-r8", "all-r4", "skip", "all-r8"]] * 3, failed={2: (1,)})
    if "fixed" in policies:
        e = [[0.06, 0.062, 0.058, 0.06], [0.065, 0.066, 0.064, 0.065], [0.075, 0.078, 0.077, 0.076]]
        out["policies"]["fixed"] = _policy([0.6, 0.8, 0.86, 0.9], e, [["all-r8"] * 4] * 3)
    if reference:
        out["reference"] = {"module": "all-r8", "n_train": 1437, "epochs": 5.0, "batch_size": 32, "lr": 0.01,
                            "acc_before": 0.09, "acc_by_round": [0.9, 0.93, 0.95, 0.96], "train_s": 2.0,
                            "steps": 900, "seed": seed, "eval_size": 360}
    return out


def test_policy_series_sums_energy_and_carries_the_queue_over_a_failed_round():
    s = policy_series(_result()["policies"]["ours"], 3)
    assert list(s["rounds"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(s["cum_energy_j"][0], np.cumsum([0.009, 0.011, 0.008, 0.010]))
    assert s["energy_j"][2, 1] == 0.0 and s["queue_j"][2, 1] == s["queue_j"][2, 0]  # failed round 1 of dev2
    np.testing.assert_allclose(s["queue_j"][0], [0.0, 0.001, 0.0, 0.0], atol=1e-12)
    assert s["upload_bits"][0, 2] == 0 and s["upload_bits"][0, 0] == 67904
    np.testing.assert_allclose(s["acc"], [0.5, 0.7, 0.8, 0.85])
    np.testing.assert_allclose(s["round_wall_s"], [0.1, 0.2, 0.3, 0.4])


def test_a_campaign_writes_four_figures_tables_and_a_csv_with_latency_and_upload_sizes(tmp_path):
    result = _result()
    paths = write_plots(result, tmp_path)
    assert [p.name for p in paths] == list(PLOT_FILES)
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, p  # a real, non-empty picture
    table = format_tables(result)
    assert "| central (reference) | 0.960 | 0.960 |" in table
    assert "| ours | 0.850 |" in table and "| fixed | 0.900 |" in table
    assert "900 optimiser steps" in table and "load average (1 min): 1.00 at the start, 1.50 at the end" in table
    write_result(result, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "fed.csv")))
    assert {"upload_bits", "round_wall_s", "queue_j", "energy_j"} <= set(rows[0])
    assert len([r for r in rows if r["policy"] in ("ours", "fixed")]) == 2 * 3 * 4
    central = [r for r in rows if r["policy"] == "central"]
    assert [float(r["global_acc"]) for r in central] == [0.9, 0.93, 0.95, 0.96]
    assert float(central[0]["round_wall_s"]) == pytest.approx(0.5)
    back = json.loads((tmp_path / "fed.json").read_text())  # str device ids after JSON: plots still work
    write_plots(back, tmp_path / "again")
    assert all((tmp_path / "again" / name).stat().st_size > 10_000 for name in PLOT_FILES)


def _sweep():
    runs = []
    for seed in (0, 1):
        runs.append({"seed": seed, "budget_j": 0.005, "result": _result(seed, 0.005, 1.0)})
        runs.append({"seed": seed, "budget_j": 0.02,
                     "result": _result(seed, 0.02, 3.6, policies=("ours",), reference=False)})
    return {"config": {"task": "mlp", "devices": 3, "rounds": 4}, "budgets_j": [0.005, 0.02], "seeds": [0, 1],
            "runs": runs}


def test_the_sweep_table_checks_the_target_per_budget(tmp_path):
    sweep = _sweep()
    rows = {(r["policy"], r["budget_j"]): r for r in sweep_rows(sweep)}
    assert set(rows) == {("central", None), ("fixed", None), ("ours", 0.005), ("ours", 0.02)}
    low, high, fixed = rows[("ours", 0.005)], rows[("ours", 0.02)], rows[("fixed", None)]
    # budget 0.005: ours spends 0.9, 1.1, 0.8, 1.0 x the budgets -> mean 0.95 x, every device met
    assert low["e_over_budget"] == pytest.approx([0.95, 0.95, 2.7 / 4])  # dev2 failed round 1: counted as 0 J
    assert low["budgets_met"] == 2 and low["acc"]["mean"] == pytest.approx(0.85)
    # budget 0.02 (4x): 3.6x the energy = 0.9 x the larger budgets: met, and 0.05 more accuracy
    assert high["worst_e_over_budget"]["mean"] == pytest.approx(0.9 * 0.95) and high["budgets_met"] == 2
    assert high["acc"]["mean"] == pytest.approx(0.90)
    assert fixed["worst_e_over_budget"]["mean"] == pytest.approx(0.07650 / 0.003)  # against the first budget
    text = format_sweep(sweep)
    assert "after 4 rounds" in text and "| central |" in text
    line = next(x for x in text.splitlines() if x.startswith("| ours | 5 |"))
    assert "missed (-5.0 pt," in line  # 0.85 vs fixed's 0.90
    line = next(x for x in text.splitlines() if x.startswith("| ours | 20 |"))
    share = 100 * high["energy_j"]["mean"] / fixed["energy_j"]["mean"]
    assert f"met (+0.0 pt, {share:.0f} % of E)" in line and share <= 60
    assert "after 2 rounds" in format_sweep(sweep, at_rounds=(2,))
    assert plot_sweep(sweep, tmp_path / "fed_sweep.png").stat().st_size > 10_000


def test_the_central_reference_learns_on_the_union_of_the_shards():
    ref = run_central(FedCampaign(devices=3, rounds=2, tx_options={"fed_epochs": 1.0}))
    assert ref["n_train"] == 1437 and ref["module"] == "all-r8" and ref["eval_size"] == 360
    assert ref["steps"] == 2 * int(np.ceil(1437 / 32))  # one epoch per round at batch 32
    assert ref["acc_before"] < 0.2 and ref["acc_by_round"][-1] > ref["acc_before"] + 0.5


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,x"], "--seed: expected comma-separated integers"),
    (["--budget-j", "0.01,-1"], "budgets must be finite and > 0"),
    (["--budget-j", "abc"], "--budget-j: expected comma-separated numbers"),
    (["--reference", "oracle"], "--reference: choose none or central"),
    (["--policy", "greedy"], "policies must be among"),
    (["--rounds", "0"], "must be >= 1"),
])
def test_bad_fed_options_give_a_one_line_error(tmp_path, args, message):
    res = CliRunner().invoke(app, ["fed", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o" / "fed.json").exists()
