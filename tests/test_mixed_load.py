"""`semalign load --mix` over real processes: pca-lora sessions replayed, an slf TX aligning every round and a
fed-lora federation on one RX with 2 workers; every round of every mode recorded, none lost. No timing asserts
(the figures are the benchmark's); the campaign's waits are generous and end at the first answer."""

import csv
import json

from semalign.campaigns.mixed_load import mixed_table, run_mixed
from semalign.campaigns.mixed_rx import parse_mix, slf_artifacts


def test_mixed_modes_load_records_every_round(tmp_path, digits_artifacts):
    slf = slf_artifacts(tmp_path / "slf", widths=(8, 16), epochs=1)
    summary = run_mixed(tmp_path / "run", parse_mix("slf,pca-lora,fed-lora"), workers=2, pca_sessions=2,
                        slf_sessions=1, fed_devices=2, rounds=3, dataset="digits", artifacts=digits_artifacts,
                        slf_dir=slf, slf_finetune_images=64, slf_finetune_epochs=1.0,
                        rx_extra={"adapt_steps": 5}, timeout_s=600)
    rows = {r["mode"]: r for r in summary["rows"]}
    assert list(rows) == ["pca-lora", "slf", "fed-lora"]
    expected = {"pca-lora": 6, "slf": 3, "fed-lora": 6}  # 3 rounds a session: a timed one after the cold start
    for mode, r in rows.items():
        assert (r["rounds_expected"], r["rounds_ok"], r["rounds_failed"], r["rounds_lost"]) == \
            (expected[mode], expected[mode], 0, 0), r
        assert r["p50_ms"] > 0 and r["rss_rx_mib"] > 0 and r["rss_workers_mib"] > 0
    with open(tmp_path / "run" / "mixed.csv") as f:
        assert [r["mode"] for r in csv.DictReader(f)] == ["pca-lora", "slf", "fed-lora"]
    assert json.loads((tmp_path / "run" / "mixed.json").read_text())["settings"]["workers"] == 2
    assert (tmp_path / "run" / "mixed.png").stat().st_size > 10_000
    assert "| fed-lora |" in mixed_table(summary["rows"])


def test_parse_mix_names_the_modes():
    assert parse_mix("fed-lora, pca-lora") == ["pca-lora", "fed-lora"]
    for bad in ("", "echo", "pca-lora,x"):
        try:
            parse_mix(bad)
        except ValueError as e:
            assert "pca-lora, slf, fed-lora" in str(e)
        else:
            raise AssertionError(bad)


def test_interference_measures_each_condition_on_the_other_worker(tmp_path, digits_artifacts):
    """`semalign load --interference` at a tiny size: the probe's rounds run on worker 1, the slf and fed-lora
    sessions on worker 0, every condition measured (no figure is asserted)."""
    from semalign.campaigns.interference import can_pin, interference_table, run_interference

    slf = slf_artifacts(tmp_path / "slf", widths=(8, 16), epochs=1)
    s = run_interference(tmp_path / "run", rounds=2, blocks=1, dataset="digits", artifacts=digits_artifacts,
                         slf_dir=slf, fed_devices=2, slf_finetune_images=32, rx_extra={"adapt_steps": 5})
    w = s["workers"]
    assert w["slf served by"] == w["fed-lora served by"] == [w["other (worker 0)"]] != [w["probe (worker 1)"]]
    names = [(c["condition"], c["pinned"]) for c in s["conditions"]]
    pinned = (False, True) if can_pin() else (False,)
    assert names == [(n, p) for n in ("idle", "slf", "fed-lora") for p in pinned]
    assert all(c["rounds"] == 2 and c["rounds_not_ok"] == 0 and c["rtt_p50_ms"] > 0 for c in s["conditions"])
    assert (tmp_path / "run" / "interference.csv").exists() and "| slf |" in interference_table(s["conditions"])
