"""Per-round channel emulator: link budget + fading -> SINR -> MCS, rate, BLER; HARQ delivery.

Link budget (dB)::

    SNR = tx_power_dbm + antenna_gain_db - pathloss_db - noise_dbm
    noise_dbm = -174 + 10 log10(N_PRB * 12 * SCS) + noise_figure_db
    SINR = min(SNR + 10 log10|h|^2, max_sinr_db)

``max_sinr_db`` stands for the transmitter EVM / receiver impairments that cap
the usable SINR of a real radio (a 3 m LOS link has a thermal SNR above 50 dB;
30 dB corresponds to about 3 % EVM, enough for the top 256-QAM MCS).
Interference is not modelled (SINR = SNR).

Delivery model (one payload per round, kept deliberately simple): the payload
is one transport block sent at the round's rate; each attempt takes
``8 * nbytes / rate_bps`` seconds of air time and fails independently with the
round's BLER (no soft combining: conservative). A failed attempt costs a
HARQ round trip ``processing_delay_s`` (decode, NACK, reschedule) and is
retransmitted, up to ``max_harq_retx`` times; if the last attempt fails too
the payload is lost, and the caller records the round as failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.link.channel.fading import (
    NoFading,
    RayleighBlockFading,
    RicianFading,
    doppler_hz,
    k_factor_from_db,
    make_rng,
)
from common.link.channel.nr import (
    MCS_TABLES,
    bler_of,
    mcs_entry,
    n_prb,
    nr_rate_bps,
    occupied_bandwidth_hz,
    sinr_to_mcs,
)
from common.link.channel.pathloss import PATHLOSS_MODELS, pathloss_db, thermal_noise_dbm
from common.link.channel.state import ChannelState
from common.link.model import Transmission, check_size

FADING_MODELS: tuple[str, ...] = ("rician", "rayleigh", "rayleigh_block", "none")


def _finite(name: str, value: float, lo: float | None = None, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")


@dataclass(frozen=True)
class LinkParams:
    """Radio link configuration (units in the names; dB quantities are dB).

    pathloss: one of ``PATHLOSS_MODELS`` ("free_space", "v2v_highway_los",
    "v2v_urban_los"; see ``common.link.channel.pathloss``).
    fading: "rician" (K = ``k_factor_db``), "rayleigh", "rayleigh_block"
    (constant for ``block_rounds`` rounds, AR(1) across blocks) or "none".
    round_interval_s: time between two rounds; fading is sampled once per round.
    gap_db: Shannon gap at 10 % BLER; bler_slope_db: logistic BLER slope
    (see ``common.link.channel.nr``). layers / scaling / overhead: TS 38.306 v, f, OH.
    processing_delay_s: HARQ round trip added per retransmission (inside the outcome's ``delay_s``);
    the loopback sidelink adds it once more per delivered frame (the receiver's processing).
    """

    tx_power_dbm: float = 23.0
    distance_m: float = 3.0
    carrier_hz: float = 5.9e9
    bandwidth_hz: float = 40e6
    scs_hz: float = 30e3
    noise_figure_db: float = 9.0
    antenna_gain_db: float = 0.0
    pathloss: str = "free_space"
    fading: str = "rician"
    k_factor_db: float = 9.0
    speed_mps: float = 0.0
    block_rounds: int = 4
    round_interval_s: float = 0.1
    mcs_table: str = "qam256"
    gap_db: float = 3.0
    bler_slope_db: float = 0.5
    bler_target: float = 0.1
    max_sinr_db: float = 30.0
    layers: int = 1
    scaling: float = 1.0
    overhead: float = 0.14
    max_harq_retx: int = 3
    processing_delay_s: float = 1e-3

    def __post_init__(self) -> None:
        _finite("tx_power_dbm", self.tx_power_dbm)
        _finite("distance_m", self.distance_m, 0.0, lo_open=True)
        _finite("carrier_hz", self.carrier_hz, 0.0, lo_open=True)
        _finite("noise_figure_db", self.noise_figure_db, 0.0)
        _finite("antenna_gain_db", self.antenna_gain_db)
        _finite("k_factor_db", self.k_factor_db)
        _finite("speed_mps", self.speed_mps, 0.0)
        _finite("round_interval_s", self.round_interval_s, 0.0, lo_open=True)
        _finite("gap_db", self.gap_db)
        _finite("bler_slope_db", self.bler_slope_db, 0.0, lo_open=True)
        _finite("processing_delay_s", self.processing_delay_s, 0.0)
        if isinstance(self.max_sinr_db, bool) or not isinstance(self.max_sinr_db, (int, float)) or math.isnan(
            self.max_sinr_db
        ):
            raise ValueError(f"max_sinr_db must be a number (inf disables the cap), got {self.max_sinr_db!r}")
        if not 0 < self.bler_target < 1:
            raise ValueError(f"bler_target must be in (0, 1), got {self.bler_target!r}")
        if self.pathloss not in PATHLOSS_MODELS:
            raise ValueError(f"pathloss must be one of {PATHLOSS_MODELS}, got {self.pathloss!r}")
        if self.fading not in FADING_MODELS:
            raise ValueError(f"fading must be one of {FADING_MODELS}, got {self.fading!r}")
        if self.mcs_table not in MCS_TABLES:
            raise ValueError(f"mcs_table must be one of {MCS_TABLES}, got {self.mcs_table!r}")
        for name in ("block_rounds", "max_harq_retx"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "block_rounds" else 0):
                raise ValueError(f"{name} must be an int >= {1 if name == 'block_rounds' else 0}, got {v!r}")
        n_prb(self.bandwidth_hz, self.scs_hz)  # raises ValueError naming a bad pair
        nr_rate_bps(1.0, self.bandwidth_hz, self.scs_hz, self.layers, self.scaling, self.overhead)

    @property
    def mean_snr_db(self) -> float:
        """Thermal SNR before fading and before the ``max_sinr_db`` cap, dB."""
        noise = thermal_noise_dbm(occupied_bandwidth_hz(self.bandwidth_hz, self.scs_hz), self.noise_figure_db)
        return self.tx_power_dbm + self.antenna_gain_db - pathloss_db(self.pathloss, self.distance_m, self.carrier_hz) - noise


def state_from_mcs(
    mcs: int, mcs_table: str, params: LinkParams, sinr_db: float = math.nan, bler: float = 0.0
) -> ChannelState:
    """ChannelState for a given MCS; rate from TS 38.306 with the link's bandwidth/SCS/layers."""
    entry = mcs_entry(mcs_table, mcs)
    rate = nr_rate_bps(entry.se_exact, params.bandwidth_hz, params.scs_hz, params.layers, params.scaling, params.overhead)
    return ChannelState(float(sinr_db), entry.index, mcs_table, entry.modulation, rate, float(bler))


def state_from_sinr(sinr_db: float, params: LinkParams, mcs_table: str | None = None) -> ChannelState:
    """Link adaptation: SINR (dB) -> MCS at ``params.bler_target``, its rate and BLER."""
    table = params.mcs_table if mcs_table is None else mcs_table
    mcs = sinr_to_mcs(sinr_db, table, params.gap_db, params.bler_target, params.bler_slope_db)
    bler = bler_of(sinr_db, mcs_entry(table, mcs), params.gap_db, params.bler_slope_db)
    return state_from_mcs(mcs, table, params, sinr_db, bler)


def airtime_s(nbytes: int, state: ChannelState) -> float:
    """Air time of one attempt of ``nbytes`` bytes at ``state.rate_bps``: ``8 nbytes / rate``, s."""
    return 8.0 * check_size(nbytes, "nbytes") / state.rate_bps


class ChannelEmulator:
    """Emulated link: ``step()`` gives the ChannelState of the next round.

    params: LinkParams (defaults: the paper's static 3 m LOS link).
    seed:   int seed or numpy Generator; the fading and ``delivery`` draws use it.
    """

    def __init__(self, params: LinkParams | None = None, seed: int | np.random.Generator | None = 0) -> None:
        self.params = LinkParams() if params is None else params
        if not isinstance(self.params, LinkParams):
            raise ValueError(f"params must be a LinkParams, got {type(self.params).__name__}")
        self.rng = make_rng(seed)
        p = self.params
        f_d = doppler_hz(p.speed_mps, p.carrier_hz)
        if p.fading == "rician":
            self._fading = RicianFading(k_factor_from_db(p.k_factor_db), f_d, p.round_interval_s, self.rng)
        elif p.fading == "rayleigh":
            self._fading = RicianFading(0.0, f_d, p.round_interval_s, self.rng)
        elif p.fading == "rayleigh_block":
            self._fading = RayleighBlockFading(f_d, p.round_interval_s, p.block_rounds, self.rng)
        else:
            self._fading = NoFading()
        self.mean_snr_db = p.mean_snr_db
        self.time_s = 0.0  # time of the next round
        self.round = 0

    def step(self, mcs_table: str | None = None) -> ChannelState:
        """Channel of the next round (``mcs_table`` overrides ``params.mcs_table`` for it)."""
        h = complex(self._fading.sample(1)[0])
        gain_db = 10 * math.log10(max(abs(h) ** 2, 1e-30))
        sinr_db = min(self.mean_snr_db + gain_db, self.params.max_sinr_db)
        self.time_s += self.params.round_interval_s
        self.round += 1
        return state_from_sinr(sinr_db, self.params, mcs_table)

    def airtime_s(self, nbytes: int, state: ChannelState) -> float:
        """See :func:`airtime_s`."""
        return airtime_s(nbytes, state)

    def delivery(self, nbytes: int, state: ChannelState, rng: np.random.Generator | None = None) -> Transmission:
        """Send ``nbytes`` over ``state`` with HARQ (module docstring); ``rng`` defaults to the emulator's.

        The transmission's ``airtime_s`` is the whole delay: every attempt's air time and the HARQ
        round trips between them."""
        gen = self.rng if rng is None else rng
        t_air = airtime_s(nbytes, state)
        max_tx = 1 + self.params.max_harq_retx
        delay = 0.0
        for attempt in range(1, max_tx + 1):
            delay += t_air
            if gen.random() >= state.bler:
                return Transmission(delay, attempt)
            if attempt < max_tx:
                delay += self.params.processing_delay_s
        return Transmission(delay, max_tx, lost=True, reason=f"lost after {max_tx} HARQ transmissions at "
                                                             f"MCS {state.mcs} (BLER {state.bler:.3f})")
