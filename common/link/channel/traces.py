"""Per-round channel traces: built-in scenarios and CSV replay.

``build_trace(spec, rounds, seed, params)`` returns ``rounds`` ChannelStates.

Built-in specs (``TRACE_NAMES``); ``name:key=value,...`` overrides LinkParams
fields, e.g. ``fading:speed_mps=30,distance_m=300``. ``params`` replaces the
scenario's base parameters (overrides then apply on top):

- ``paper``:  the paper's testbed, static LOS 3 m, 23 dBm, 40 MHz @ 30 kHz.
  First half of the rounds on the 256-QAM table (top MCS, ~227 Mb/s), then the
  64-QAM table (~170 Mb/s). Fading per the params (default Rician K = 9 dB,
  static; the EVM cap keeps the MCS at the top).
- ``fading``: a vehicle at 50 km/h, 150 m, TR 37.885 urban LOS, Rician
  K = 3 dB with Jakes-correlated AR(1) fading; MCS follows SINR (256-QAM table).
- ``stress``: Rayleigh fading at 30 m/s, 1.5 km (mean SNR ~6 dB), urban LOS, 64-QAM table; deep
  fades push rounds onto MCS 0-3 (7-15 Mb/s at 40 MHz).
- ``demo``:   deterministic (``seed`` unused), needs ``rounds >= 3``: first
  third 256-QAM top MCS, next third 64-QAM top MCS, then at least one
  deep-fade round (64-QAM MCS 1, ~9.4 Mb/s at 40 MHz), then recovery to the
  256-QAM top MCS if rounds remain.

Any other spec is a CSV path. Header row: ``time_s`` plus ``sinr_db`` and/or
``mcs``; optional ``mcs_table`` ("qam64"/"qam256", default ``params.mcs_table``)
and ``bler``. Each row needs a finite ``sinr_db`` or an ``mcs`` (empty cells
count as absent); ``time_s`` must not decrease. A row with an SINR and no MCS
goes through link adaptation; a row with an MCS keeps it, with BLER from the
``bler`` cell, else ``bler_of`` its SINR, else 0. Round k replays row
k mod (number of rows).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os

from common.link.channel.emulator import (
    ChannelEmulator,
    LinkParams,
    state_from_mcs,
    state_from_sinr,
)
from common.link.channel.nr import MCS_TABLES, bler_of, max_mcs, mcs_entry, required_sinr_db
from common.link.channel.state import ChannelState

TRACE_NAMES: tuple[str, ...] = ("paper", "fading", "stress", "demo")

_BASE_PARAMS: dict[str, LinkParams] = {
    "paper": LinkParams(),
    "fading": LinkParams(
        distance_m=150.0, speed_mps=50 / 3.6, pathloss="v2v_urban_los", fading="rician", k_factor_db=3.0
    ),
    "stress": LinkParams(
        distance_m=1500.0, speed_mps=30.0, pathloss="v2v_urban_los", fading="rayleigh", mcs_table="qam64"
    ),
    "demo": LinkParams(fading="none"),
}


def _apply_overrides(params: LinkParams, text: str, spec: str) -> LinkParams:
    """``key=value,...`` -> LinkParams with those fields replaced (typed like the defaults)."""
    types = {f.name: type(f.default) for f in dataclasses.fields(LinkParams)}
    changes: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or key not in types:
            raise ValueError(f"trace spec {spec!r}: bad override {item!r}; use key=value with LinkParams fields")
        try:
            changes[key] = types[key](value) if types[key] is not str else value
        except ValueError as e:
            raise ValueError(f"trace spec {spec!r}: {key}={value!r} is not a {types[key].__name__}") from e
    return dataclasses.replace(params, **changes)


def build_trace(spec: str, rounds: int, seed: int = 0, params: LinkParams | None = None) -> list[ChannelState]:
    """``rounds`` ChannelStates for a built-in scenario or a CSV file (module docstring)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"trace spec must be a non-empty string, got {spec!r}")
    name, _, overrides = spec.partition(":")
    if name not in TRACE_NAMES:
        return _csv_trace(spec, rounds, LinkParams() if params is None else params)
    base = _BASE_PARAMS[name] if params is None else params
    p = _apply_overrides(base, overrides, spec)
    if name == "demo":
        return _demo(rounds, p)
    emu = ChannelEmulator(p, seed)
    if name == "paper":
        n256 = (rounds + 1) // 2
        return [emu.step("qam256" if k < n256 else "qam64") for k in range(rounds)]
    return [emu.step() for _ in range(rounds)]


