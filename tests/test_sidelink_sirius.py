"""``sirius`` backend against fake radios: HTTP (tests/fake_radio.py) and command (tests/fake_radioctl.py)."""

import json
import math
import socket
import sys
import time
from pathlib import Path

import pytest
from fake_radio import FakeRadio

from common.link.channel import LinkParams, mcs_entry, nr_rate_bps, state_from_sinr
from common.link.sidelink import (
    CommandRadioControl,
    HttpRadioControl,
    RadioError,
    SiriusLink,
    UnsupportedOperation,
    create_sidelink,
)

RADIOCTL = [sys.executable, str(Path(__file__).with_name("fake_radioctl.py"))]


@pytest.fixture
def radio():
    with FakeRadio() as fake:
        yield fake


def http_link(fake, **options):
    return create_sidelink("sirius", radio={"control": "http", "url": fake.url, "timeout_s": 0.5, **options})


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_sinr_only_goes_through_link_adaptation(radio):
    radio.doc = {"sinr_db": 18.5, "rsrp_dbm": -71.0, "cqi": 11}
    link = http_link(radio)
    state = link.channel_state(0)
    assert state == state_from_sinr(18.5, LinkParams(mcs_table="qam256"))
    assert link.last_reading == {"sinr_db": 18.5, "rsrp_dbm": -71.0, "cqi": 11}
    assert radio.calls == [("GET", "/state", None)]


def test_radio_mcs_wins_and_fields_map_nested_keys(radio):
    radio.doc = {"phy": {"sinr": "24.0", "rsrp": -65}, "link": {"mcs": 20, "cqi": 13}}
    fields = {"sinr_db": "phy.sinr", "rsrp_dbm": "phy.rsrp", "mcs": "link.mcs", "cqi": "link.cqi"}
    link = http_link(radio, fields=fields)
    state = link.channel_state(7)
    assert (state.mcs, state.mcs_table, state.modulation, state.sinr_db) == (20, "qam256", "256QAM", 24.0)
    assert state.rate_bps == pytest.approx(nr_rate_bps(mcs_entry("qam256", 20).se_exact))
    assert 0.0 <= state.bler < 0.1
    assert link.last_reading == {"sinr_db": 24.0, "rsrp_dbm": -65.0, "mcs": 20, "cqi": 13}


def test_carrier_options_set_the_rate(radio):
    radio.doc = {"mcs": 28}
    link = create_sidelink("sirius", mcs_table="qam64", bandwidth_hz=20e6, scs_hz=30e3,
                           radio={"control": "http", "url": radio.url})
    state = link.channel_state(0)
    assert math.isnan(state.sinr_db) and state.bler == 0.0
    assert state.rate_bps == pytest.approx(nr_rate_bps(mcs_entry("qam64", 28).se_exact, 20e6, 30e3))


@pytest.mark.parametrize("doc, match", [
    ({"rsrp_dbm": -80, "cqi": 4}, r"neither mcs nor sinr_db \(got \['cqi', 'rsrp_dbm'\]"),
    ({"mcs": 28}, r"reported MCS 28, outside qam256 0\.\.27"),
    ({"mcs": 3.5}, r"'mcs' \(mcs\) is 3\.5, not an int"),
    ({"cqi": 16, "sinr_db": 3}, r"'cqi' \(cqi\) is 16, not an int 0\.\.15"),
    ({"sinr_db": "high"}, r"'sinr_db' \(sinr_db\) is 'high', not a number"),
    ({"sinr_db": True}, r"is True, not a number"),
    ([1, 2], r"sent list .*expected a JSON object"),
])
def test_bad_readings_raise_radio_error_naming_the_endpoint(radio, doc, match):
    radio.doc = doc
    link = http_link(radio)
    with pytest.raises(RadioError, match=match) as info:
        link.channel_state(0)
    assert radio.url in str(info.value)
    assert link.read_failures == 1 and link.last_error == str(info.value)


def test_set_mcs_reaches_the_radio(radio):
    link = http_link(radio, mcs_method="PUT", set_mcs_key="target_mcs")
    link.set_mcs(9)
    assert radio.calls == [("PUT", "/mcs", {"target_mcs": 9})]
    with pytest.raises(ValueError, match=r"0\.\.27, got 30"):
        link.set_mcs(30)
    assert len(radio.calls) == 1


def test_set_mcs_without_a_path_is_unsupported(radio):
    with pytest.raises(UnsupportedOperation, match="no mcs_path"):
        http_link(radio, mcs_path="").set_mcs(3)


