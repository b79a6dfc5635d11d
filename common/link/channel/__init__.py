"""3GPP-grounded channel emulator (pure numpy): MCS tables, NR rate, fading, traces.

Typical use::

    from common.link.channel import ChannelEmulator, LinkParams, build_trace
    emu = ChannelEmulator(LinkParams(distance_m=150, speed_mps=14, fading="rician"), seed=1)
    state = emu.step()                   # ChannelState of the next round
    outcome = emu.delivery(nbytes, state)  # a common.link.model.Transmission: HARQ air time, lost
    trace = build_trace("demo", rounds=9)
"""

from common.link.channel.emulator import (
    FADING_MODELS,
    ChannelEmulator,
    LinkParams,
    airtime_s,
    state_from_mcs,
    state_from_sinr,
)
from common.link.channel.fading import (
    NoFading,
    RayleighBlockFading,
    RicianFading,
    bessel_j0,
    doppler_hz,
    jakes_rho,
    k_factor_from_db,
)
from common.link.channel.nr import (
    MCS_TABLES,
    MODULATIONS,
    McsEntry,
    bler_of,
    max_mcs,
    mcs_entry,
    n_prb,
    nr_rate_bps,
    occupied_bandwidth_hz,
    peak_rate_bps,
    required_sinr_db,
    sinr_to_mcs,
)
from common.link.channel.pathloss import PATHLOSS_MODELS, pathloss_db, thermal_noise_dbm
from common.link.channel.state import ChannelState
from common.link.channel.traces import TRACE_NAMES, build_trace

__all__ = [
    "FADING_MODELS", "MCS_TABLES", "MODULATIONS", "PATHLOSS_MODELS", "TRACE_NAMES",
    "ChannelEmulator", "ChannelState", "LinkParams", "McsEntry",
    "NoFading", "RayleighBlockFading", "RicianFading",
    "airtime_s", "bessel_j0", "bler_of", "build_trace", "doppler_hz", "jakes_rho",
    "k_factor_from_db", "max_mcs", "mcs_entry", "n_prb", "nr_rate_bps",
    "occupied_bandwidth_hz", "pathloss_db", "peak_rate_bps", "required_sinr_db",
    "sinr_to_mcs", "state_from_mcs", "state_from_sinr", "thermal_noise_dbm",
]
