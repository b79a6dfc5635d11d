"""Per-round tables a person can read at a glance (rich, to stdout, as wide as the terminal).

:func:`print_results` prints any ``results.json``: pca-lora rounds as the
demo shows them (:func:`rounds_table`), another mode's rounds generically
(:func:`generic_table`: the common columns, then the mode's own fields).
"""

from __future__ import annotations

from dataclasses import fields as dataclass_fields

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from common.results.log import RoundRecord

COMMON_KEYS = {f.name for f in dataclass_fields(RoundRecord)} - {"fields"}
WIDE = 120  # from this terminal width on, the pca-lora table shows every column
KEPT_NOTE = ("kept: the model the RX classified with -- adapted (fine-tuned this round), frozen (its hold-out "
             "check found the pre-trained model better), bank (a stored adapter, no training), - (nothing to "
             "align)")


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


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


def _status(row: dict) -> str:
    return row.get("status", "?") if row.get("status") == "ok" else f"{row.get('status', '?')}: {row.get('error')}"


def _channel(row: dict) -> str:
    return f"{row.get('modulation') or '-'} MCS{_f(row.get('mcs'), 'd')}"


def rounds_table(rounds: list[dict], title: str = "semalign rounds", width: int = 80) -> Table:
    """pca-lora rounds: channel, rate, alpha, vectors, accuracy before/after, kept model, latency.

    Fits ``width`` columns: from :data:`WIDE` on it adds SINR, budget, payload, total latency and
    status; below, a failed round says ``failed`` in its kept column and its reason goes under the
    table (the caption), so the table fits an 80-column terminal.
    """
    wide = width >= WIDE
    failed = [r for r in rounds if r.get("status") != "ok"]
    notes = [] if wide else [f"round {r.get('round')} {_status(r)}" for r in failed]
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
            "round": str(r.get("round")), "channel": _channel(r), "SINR dB": _f(r.get("sinr_db"), ".1f"),
            "Mb/s": _f(rate / 1e6 if rate else None, ".1f"),
            "B_max kB": _f(r["b_max_bytes"] / 1e3 if r.get("b_max_bytes") else None, ".1f"),
            "alpha": _f(r.get("alpha"), "d"), "n_train": _f(r.get("n_train"), "d"),
            "payload kB": _f(r["payload_bytes"] / 1e3 if r.get("payload_bytes") else None, ".1f"),
            "acc pre": _f(r.get("acc_pretrained"), ".3f"), "acc LoRA": _f(r.get("acc_adapted"), ".3f"),
            "kept": kept(r) if wide or r.get("status") == "ok" else str(r.get("status")),
            "comm ms": _f(lat.get("communication"), ".1f"), "+tune ms": _f(lat.get("finetune"), ".1f"),
            "total ms": _f(lat.get("classification"), ".1f"), "status": _status(r),
        }
        t.add_row(*(Text(cells[n]) for n in names))
    return t


def _value(v) -> str | None:
    """A mode field as table text; None for what does not fit a cell (tables, long lists)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return "-" if v is None else str(v).lower() if isinstance(v, bool) else v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format(v, ".4g")
    if isinstance(v, list) and len(v) <= 6 and all(not isinstance(x, (list, dict)) for x in v):
        return "[" + ", ".join(_value(x) or "?" for x in v) + "]"
    return None


def generic_table(rounds: list[dict], title: str = "semalign rounds") -> Table:
    """Any mode's rounds: round, status, channel, round trip, then the mode's own fields as ``key=value``."""
    t = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, padding=0, pad_edge=False, show_edge=False)
    for name, justify in (("round", "right"), ("status", "left"), ("channel", "left"), ("rtt ms", "right"),
                          ("fields", "left")):
        t.add_column(name, justify=justify, no_wrap=name in ("round", "channel", "rtt ms"))
    for r in rounds:
        lat = r.get("latency_ms") or {}
        own = []
        for k, v in r.items():
            if k in COMMON_KEYS:
                continue
            text = _value(v)
            own.append(f"{k}={text}" if text is not None else f"{k}=(see results.json)")
        t.add_row(*(Text(c) for c in (str(r.get("round")), _status(r), _channel(r), _f(lat.get("rtt"), ".1f"),
                                      ", ".join(own))))
    return t


def results_table(doc: dict, title: str, width: int) -> Table:
    """The table for a ``results.json`` document: pca-lora's own, or the generic one."""
    rounds = doc.get("rounds") or []
    mode = (doc.get("config") or {}).get("mode") or next((r.get("mode") for r in rounds if r.get("mode")), None)
    if mode in (None, "pca-lora"):
        return rounds_table(rounds, title, width)
    return generic_table(rounds, title)


def print_results(doc: dict, title: str, console: Console | None = None) -> None:
    console = console or Console()
    console.print(results_table(doc, title, console.width))


def print_rounds(rounds: list[dict], title: str = "semalign rounds", console: Console | None = None) -> None:
    """pca-lora rounds as a table as wide as the terminal (no forced width)."""
    console = console or Console()
    console.print(rounds_table(rounds, title, console.width))
