"""Tables a person can read at a glance: per-round tables (rich, to stdout, as wide as the terminal) and the
Markdown tables the campaigns write into their reports (:func:`markdown_lines`, the one writer of them).

:func:`print_results` prints any ``results.json``: with the table of the mode's
campaigns package where it has one (``rounds_table``, e.g. pca-lora's as the
demo shows it), else generically (:func:`generic_table`: the common columns,
then the mode's own fields).
"""

from __future__ import annotations

import csv
from dataclasses import fields as dataclass_fields
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from common.modes.base import DEFAULT_MODE
from common.results.log import RoundRecord
from semalign.campaigns import campaigns_of

COMMON_KEYS = {f.name for f in dataclass_fields(RoundRecord)} - {"fields"}


def markdown_lines(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table as lines: ``| a | b |``, the ``|---|---|`` rule, then one line per row of cells."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    """``rows`` as a CSV file with the header ``fields`` (in that order; a row's other keys are left out)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def fmt(v, spec: str) -> str:
    """``v`` formatted by ``spec``; ``-`` for None."""
    return "-" if v is None else format(v, spec)


def status_text(row: dict) -> str:
    return row.get("status", "?") if row.get("status") == "ok" else f"{row.get('status', '?')}: {row.get('error')}"


def channel_text(row: dict) -> str:
    return f"{row.get('modulation') or '-'} MCS{fmt(row.get('mcs'), 'd')}"


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
        t.add_row(*(Text(c) for c in (str(r.get("round")), status_text(r), channel_text(r), fmt(lat.get("rtt"), ".1f"),
                                      ", ".join(own))))
    return t


def results_mode(doc: dict) -> str:
    """The mode that wrote a ``results.json`` document: its config's, a round's, else the default mode."""
    rounds = doc.get("rounds") or []
    return (doc.get("config") or {}).get("mode") or next((r.get("mode") for r in rounds if r.get("mode")),
                                                         DEFAULT_MODE)


def results_table(doc: dict, title: str, width: int) -> Table:
    """The table for a ``results.json`` document: its mode's own (``rounds_table`` of the mode's
    campaigns package), or the generic one."""
    rounds = doc.get("rounds") or []
    own = getattr(campaigns_of(results_mode(doc)), "rounds_table", None)
    if own is not None:
        return own(rounds, title, width)
    return generic_table(rounds, title)


def print_results(doc: dict, title: str, console: Console | None = None) -> None:
    console = console or Console()
    console.print(results_table(doc, title, console.width))
