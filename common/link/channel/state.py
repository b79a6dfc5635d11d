"""``ChannelState``: what one round's channel looks like to the TX policy."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any

from common.link.channel.nr import MCS_TABLES, max_mcs, mcs_entry


@dataclass(frozen=True)
class ChannelState:
    """Channel seen by one round.

    sinr_db:   post-fading SINR in dB; ``nan`` when a trace gives the MCS only.
    mcs:       MCS index into ``mcs_table``.
    mcs_table: "qam64" (TS 38.214 Table 5.1.3.1-1) or "qam256" (Table 5.1.3.1-2).
    modulation: "QPSK" | "16QAM" | "64QAM" | "256QAM"; must match the MCS row.
    rate_bps:  link rate in bit/s, TS 38.306 4.1.2 with this MCS's ``Q_m * R``.
    bler:      transport-block error probability for this round, 0..1.
    """

    sinr_db: float
    mcs: int
    mcs_table: str
    modulation: str
    rate_bps: float
    bler: float = 0.0

    def __post_init__(self) -> None:
        # Normalise numpy scalars to plain Python numbers so to_dict() is JSON-ready.
        for name in ("sinr_db", "rate_bps", "bler"):
            v = getattr(self, name)
            if isinstance(v, numbers.Real) and not isinstance(v, bool):
                object.__setattr__(self, name, float(v))
        if isinstance(self.mcs, numbers.Integral) and not isinstance(self.mcs, bool):
            object.__setattr__(self, "mcs", int(self.mcs))
        if isinstance(self.sinr_db, bool) or not isinstance(self.sinr_db, (int, float)):
            raise ValueError(f"sinr_db must be a float (nan allowed), got {self.sinr_db!r}")
        if math.isinf(self.sinr_db):
            raise ValueError(f"sinr_db must be finite or nan, got {self.sinr_db!r}")
        if self.mcs_table not in MCS_TABLES:
            raise ValueError(f"mcs_table must be one of {MCS_TABLES}, got {self.mcs_table!r}")
        if isinstance(self.mcs, bool) or not isinstance(self.mcs, int) or not 0 <= self.mcs <= max_mcs(self.mcs_table):
            raise ValueError(f"mcs must be an int in 0..{max_mcs(self.mcs_table)} for {self.mcs_table}, got {self.mcs!r}")
        expected = mcs_entry(self.mcs_table, self.mcs).modulation
        if self.modulation != expected:
            raise ValueError(
                f"modulation {self.modulation!r} does not match {self.mcs_table} MCS {self.mcs} ({expected})"
            )
        if isinstance(self.rate_bps, bool) or not isinstance(self.rate_bps, (int, float)) or not (
            math.isfinite(self.rate_bps) and self.rate_bps > 0
        ):
            raise ValueError(f"rate_bps must be finite and > 0, got {self.rate_bps!r}")
        if isinstance(self.bler, bool) or not isinstance(self.bler, (int, float)) or not 0.0 <= self.bler <= 1.0:
            raise ValueError(f"bler must be in [0, 1], got {self.bler!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict keyed by the field names; a nan ``sinr_db`` becomes ``None``."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if math.isnan(d["sinr_db"]):
            d["sinr_db"] = None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ChannelState":
        """Inverse of :meth:`to_dict`; ``sinr_db`` ``None`` means nan, ``bler`` may be absent."""
        if not isinstance(d, dict):
            raise ValueError(f"ChannelState.from_dict needs a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ChannelState keys: {unknown}")
        missing = sorted(n for n in names - {"bler"} if n not in d)
        if missing:
            raise ValueError(f"missing ChannelState keys: {missing}")
        kw = dict(d)
        if kw["sinr_db"] is None:
            kw["sinr_db"] = math.nan
        return cls(**kw)
