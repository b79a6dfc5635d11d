"""pca-lora's per-round table: what the demo and ``semalign show`` print for a pca-lora campaign."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from semalign.campaigns.tables import channel_text, fmt, status_text

WIDE = 120  # from this terminal width on, the pca-lora table shows every column
KEPT_NOTE = ("kept: the model the RX classified with -- adapted (fine-tuned this round), frozen (its hold-out "
             "check found the pre-trained model better), bank (a stored adapter, no training), - (nothing to "
             "align)")


def kept(row: dict) -> str:
    """Which model answered round ``row``: adapted, frozen, bank or - (see :data:`KEPT_NOTE`)."""
    adapt = row.get("adapt")
    if not isinstance(adapt, dict):
        return "-"
    if adapt.get("reused"):
        return "bank"
    if adapt.get("strategy") in (None, "none") or not adapt.get("steps"):
        return "-"
    return str(adapt.get("kept") or "adapted")


def rounds_table(rounds: list[dict], title: str = "semalign rounds", width: int = 80) -> Table:
    """pca-lora rounds: channel, rate, alpha, vectors, accuracy before/after, kept model, latency.

    Fits ``width`` columns: from :data:`WIDE` on it adds SINR, budget, payload, total latency and
    status; below, a failed round says ``failed`` in its kept column and its reason goes under the
    table (the caption), so the table fits an 80-column terminal.
    """
    wide = width >= WIDE
    failed = [r for r in rounds if r.get("status") != "ok"]
    notes = [] if wide else [f"round {r.get('round')} {status_text(r)}" for r in failed]
    t = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, padding=0, pad_edge=False, show_edge=False,
              caption="\n".join([KEPT_NOTE, *notes]), caption_justify="left")
    names = ["round", "channel"] + (["SINR dB"] if wide else []) + ["Mb/s"] + (["B_max kB"] if wide else []) \
        + ["alpha", "n_train"] + (["payload kB"] if wide else []) \
        + ["acc pre", "acc LoRA", "kept", "comm ms", "+tune ms"] + (["total ms", "status"] if wide else [])
    for name in names:
        t.add_column(name, justify="left" if name in ("channel", "kept", "status") else "right",
                     no_wrap=name != "status")
    for r in rounds:
        lat = r.get("latency_ms") or {}
        rate = r.get("rate_bps")
        cells = {
            "round": str(r.get("round")), "channel": channel_text(r), "SINR dB": fmt(r.get("sinr_db"), ".1f"),
            "Mb/s": fmt(rate / 1e6 if rate else None, ".1f"),
            "B_max kB": fmt(r["b_max_bytes"] / 1e3 if r.get("b_max_bytes") else None, ".1f"),
            "alpha": fmt(r.get("alpha"), "d"), "n_train": fmt(r.get("n_train"), "d"),
            "payload kB": fmt(r["payload_bytes"] / 1e3 if r.get("payload_bytes") else None, ".1f"),
            "acc pre": fmt(r.get("acc_pretrained"), ".3f"), "acc LoRA": fmt(r.get("acc_adapted"), ".3f"),
            "kept": kept(r) if wide or r.get("status") == "ok" else str(r.get("status")),
            "comm ms": fmt(lat.get("communication"), ".1f"), "+tune ms": fmt(lat.get("finetune"), ".1f"),
            "total ms": fmt(lat.get("classification"), ".1f"), "status": status_text(r),
        }
        t.add_row(*(Text(cells[n]) for n in names))
    return t


def print_rounds(rounds: list[dict], title: str = "semalign rounds", console: Console | None = None) -> None:
    """pca-lora rounds as a table as wide as the terminal (no forced width)."""
    console = console or Console()
    console.print(rounds_table(rounds, title, console.width))