def test_radio_down_is_a_clear_error():
    url = closed_port_url()
    link = create_sidelink("sirius", radio={"control": "http", "url": url, "timeout_s": 0.5})
    with pytest.raises(RadioError, match=rf"radio at {url}/state did not answer GET") as info:
        link.channel_state(0)
    assert link.last_error == str(info.value)
    with pytest.raises(RadioError, match=rf"radio at {url}/mcs did not answer POST"):
        link.set_mcs(5)


def test_slow_radio_times_out(radio):
    radio.delay_s = 0.5
    link = http_link(radio, timeout_s=0.1)
    t0 = time.perf_counter()
    with pytest.raises(RadioError, match=r"did not answer GET within 0\.1 s"):
        link.channel_state(0)
    assert time.perf_counter() - t0 < 0.4


def test_http_error_status_is_named(radio):
    radio.status = 503
    with pytest.raises(RadioError, match=r"answered GET with HTTP 503"):
        http_link(radio).channel_state(0)


def test_stale_reading_stands_in_only_within_max_stale_s(radio):
    now = [100.0]
    link = SiriusLink(radio=HttpRadioControl(radio.url, timeout_s=0.5), max_stale_s=2.0, clock=lambda: now[0])
    good = link.channel_state(0)
    radio.status = 500
    now[0] = 101.5
    assert link.channel_state(1) == good
    assert link.read_failures == 1 and "HTTP 500" in link.last_error
    now[0] = 102.5
    with pytest.raises(RadioError, match="HTTP 500"):
        link.channel_state(2)
    radio.status = 200
    assert link.channel_state(3) == good and link.last_error is None


def test_without_max_stale_s_every_failed_read_fails(radio):
    link = http_link(radio)
    link.channel_state(0)
    radio.status = 500
    with pytest.raises(RadioError):
        link.channel_state(1)


@pytest.fixture
def state_file(tmp_path):
    path = tmp_path / "radio.json"
    path.write_text(json.dumps({"snr": 12.0, "mcs_now": 11, "rsrp": -90}))
    return path


def command_link(state_file, **options):
    radio = {"control": "command", "state_argv": [*RADIOCTL, str(state_file), "get-state"],
             "set_mcs_argv": [*RADIOCTL, str(state_file), "set-mcs", "{mcs}"],
             "fields": {"sinr_db": "snr", "mcs": "mcs_now", "rsrp_dbm": "rsrp"}, "timeout_s": 5.0, **options}
    return create_sidelink("sirius", mcs_table="qam64", radio=radio)


def test_command_radio_state_and_set_mcs(state_file):
    link = command_link(state_file)
    state = link.channel_state(0)
    assert (state.mcs, state.mcs_table, state.sinr_db) == (11, "qam64", 12.0)
    assert link.last_reading == {"sinr_db": 12.0, "mcs": 11, "rsrp_dbm": -90.0}
    link.set_mcs(4)
    assert Path(f"{state_file}.log").read_text() == "set-mcs 4\n"
    assert json.loads(state_file.read_text())["mcs"] == 4


@pytest.mark.parametrize("state_argv, timeout_s, match", [
    (["/nonexistent/radioctl", "get-state"], 5.0, r"radio command `/nonexistent/radioctl get-state` could not run"),
    ([*RADIOCTL, "STATE", "fail"], 5.0, r"exited 3: radioctl: cannot fail"),
    ([*RADIOCTL, "STATE", "sleep", "2"], 0.3, r"did not finish within 0\.3 s"),
    ([sys.executable, "-c", "print('not json')"], 5.0, r"printed invalid JSON: 'not json"),
])
def test_command_radio_failures(state_argv, timeout_s, match):
    control = CommandRadioControl(state_argv, timeout_s=timeout_s)
    link = SiriusLink(radio=control)
    with pytest.raises(RadioError, match=match):
        link.channel_state(0)
    with pytest.raises(UnsupportedOperation, match="no set_mcs_argv"):
        link.set_mcs(1)


def test_deliver_applies_no_delay(radio):
    link = http_link(radio)
    state = link.channel_state(0)
    t0 = time.perf_counter()
    report = link.deliver(2_000_000, state, time.time_ns())
    assert time.perf_counter() - t0 < 0.05
    assert report.airtime_s == pytest.approx(16e6 / state.rate_bps)
    assert (report.transmissions, report.delay_s) == (1, 0.0)