def _demo(rounds: int, p: LinkParams) -> list[ChannelState]:
    if rounds < 3:
        raise ValueError(f"the demo trace needs rounds >= 3, got {rounds}")
    top_db = min(p.mean_snr_db, p.max_sinr_db)
    fade_db = required_sinr_db(mcs_entry("qam64", 1), p.gap_db, p.bler_target, p.bler_slope_db) + 0.25
    n1 = n2 = max(1, rounds // 3)
    rest = rounds - n1 - n2
    n_fade = max(1, (rest + 1) // 2)
    plan = [("qam256", top_db)] * n1 + [("qam64", top_db)] * n2 + [("qam64", fade_db)] * n_fade
    plan += [("qam256", top_db)] * (rounds - len(plan))
    return [state_from_sinr(sinr, p, table) for table, sinr in plan]


def _cell_float(path: str, line: int, col: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise ValueError(f"trace file {path!r}, line {line}: {col}={text!r} is not a number") from e
    if not math.isfinite(value):
        raise ValueError(f"trace file {path!r}, line {line}: {col}={text!r} is not finite")
    return value


def _csv_trace(path: str, rounds: int, params: LinkParams) -> list[ChannelState]:
    if not os.path.isfile(path):
        raise ValueError(f"trace {path!r} is neither a built-in name {TRACE_NAMES} nor a readable CSV file")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [(i, r) for i, r in enumerate(csv.reader(fh), start=1) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"trace file {path!r}: cannot read: {e}") from e
    if not rows:
        raise ValueError(f"trace file {path!r} is empty (line 1): need a header with time_s and sinr_db or mcs")
    header_line, header = rows[0]
    cols = [c.strip() for c in header]
    if "time_s" not in cols or not ({"sinr_db", "mcs"} & set(cols)):
        missing = "time_s" if "time_s" not in cols else "sinr_db or mcs"
        raise ValueError(f"trace file {path!r}, line {header_line}: header {cols} lacks column {missing}")
    if len(rows) == 1:
        raise ValueError(f"trace file {path!r}: no data rows after the header (line {header_line})")
    states: list[ChannelState] = []
    last_t = -math.inf
    for line, raw in rows[1:]:
        if len(raw) != len(cols):
            raise ValueError(f"trace file {path!r}, line {line}: {len(raw)} fields, header has {len(cols)}")
        cell = {c: v.strip() for c, v in zip(cols, raw)}
        t = _cell_float(path, line, "time_s", cell["time_s"])
        if t < last_t:
            raise ValueError(f"trace file {path!r}, line {line}: time_s={cell['time_s']!r} goes backwards")
        last_t = t
        table = cell.get("mcs_table") or params.mcs_table
        if table not in MCS_TABLES:
            raise ValueError(f"trace file {path!r}, line {line}: mcs_table={table!r} not in {MCS_TABLES}")
        sinr = _cell_float(path, line, "sinr_db", cell["sinr_db"]) if cell.get("sinr_db") else math.nan
        bler = _cell_float(path, line, "bler", cell["bler"]) if cell.get("bler") else None
        if bler is not None and not 0 <= bler <= 1:
            raise ValueError(f"trace file {path!r}, line {line}: bler={cell['bler']!r} not in [0, 1]")
        if cell.get("mcs"):
            mcs_f = _cell_float(path, line, "mcs", cell["mcs"])
            if mcs_f != int(mcs_f) or not 0 <= mcs_f <= max_mcs(table):
                raise ValueError(
                    f"trace file {path!r}, line {line}: mcs={cell['mcs']!r} out of range 0..{max_mcs(table)} for {table}"
                )
            mcs = int(mcs_f)
            if bler is None:
                bler = 0.0 if math.isnan(sinr) else bler_of(sinr, mcs_entry(table, mcs), params.gap_db, params.bler_slope_db)
            states.append(state_from_mcs(mcs, table, params, sinr, bler))
        elif not math.isnan(sinr):
            st = state_from_sinr(sinr, params, table)
            states.append(st if bler is None else dataclasses.replace(st, bler=bler))
        else:
            raise ValueError(f"trace file {path!r}, line {line}: needs a sinr_db or an mcs value")
    return [states[k % len(states)] for k in range(rounds)]
