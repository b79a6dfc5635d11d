"""``semalign fed --engine flower``: the campaign under Flower's deployment engine.

Fast: the base station's records -> per-device rows (:func:`device_rows`), the node and run configs
(:func:`flower_configs`) and the CLI's one-line errors. Slow-ish (41-44 s measured on 2 shared cores): one
end-to-end ``semalign fed --engine flower`` run through the CLI, a real SuperLink, two SuperNodes and
``flwr run`` on loopback, 2 devices x 2 rounds.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from semalign.cli import app
from semalign.campaigns.fed_lora.fed_config import FedCampaign, device_profiles, flower_configs
from semalign.campaigns.fed_lora.fed_engines import device_rows, summarise
from semalign.campaigns.fed_lora.fed_output import CSV_FIELDS, csv_rows, format_tables


def _dev(k: int, outcome: str, energy_j: float, queue_j: float, reason: str = "") -> dict:
    """A device's part of a base-station record (``BaseStation._device_record``'s fields that matter)."""
    return {"fed_round": 0, "device_id": k, "module": "skip" if outcome == "skipped" else "all-r8",
            "energy_j": energy_j, "queue_j": queue_j, "energy_budget_j": 0.01, "outcome": outcome,
            "loss_reason": reason, "upload_bits": 0 if outcome == "skipped" else 67904}


RECORDS = [  # as base_station.jsonl holds them: device ids as str keys
    {"round": 0, "global_acc": 0.7, "round_wall_s": 9.0,
     "devices": {"0": _dev(0, "delivered", 0.005, 0.0), "1": _dev(1, "lost", 0.002, 0.0, "packet_error")}},
    {"round": 1, "global_acc": 0.9, "round_wall_s": 8.0,
     "devices": {"0": _dev(0, "delivered", 0.012, 0.002), "1": _dev(1, "failed", 0.0, 0.0, "node error 3: boom")}},
    {"round": 2, "global_acc": 0.92, "round_wall_s": 7.0,  # device 1 not planned (its node went away)
     "devices": {"0": _dev(0, "skipped", 0.0, 0.0)}},
]


def test_base_station_records_become_the_devices_rows():
    rows = device_rows(RECORDS, 3)
    assert sorted(rows) == [0, 1, 2] and rows[2] == []  # every device id, even one never planned
    assert [r["round"] for r in rows[0]] == [0, 1, 2] and [r["round"] for r in rows[1]] == [0, 1]
    assert [r["status"] for r in rows[1]] == ["ok", "error"] and rows[1][1]["error"] == "node error 3: boom"
    assert rows[0][0]["status"] == "ok" and rows[0][0]["error"] is None and rows[0][1]["energy_j"] == 0.012
    profiles = [{"fed_energy_budget_j": 0.01}] * 3
    s = summarise({k: v for k, v in rows.items() if k < 2}, RECORDS, profiles[:2])
    assert s["final_acc"] == 0.92 and s["rounds_formed"] == 3 and s["lost"] == 1 and s["failed"] == 1
    assert s["devices"][0]["mean_energy_j"] == pytest.approx(0.017 / 3)
    assert s["devices"][1]["mean_energy_j"] == pytest.approx(0.002)  # the failed round is not averaged
    assert s["mean_round_wall_s"] == pytest.approx(8.0) and s["budgets_met"]
    result = {"profiles": profiles[:2], "policies": {"ours": {
        "engine": "flower", "initial_acc": 0.09, "devices": {k: rows[k] for k in (0, 1)},
        "base_station": RECORDS, "summary": s}}}
    table = format_tables(result)
    assert "| 1 | 0.900 | all-r8 / 12.00 / 2.00 | failed: node error 3: boom |" in table
    assert "Flower's deployment engine" in table and "ours 0.090" in table
    fed_csv = csv_rows(result)
    assert len(fed_csv) == 5 and {r["device_id"] for r in fed_csv} == {0, 1}
    assert set(CSV_FIELDS) >= {"round", "status", "error", "energy_j"}


def test_profiles_become_node_configs_and_the_campaign_the_run_config(tmp_path, monkeypatch):
    from common.modes.fed_lora.flower.config import device_options, run_options

    monkeypatch.chdir(tmp_path)
    c = FedCampaign(devices=3, rounds=5, task="sst2", data_dir="data", seed=7, beta=0.3, pool_size=90,
                    aggregation="zero-pad", budget_j=2.0, rx_options={"fed_eval_size": 50},
                    tx_options={"fed_epochs": 1.0}, engine="flower")
    profiles = device_profiles(3, "sst2", 2.0)
    nodes, run = flower_configs(c, "fixed", profiles)
    assert nodes[1] == {"device-id": 1, "fed-distance-m": 400.0, "fed-flops-per-s": 2.4e10,
                        "fed-energy-budget-j": 2.0}
    assert run["data-dir"] == str(tmp_path / "data")  # absolute: the apps run elsewhere
    opts = run_options(run)
    assert opts["fed_task"] == "sst2" and opts["fed_devices"] == 3 and opts["fed_policy"] == "fixed"
    assert (opts["rounds"], opts["seed"], opts["fed_beta"], opts["fed_pool_size"]) == (5, 7, 0.3, 90)
    assert (opts["fed_aggregation"], opts["fed_eval_size"], opts["fed_epochs"]) == ("zero-pad", 50, 1.0)
    dev = device_options(run, nodes[2])
    assert dev["device_id"] == 2 and dev["fed_energy_budget_j"] == pytest.approx(1.2)
    assert "mode" not in run and all("_" not in k for k in run)
    with pytest.raises(ValueError, match="unknown run config key 'fed-result-timeout-s'"):
        FedCampaign(engine="flower", tx_options={"fed_result_timeout_s": 3.0})  # a daemon-only option


@pytest.mark.parametrize("args, message", [
    (["--engine", "grpc"], "engine must be one of"),
    (["--engine", "flower", "--aggregation", "mean"], "aggregation must be one of"),
])
def test_bad_engine_options_give_a_one_line_error(tmp_path, args, message):
    res = CliRunner().invoke(app, ["fed", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_fed_under_flower_through_the_cli(tmp_path):
    pytest.importorskip("flwr")
    out = tmp_path / "fed"
    res = CliRunner().invoke(app, ["fed", "--engine", "flower", "--devices", "2", "--rounds", "2", "--policy",
                                   "ours", "--out", str(out), "--timeout-s", "240"])
    logs = "".join(f"\n--- {p.name} ---\n{p.read_text(errors='replace')[-2000:]}"
                   for p in sorted((out / "ours" / "flower_logs").glob("*.log")))
    assert res.exit_code == 0, res.output + logs
    result = json.loads((out / "fed.json").read_text())
    ours = result["policies"]["ours"]
    assert result["config"]["engine"] == "flower" and ours["engine"] == "flower"
    assert [b["round"] for b in ours["base_station"]] == [0, 1], logs
    for b in ours["base_station"]:
        assert math.isfinite(b["global_acc"]) and b["global_acc"] > ours["initial_acc"] + 0.2, (b, logs)
    s = ours["summary"]
    assert s["rounds_formed"] == 2 and s["failed"] == 0
    for k in ("0", "1"):
        e = s["devices"][k]["mean_energy_j"]
        assert e is not None and math.isfinite(e) and e > 0, s
        assert [r["round"] for r in ours["devices"][k]] == [0, 1]
    rows = list(csv.DictReader((out / "fed.csv").read_text().splitlines()))
    assert sorted((r["device_id"], r["round"]) for r in rows) == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    assert all(float(r["energy_j"]) > 0 and r["policy"] == "ours" for r in rows)
    assert len(result["figures"]) == 4 and all(Path(f).stat().st_size > 10_000 for f in result["figures"])
    assert "Flower's deployment engine" in res.output and "| ours |" in res.output
