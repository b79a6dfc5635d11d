"""`semalign load` with the replay generator over a real RX (W = 1 and W = 2): every round answered, the RX's
memory read, the files written; the replayed frames are the real TX half's."""

import csv
import json

from common.modes.base import get_mode
from common.wire.protocol import Channel, decode
from semalign.campaigns.pca_lora.load import run_load, table
from semalign.campaigns.pca_lora.replay_load import round_frames


def test_replayed_frames_are_the_tx_halfs_own(digits_artifacts):
    """The generator sends what `semalign tx` would: the same PAYLOAD for the same (session, seq, channel)."""
    half = get_mode("pca-lora").build_tx({"artifacts": digits_artifacts, "dataset": "digits"})
    deep = Channel(7, 0, 0.0, 1, "qam64", "QPSK", 9.39e6)
    a, b = round_frames(half, 7, 3, deep), round_frames(half, 7, 3, deep)
    assert a == b and len(a) == 1
    msg = decode(a[0])
    assert (msg.TYPE, msg.session_id, msg.seq) == ("PAYLOAD", 7, 3)
    assert round_frames(half, 8, 3, deep) != a  # another session's frame names that session


def test_load_replay_answers_every_round_and_reads_rss(tmp_path, digits_artifacts):
    summary = run_load(tmp_path, [1, 2], [2], rounds=3, dataset="digits", artifacts=digits_artifacts,
                       rx_extra={"adapt_steps": 5})
    rows = {r["workers"]: r for r in summary["rows"]}
    for w, r in rows.items():
        assert (r["rounds_ok"], r["rounds_failed"], r["rounds_lost"]) == (6, 0, 0), r
        assert r["generator"] == "replay" and r["p50_ms"] > 0 and r["rss_rx_mib"] > 0
    assert rows[1]["rss_workers_mib"] is None and rows[2]["rss_workers_mib"] > rows[2]["rss_rx_mib"]
    with open(tmp_path / "load.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert json.loads((tmp_path / "load.json").read_text())["settings"]["generator"] == "replay"
    assert (tmp_path / "load.png").stat().st_size > 10_000
    assert "| 2 |" in table(summary["rows"])
