"""5G NR link-layer numbers: MCS tables, TS 38.306 data rate, SINR -> MCS and BLER.

Sources
-------
- MCS tables: 3GPP TS 38.214 Table 5.1.3.1-1 ("qam64", MCS index table 1)
  and Table 5.1.3.1-2 ("qam256", MCS index table 2), PDSCH. Reserved rows
  (29-31 and 28-31) carry no code rate and are not modelled.
- Rate: TS 38.306 clause 4.1.2 (approximate maximum data rate, one carrier):
  ``rate = 1e6 * 1e-6 * v * Q_m * f * R * N_PRB * 12 / T_s * (1 - OH)`` bit/s,
  ``T_s = 1e-3 / (14 * 2**mu)`` (average OFDM symbol duration, normal CP).
- N_PRB: TS 38.101-1 Table 5.3.2-1 (FR1 maximum transmission bandwidth
  configuration).

Link adaptation model (documented simulator convention, not from 3GPP)
---------------------------------------------------------------------
Shannon-gap: an MCS of spectral efficiency ``SE`` (bit/s/Hz per layer) works at
the reference BLER of 10 % once ``SE <= log2(1 + SINR / Gamma)``, that is at
``sinr_10_db = 10 log10(2**SE - 1) + gap_db``. Around that point the
transport-block error probability follows a logistic waterfall in dB::

    bler(sinr_db) = 1 / (1 + exp((sinr_db - sinr_10_db) / slope_db + ln 9))

which equals 0.1 at ``sinr_10_db`` and falls by one decade roughly every
``slope_db * ln 10`` dB (about 1.2 dB for the default 0.5 dB, close to an LDPC
waterfall for large blocks). A BLER target ``t`` other than 10 % therefore
moves the required SINR by ``slope_db * ln((1 - t) / (9 t))`` dB, i.e. it
widens the effective gap: ``sinr_to_mcs`` picks the highest MCS whose
``SE <= log2(1 + SINR / Gamma_eff(t))``, so the chosen MCS meets the target.
Below the MCS 0 requirement the link still uses MCS 0 (the lowest rate the
table offers), and ``bler_of`` then reports its high error probability
(0.1 at the MCS 0 threshold, tending to 1 as SINR falls further).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MCS_TABLES: tuple[str, ...] = ("qam64", "qam256")
MODULATIONS: dict[int, str] = {2: "QPSK", 4: "16QAM", 6: "64QAM", 8: "256QAM"}
R_MAX_X1024 = 948.0  # TS 38.306 4.1.2: R_max = 948/1024

# (Q_m, target code rate R x 1024, spectral efficiency as printed in the spec)
_TABLE_5_1_3_1_1: tuple[tuple[int, float, float], ...] = (
    (2, 120, 0.2344), (2, 157, 0.3066), (2, 193, 0.3770), (2, 251, 0.4902),
    (2, 308, 0.6016), (2, 379, 0.7402), (2, 449, 0.8770), (2, 526, 1.0273),
    (2, 602, 1.1758), (2, 679, 1.3262), (4, 340, 1.3281), (4, 378, 1.4766),
    (4, 434, 1.6953), (4, 490, 1.9141), (4, 553, 2.1602), (4, 616, 2.4063),
    (4, 658, 2.5703), (6, 438, 2.5664), (6, 466, 2.7305), (6, 517, 3.0293),
    (6, 567, 3.3223), (6, 616, 3.6094), (6, 666, 3.9023), (6, 719, 4.2129),
    (6, 772, 4.5234), (6, 822, 4.8164), (6, 873, 5.1152), (6, 910, 5.3320),
    (6, 948, 5.5547),
)
_TABLE_5_1_3_1_2: tuple[tuple[int, float, float], ...] = (
    (2, 120, 0.2344), (2, 193, 0.3770), (2, 308, 0.6016), (2, 449, 0.8770),
    (2, 602, 1.1758), (4, 378, 1.4766), (4, 434, 1.6953), (4, 490, 1.9141),
    (4, 553, 2.1602), (4, 616, 2.4063), (4, 658, 2.5703), (6, 466, 2.7305),
    (6, 517, 3.0293), (6, 567, 3.3223), (6, 616, 3.6094), (6, 666, 3.9023),
    (6, 719, 4.2129), (6, 772, 4.5234), (6, 822, 4.8164), (6, 873, 5.1152),
    (8, 682.5, 5.3320), (8, 711, 5.5547), (8, 754, 5.8906), (8, 797, 6.2266),
    (8, 841, 6.5703), (8, 885, 6.9141), (8, 916.5, 7.1602), (8, 948, 7.4063),
)

# TS 38.101-1 Table 5.3.2-1: (SCS Hz, channel bandwidth MHz) -> N_RB (FR1).
_NRB_FR1: dict[int, dict[int, int]] = {
    15_000: {3: 15, 5: 25, 10: 52, 15: 79, 20: 106, 25: 133, 30: 160, 35: 188,
             40: 216, 45: 242, 50: 270},
    30_000: {5: 11, 10: 24, 15: 38, 20: 51, 25: 65, 30: 78, 35: 92, 40: 106,
             45: 119, 50: 133, 60: 162, 70: 189, 80: 217, 90: 245, 100: 273},
    60_000: {10: 11, 15: 18, 20: 24, 25: 31, 30: 38, 35: 44, 40: 51, 45: 58,
             50: 65, 60: 79, 70: 93, 80: 107, 90: 121, 100: 135},
}
_MU: dict[int, int] = {15_000: 0, 30_000: 1, 60_000: 2}
_BLER_REF = 0.1  # BLER at which ``gap_db`` is calibrated


@dataclass(frozen=True)
class McsEntry:
    """One row of an MCS index table.

    ``code_rate_x1024`` is the target code rate R x 1024 as the spec prints it;
    ``spectral_efficiency`` is the spec's rounded ``Q_m * R`` in bit/s/Hz.
    """

    table: str
    index: int
    qm: int
    code_rate_x1024: float
    spectral_efficiency: float

    def __post_init__(self) -> None:
        if self.table not in MCS_TABLES:
            raise ValueError(f"table must be one of {MCS_TABLES}, got {self.table!r}")
        if self.qm not in MODULATIONS:
            raise ValueError(f"qm must be one of {sorted(MODULATIONS)}, got {self.qm!r}")
        if not 0 < self.code_rate_x1024 < 1024:
            raise ValueError(f"code_rate_x1024 must be in (0, 1024), got {self.code_rate_x1024!r}")

    @property
    def modulation(self) -> str:
        """Modulation name: "QPSK" | "16QAM" | "64QAM" | "256QAM"."""
        return MODULATIONS[self.qm]

    @property
    def code_rate(self) -> float:
        """Target code rate R (dimensionless, 0..1)."""
        return self.code_rate_x1024 / 1024.0

    @property
    def se_exact(self) -> float:
        """Unrounded ``Q_m * R`` in bit/s/Hz; what the rate formula uses."""
        return self.qm * self.code_rate


def _rows(table: str) -> tuple[tuple[int, float, float], ...]:
    if table == "qam64":
        return _TABLE_5_1_3_1_1
    if table == "qam256":
        return _TABLE_5_1_3_1_2
    raise ValueError(f"mcs_table must be one of {MCS_TABLES}, got {table!r}")


def max_mcs(table: str) -> int:
    """Highest usable (non-reserved) MCS index of ``table``: 28 or 27."""
    return len(_rows(table)) - 1


def mcs_entry(table: str, index: int) -> McsEntry:
    """Row ``index`` of MCS table ``table`` ("qam64" or "qam256")."""
    rows = _rows(table)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(rows):
        raise ValueError(f"MCS index for table {table!r} must be an int in 0..{len(rows) - 1}, got {index!r}")
    qm, r, se = rows[index]
    return McsEntry(table, index, qm, float(r), se)


def n_prb(bandwidth_hz: float, scs_hz: float) -> int:
    """Maximum transmission bandwidth N_RB from TS 38.101-1 Table 5.3.2-1 (FR1)."""
    scs = int(round(scs_hz))
    if scs not in _NRB_FR1 or abs(scs - scs_hz) > 1e-6:
        raise ValueError(f"scs_hz must be one of {sorted(_NRB_FR1)}, got {scs_hz!r}")
    bw_mhz = int(round(bandwidth_hz / 1e6))
    if bw_mhz not in _NRB_FR1[scs] or abs(bw_mhz * 1e6 - bandwidth_hz) > 1.0:
        raise ValueError(
            f"bandwidth_hz={bandwidth_hz!r} is not a TS 38.101-1 channel bandwidth for "
            f"scs_hz={scs_hz!r}; valid MHz: {sorted(_NRB_FR1[scs])}"
        )
    return _NRB_FR1[scs][bw_mhz]


def occupied_bandwidth_hz(bandwidth_hz: float, scs_hz: float) -> float:
    """Bandwidth of the N_PRB * 12 used subcarriers, Hz (the noise bandwidth)."""
    return n_prb(bandwidth_hz, scs_hz) * 12 * float(scs_hz)


def nr_rate_bps(
    spectral_efficiency: float,
    bandwidth_hz: float = 40e6,
    scs_hz: float = 30e3,
    layers: int = 1,
    scaling: float = 1.0,
    overhead: float = 0.14,
) -> float:
    """TS 38.306 4.1.2 data rate in bit/s for ``Q_m * R = spectral_efficiency``.

    ``rate = v * f * SE * N_PRB * 12 / T_s * (1 - OH)``, ``T_s = 1e-3 / (14 * 2**mu)``.
    ``layers`` is v (MIMO layers), ``scaling`` is f (38.306 allows 1, 0.8, 0.75,
    0.4), ``overhead`` is OH (0.14 FR1 downlink, 0.08 FR1 uplink).
    """
    if not (math.isfinite(spectral_efficiency) and spectral_efficiency > 0):
        raise ValueError(f"spectral_efficiency must be finite and > 0, got {spectral_efficiency!r}")
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= 8:
        raise ValueError(f"layers must be an int in 1..8, got {layers!r}")
    if not 0 < scaling <= 1:
        raise ValueError(f"scaling must be in (0, 1], got {scaling!r}")
    if not 0 <= overhead < 1:
        raise ValueError(f"overhead must be in [0, 1), got {overhead!r}")
    nrb = n_prb(bandwidth_hz, scs_hz)
    mu = _MU[int(round(scs_hz))]
    ts_s = 1e-3 / (14 * 2**mu)
    return 1e6 * (1e-6 * layers * scaling * spectral_efficiency * nrb * 12 / ts_s * (1 - overhead))


def peak_rate_bps(qm: int, **kwargs: float) -> float:
    """TS 38.306 peak rate in bit/s with ``R_max = 948/1024`` and modulation order ``qm``.

    Keyword arguments are those of :func:`nr_rate_bps`. 40 MHz, 30 kHz, one
    layer, OH 0.14: about 170.1 Mb/s (qm=6) and 226.9 Mb/s (qm=8).
    """
    if qm not in MODULATIONS:
        raise ValueError(f"qm must be one of {sorted(MODULATIONS)}, got {qm!r}")
    return nr_rate_bps(qm * R_MAX_X1024 / 1024.0, **kwargs)


def _check_link_adaptation(gap_db: float, bler_target: float, slope_db: float) -> None:
    if not math.isfinite(gap_db):
        raise ValueError(f"gap_db must be finite, got {gap_db!r}")
    if not 0 < bler_target < 1:
        raise ValueError(f"bler_target must be in (0, 1), got {bler_target!r}")
    if not (math.isfinite(slope_db) and slope_db > 0):
        raise ValueError(f"slope_db must be finite and > 0, got {slope_db!r}")


def required_sinr_db(
    entry: McsEntry, gap_db: float = 3.0, bler_target: float = 0.1, slope_db: float = 0.5
) -> float:
    """SINR in dB at which ``entry`` reaches ``bler_target`` (inverse of :func:`bler_of`)."""
    _check_link_adaptation(gap_db, bler_target, slope_db)
    sinr_ref_db = 10 * math.log10(2.0**entry.se_exact - 1) + gap_db
    shift_db = slope_db * (math.log((1 - bler_target) / bler_target) - math.log((1 - _BLER_REF) / _BLER_REF))
    return sinr_ref_db + shift_db


def bler_of(sinr_db: float, entry: McsEntry, gap_db: float = 3.0, slope_db: float = 0.5) -> float:
    """Transport-block error probability (0..1) of ``entry`` at ``sinr_db`` (logistic model above)."""
    if math.isnan(sinr_db):
        raise ValueError("sinr_db must be a number, got nan")
    _check_link_adaptation(gap_db, _BLER_REF, slope_db)
    sinr_ref_db = 10 * math.log10(2.0**entry.se_exact - 1) + gap_db
    x = (sinr_db - sinr_ref_db) / slope_db + math.log((1 - _BLER_REF) / _BLER_REF)
    if x > 700:
        return 0.0
    if x < -700:
        return 1.0
    return 1.0 / (1.0 + math.exp(x))


def sinr_to_mcs(
    sinr_db: float,
    table: str = "qam256",
    gap_db: float = 3.0,
    bler_target: float = 0.1,
    slope_db: float = 0.5,
) -> int:
    """Highest MCS of ``table`` whose SE fits ``log2(1 + SINR / Gamma_eff)``.

    ``Gamma_eff`` is ``gap_db`` moved by the BLER target (module docstring), so
    the returned MCS meets ``bler_target``; below the MCS 0 requirement the
    answer is 0 (with high BLER). Monotone non-decreasing in ``sinr_db``.
    """
    if math.isnan(sinr_db):
        raise ValueError("sinr_db must be a number, got nan")
    best = 0
    for index in range(max_mcs(table) + 1):
        if required_sinr_db(mcs_entry(table, index), gap_db, bler_target, slope_db) <= sinr_db:
            best = index  # no early exit: qam64 MCS 17 needs less SINR than MCS 16
    return best
