"""The one channel interface (common/link/model.py): every implementation keeps its contract.

Implementations: the sidelink (loopback, ip, sirius) as a ``SidelinkChannel``, fed-lora's
``UplinkChannel``, slf's ``KaryChannel``. Each case builds a fresh channel from a seed and says
whether it is error-free or lossy.
"""

import math
import time

import numpy as np
import pytest

from common.link.channel import LinkParams, state_from_mcs
from common.link.model import Channel, Transmission
from common.link.sidelink import (
    DeliveryReport,
    IpLink,
    LoopbackLink,
    PayloadLost,
    RadioControl,
    SidelinkChannel,
    SiriusLink,
)
from common.modes.base import RoundContext
from common.modes.fed_lora.uplink import UplinkChannel, uplink_outcome
from common.modes.fed_lora.wireless import CellConfig, DeviceProfile
from common.modes.slf.dmc import KaryChannel, KaryErrors, dmc_numpy

SIZES = [0, 1, 7, 1_000, 250_000, 4_000_000]
CELL = CellConfig()
BANDWIDTH_HZ, POWER_W = 1e6, 0.2


class _Radio(RadioControl):
    endpoint = "fake"

    def read_state(self):
        return {"mcs": 20, "sinr_db": 25.0}

    def set_mcs(self, mcs):
        raise NotImplementedError


def _state(bler: float):
    return state_from_mcs(10, "qam64", LinkParams(), sinr_db=10.0, bler=bler)


def loopback(seed: int, error_free: bool) -> Channel:
    link = LoopbackLink(trace="demo", rounds=3, seed=seed, params=LinkParams(fading="none"), sleep=lambda s: None)
    return SidelinkChannel(link, _state(0.0 if error_free else 0.4), received_ns=0)


def ip(seed: int, error_free: bool) -> Channel:
    link = IpLink(rate_bps=50e6)
    return SidelinkChannel(link, link.channel_state(0), received_ns=0)


def sirius(seed: int, error_free: bool) -> Channel:
    link = SiriusLink(radio=_Radio())
    return SidelinkChannel(link, link.channel_state(0), received_ns=time.time_ns())


def uplink(seed: int, error_free: bool) -> Channel:
    # SINR 47 dB (PER ~1e-19), or 3 dB (the PER waterfall's middle: PER 0.5)
    sinr = 5e4 if error_free else 2.0
    gain = sinr * CELL.noise_psd_w_per_hz * BANDWIDTH_HZ / POWER_W
    return UplinkChannel(CELL, POWER_W, BANDWIDTH_HZ, gain, np.random.default_rng([seed, 53, 0, 0]))


def dmc(seed: int, error_free: bool) -> Channel:
    return KaryChannel(16, 0.0 if error_free else 0.3, np.random.default_rng(seed))


CASES = {"loopback": loopback, "ip": ip, "sirius": sirius, "uplink": uplink, "dmc": dmc}
ALWAYS_CLEAN = {"ip", "sirius"}  # a real network below: nothing emulated to lose
UNITS = {"loopback": "byte", "ip": "byte", "sirius": "byte", "uplink": "bit", "dmc": "symbol"}


def _same(a: Transmission, b: Transmission) -> bool:
    if (a.airtime_s, a.transmissions, a.lost, a.reason) != (b.airtime_s, b.transmissions, b.lost, b.reason):
        return False
    if isinstance(a, KaryErrors):
        return np.array_equal(a.flip, b.flip) and np.array_equal(a.offset, b.offset)
    return True


@pytest.mark.parametrize("name", CASES)
def test_implements_the_interface(name):
    ch = CASES[name](0, True)
    assert isinstance(ch, Channel)
    assert ch.unit == UNITS[name]
    assert isinstance(ch.transmit(10), Transmission)


@pytest.mark.parametrize("error_free", [True, False])
@pytest.mark.parametrize("name", CASES)
def test_airtime_is_non_negative_and_monotone_in_size(name, error_free):
    """The same draws (a fresh channel of one seed for each size): air time never decreases with size."""
    for seed in range(5):
        times = [CASES[name](seed, error_free).transmit(n).airtime_s for n in SIZES]
        assert all(t >= 0 for t in times), times
        assert times == sorted(times), (seed, times)


