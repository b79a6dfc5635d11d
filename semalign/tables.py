"""Per-round tables a person can read at a glance (rich, to stdout)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def rounds_table(rounds: list[dict], title: str = "semalign rounds") -> Table:
    """Columns: channel, budget, alpha, vectors, accuracy before/after LoRA, latency."""
    t = Table(title=title, header_style="bold")
    for name in ("round", "channel", "SINR dB", "rate Mb/s", "B_max kB", "alpha", "n_train",
                 "payload kB", "acc pre", "acc LoRA", "comm ms", "+tune ms", "total ms", "status"):
        t.add_column(name, justify="right" if name not in ("channel", "status") else "left")
    for r in rounds:
        lat = r.get("latency_ms") or {}
        channel = f"{r.get('modulation') or '-'} MCS{_f(r.get('mcs'), 'd')}"
        rate = r.get("rate_bps")
        status = r["status"] if r["status"] == "ok" else f"failed: {r.get('error')}"
        t.add_row(str(r["round"]), channel, _f(r.get("sinr_db"), ".1f"),
                  _f(rate / 1e6 if rate else None, ".1f"),
                  _f(r["b_max_bytes"] / 1e3 if r.get("b_max_bytes") else None, ".1f"),
                  _f(r.get("alpha"), "d"), _f(r.get("n_train"), "d"),
                  _f(r["payload_bytes"] / 1e3 if r.get("payload_bytes") else None, ".1f"),
                  _f(r.get("acc_pretrained"), ".3f"), _f(r.get("acc_adapted"), ".3f"),
                  _f(lat.get("communication"), ".1f"), _f(lat.get("finetune"), ".1f"),
                  _f(lat.get("classification"), ".1f"), status)
    return t


def print_rounds(rounds: list[dict], title: str = "semalign rounds") -> None:
    Console(width=200).print(rounds_table(rounds, title))
