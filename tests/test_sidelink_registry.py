"""Backend registry: names, option errors and bad values come back as ValueError naming them."""

import pytest

from common.link.sidelink import SIDELINKS, Sidelink, create_radio_control, create_sidelink


def test_all_backends_registered():
    assert {"loopback", "ip", "sirius"} <= set(SIDELINKS)
    assert all(issubclass(cls, Sidelink) for cls in SIDELINKS.values())


def test_unknown_backend_is_named_with_choices():
    with pytest.raises(ValueError, match=r"unknown sidelink backend 'carrier-pigeon'.*'ip'.*'loopback'.*'sirius'"):
        create_sidelink("carrier-pigeon")


@pytest.mark.parametrize("name, options, match", [
    ("ip", {"rate_bsp": 1e6}, r"sidelink 'ip': bad options \['rate_bsp'\]"),
    ("loopback", {"trace": "demo", "speed": 3}, r"sidelink 'loopback': bad options"),
    ("loopback", {"params": {"distance": 3}}, r"loopback sidelink: bad link params \['distance'\]"),
    ("loopback", {"trace": "no-such-trace.csv"}, r"no-such-trace\.csv"),
    ("ip", {"rate_bps": -5.0}, r"rate_bps must be finite and > 0, got -5\.0"),
    ("ip", {"rate_bps": "fast"}, r"rate_bps must be finite and > 0, got 'fast'"),
    ("ip", {"mcs": 29}, r"must be an int in 0\.\.28, got 29"),
    ("ip", {"mcs_table": "qam1024"}, r"mcs_table must be one of .*got 'qam1024'"),
    ("ip", {"bandwidth_hz": 33e6}, r"bandwidth_hz=33000000\.0 is not a TS 38\.101-1 channel bandwidth"),
    ("sirius", {}, r"sirius sidelink needs radio = a \[link\.radio\] table.*got None"),
    ("sirius", {"radio": {"control": "telnet"}}, r"unknown radio control 'telnet'"),
    ("sirius", {"radio": {"control": "http", "url": "http://x", "path": "/"}}, r"radio control 'http': bad options"),
    ("sirius", {"radio": {"control": "http", "url": "ftp://radio"}}, r"url must start with http:// or https://"),
    ("sirius", {"radio": {"control": "command", "state_argv": ["x"]}, "max_stale_s": -1},
     r"max_stale_s must be finite and >= 0, got -1"),
    ("sirius", {"radio": {"control": "command", "state_argv": ["x"]}, "scs_hz": 20e3}, r"scs_hz must be one of"),
])
def test_bad_options_are_named(name, options, match):
    with pytest.raises(ValueError, match=match):
        create_sidelink(name, **options)


@pytest.mark.parametrize("options, match", [
    ({"control": "command", "state_argv": []}, r"state_argv must be a non-empty list"),
    ({"control": "command", "state_argv": "radioctl get-state"}, r"state_argv must be a non-empty list"),
    ({"control": "command", "state_argv": ["r"], "set_mcs_argv": ["r", "set-mcs"]}, r"must contain '\{mcs\}'"),
    ({"control": "command", "state_argv": ["r"], "timeout_s": 0}, r"timeout_s must be finite and > 0, got 0"),
    ({"control": "http", "url": "http://r", "fields": {"snr": "snr"}}, r"unknown radio fields \['snr'\]"),
    ({"control": "http", "url": "http://r", "fields": {"sinr_db": "phy..sinr"}}, r"'sinr_db' needs a key"),
    ({"control": "http", "url": "http://r", "state_path": "state"}, r"state_path must start with '/'"),
    ({"control": "http", "url": "http://r", "mcs_method": "PATCH"}, r"mcs_method must be 'POST' or 'PUT'"),
    ({"control": "http", "url": "http://r", "headers": {"X-Token": 5}}, r"headers must be a table of strings"),
    ({}, r"unknown radio control None"),
])
def test_bad_radio_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        create_radio_control(**options)