@pytest.mark.parametrize("name", CASES)
def test_an_error_free_channel_delivers_unchanged_in_one_attempt(name):
    ch = CASES[name](3, True)
    for n in SIZES:
        t = ch.transmit(n)
        assert (t.lost, t.reason, t.transmissions) == (False, "", 1)
        if isinstance(t, KaryErrors):
            sent = np.random.default_rng(n).integers(0, 16, size=n)
            np.testing.assert_array_equal(t.apply(sent), sent)


@pytest.mark.parametrize("error_free", [True, False])
@pytest.mark.parametrize("name", CASES)
def test_seeded_runs_repeat(name, error_free):
    a, b = CASES[name](11, error_free), CASES[name](11, error_free)
    for n in SIZES:
        assert _same(a.transmit(n), b.transmit(n))


@pytest.mark.parametrize("name", sorted(set(CASES) - ALWAYS_CLEAN))
def test_a_lossy_channel_errs_sometimes_and_reports_it(name):
    """Losses (sidelink, uplink) or substitutions (DMC) happen and come back as values, never raised."""
    outcomes = [CASES[name](seed, False).transmit(1_000) for seed in range(40)]
    if name == "dmc":
        assert not any(t.lost for t in outcomes)
        assert 0 < np.mean([t.flip.mean() for t in outcomes]) < 1
    else:
        lost = [t for t in outcomes if t.lost]
        assert 0 < len(lost) < len(outcomes)
        assert all(t.reason for t in lost)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("size", [-1, 1.5, True, "8"])
def test_a_bad_size_is_refused(name, size):
    with pytest.raises(ValueError, match=r"must be an int >= 0"):
        CASES[name](0, True).transmit(size)


def test_the_dmc_applies_its_draws_as_dmc_numpy_does():
    """``dmc_numpy`` is one use of ``KaryChannel``: the same draws whatever the array's shape."""
    sent = np.random.default_rng(0).integers(0, 16, size=(5, 49))
    errors = KaryChannel(16, 0.25, np.random.default_rng(4)).transmit(sent.size)
    got = dmc_numpy(sent, 16, 0.25, np.random.default_rng(4))
    np.testing.assert_array_equal(errors.apply(sent), got)
    assert got.shape == sent.shape and got.dtype == sent.dtype
    assert int((got != sent).sum()) == int(errors.flip.sum())  # a substitution always changes the symbol
    with pytest.raises(ValueError, match=r"1225 symbols were transmitted, got 245"):
        KaryChannel(16, 0.25, np.random.default_rng(4)).transmit(1225).apply(sent)


def test_the_uplink_at_zero_power_never_arrives():
    t = UplinkChannel(CELL, 0.0, BANDWIDTH_HZ, 1e-9, np.random.default_rng(0)).transmit(8_000)
    assert t.airtime_s == math.inf and t.lost and t.reason == "packet_error"
    out = uplink_outcome(CELL, DeviceProfile(100.0), 0.0, BANDWIDTH_HZ, 1e-9, 8_000, 1e6, 1.0, 0, 0, 0)
    assert (out.outcome, out.reason) == ("lost", "deadline")  # the deadline is checked first


def test_a_lost_frame_raises_in_the_round_context_and_is_reported_by_the_channel():
    """The RX's modes ask ``ctx.deliver``: the sidelink's loss ends the round (PayloadLost, with the
    lost frame's report); the same use as a Channel reports it."""
    link = LoopbackLink(trace="demo", rounds=3, params=LinkParams(fading="none", max_harq_retx=1))
    lossy = _state(1.0)
    ctx = RoundContext(1, 0, lossy, link, 1_000, time.time_ns() - 10**9, 0)
    with pytest.raises(PayloadLost, match=r"payload of 1000 B lost after 2 HARQ transmissions") as e:
        ctx.deliver(1_000)
    assert isinstance(e.value.report, DeliveryReport) and e.value.report.lost
    assert e.value.report.transmissions == 2
    report = SidelinkChannel(link, lossy, 0).transmit(1_000)
    assert report.lost and report.reason == str(e.value)
    clean = RoundContext(1, 0, _state(0.0), link, 1_000, 0, 0).deliver(1_000)
    assert not clean.lost and clean.delivered_ns == int(clean.delay_s * 1e9)
