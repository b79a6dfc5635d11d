"""Repeated log lines are rate-limited (fake clock), and a ZAP refusal flood is."""

from __future__ import annotations

import logging
import time

import pytest
import zmq

from common.net import security
from common.net.ratelimit import RateLimitFilter, rate_limit
from common.net.security import TxSecurity, generate_keypair, load_public, load_secret, rx_security
from common.net.transport import RxSocket


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.levelname} {record.name} {record.getMessage()}")


@pytest.fixture
def logger():
    lg = logging.getLogger(f"test.ratelimit.{time.monotonic_ns()}")
    lg.setLevel(logging.DEBUG)
    lg.propagate = False
    handler = ListHandler()
    lg.addHandler(handler)
    clock = FakeClock()
    f = RateLimitFilter(burst=3, window_s=10.0, clock=clock)
    lg.addFilter(f)
    return lg, handler, clock, f


def test_first_n_pass_then_one_summary_per_window(logger):
    lg, h, clock, f = logger
    for i in range(50):
        lg.warning("TX %s REFUSED (key %s)", f"10.0.0.{i}", "k")
        clock.t += 0.1
    assert len(h.lines) == 3 and all("REFUSED" in line for line in h.lines)
    assert f.suppressed_total == 47
    clock.t += 10  # the window is over: the next line brings the summary first
    lg.warning("TX %s REFUSED (key %s)", "10.0.0.99", "k")
    assert h.lines[3].startswith("WARNING ") and "suppressed 47 similar messages" in h.lines[3]
    assert "last: TX 10.0.0.49 REFUSED" in h.lines[3]
    assert "10.0.0.99" in h.lines[4] and len(h.lines) == 5


def test_groups_are_per_logger_and_template(logger):
    lg, h, clock, f = logger
    for _ in range(10):
        lg.warning("refused %s", 1)
        lg.info("admitted %s", 2)
    assert sum("refused" in x for x in h.lines) == 3 and sum("admitted" in x for x in h.lines) == 3
    other = logging.getLogger(lg.name + ".child")
    other.addFilter(f)
    for _ in range(5):
        other.warning("refused %s", 1)
    assert sum(lg.name + ".child" in x for x in h.lines) == 3


def test_flush_emits_pending_summaries(logger):
    lg, h, clock, f = logger
    for _ in range(8):
        lg.error("allow-list unreadable")
    assert f.flush() == 0  # window still open
    clock.t += 10.5
    assert f.flush() == 1
    assert h.lines[-1].startswith("ERROR") and "suppressed 5 similar messages in the last 10 s" in h.lines[-1]
    assert f.flush() == 0
    for _ in range(4):
        lg.error("allow-list unreadable")
    assert f.flush(force=True) == 1 and "suppressed 1 similar" in h.lines[-1]


def test_quiet_group_is_summarised_when_another_logs(logger):
    lg, h, clock, f = logger
    for _ in range(6):
        lg.warning("flood %d", 1)
    clock.t += 11
    lg.warning("something else")  # the flood's window ended: its summary is not lost
    assert any("suppressed 3 similar" in x for x in h.lines)


def test_rate_limit_attaches_once_and_checks_arguments():
    lg = logging.getLogger("test.ratelimit.once")
    assert rate_limit(lg) is rate_limit("test.ratelimit.once")
    with pytest.raises(ValueError):
        RateLimitFilter(burst=0)


def test_security_loggers_are_rate_limited():
    assert security.log_limiter in logging.getLogger("semalign.security").filters
    assert security.zap_log_limiter in logging.getLogger("semalign.security.zap").filters


def test_zap_refusal_flood_over_real_sockets(tmp_path, monkeypatch):
    """40 connections with unknown CURVE keys: today 40 REFUSED lines; now burst lines + one summary.

    The limiter's clock is held still, so the 40 refusals fall in one window however slow the machine.
    """
    monkeypatch.setattr(security.log_limiter, "clock", lambda: 1000.0)
    generate_keypair(tmp_path, "rx")
    (tmp_path / "allow").mkdir()
    intruder_pub, intruder_secret = generate_keypair(tmp_path / "intruder", "tx")
    handler = ListHandler()
    sec_log = logging.getLogger("semalign.security")
    sec_log.addHandler(handler)
    old_level = sec_log.level
    sec_log.setLevel(logging.INFO)
    security.log_limiter.flush(force=True)
    rx = RxSocket("tcp://127.0.0.1:0", 1 << 16, zmq.Context.instance(),
                  rx_security(**{"curve_secret": tmp_path / "rx.key_secret", "curve_allow": tmp_path / "allow"}))
    ctx = zmq.Context.instance()
    tx_sec = TxSecurity(load_secret(intruder_secret), load_public(tmp_path / "rx.key"))
    try:
        for _ in range(40):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            security.apply_client(s, tx_sec)
            s.connect(rx.address)
            try:  # the refused handshake means no peer: a blocking send would wait forever
                s.send(b"hello", zmq.NOBLOCK)
            except zmq.Again:
                pass
            deadline = time.monotonic() + 5
            refused = rx.auth.refused
            while rx.auth.refused == refused and time.monotonic() < deadline:
                rx.recv(10)
            s.close()
        assert rx.auth.refused == 40
        refusals = [x for x in handler.lines if "REFUSED" in x and "suppressed" not in x]
        assert len(refusals) == security.REFUSAL_LOG_BURST
    finally:
        rx.close()  # stopping the authenticator flushes the pending summary
        sec_log.removeHandler(handler)
        sec_log.setLevel(old_level)
    summaries = [x for x in handler.lines if "suppressed" in x]
    assert len(summaries) == 1 and f"suppressed {40 - security.REFUSAL_LOG_BURST} similar" in summaries[0]
    assert "REFUSED" in summaries[0]


def test_select_limits_only_chosen_records(logger):
    lg, h, clock, _ = logger
    lg.filters.clear()
    lg.addFilter(RateLimitFilter(burst=1, window_s=10, clock=clock,
                                 select=lambda r: getattr(r, "per_connection", False)))
    for _ in range(4):
        lg.warning("startup warning")
        lg.warning("refused %s", 1, extra={"per_connection": True})
    assert sum("startup" in x for x in h.lines) == 4 and sum("refused" in x for x in h.lines) == 1


def test_insecure_warning_is_never_suppressed(caplog):
    with caplog.at_level(logging.WARNING, logger="semalign.security"):
        for _ in range(2 * security.REFUSAL_LOG_BURST):
            rx_security(**{"insecure": True})
    assert caplog.text.count("WITHOUT CURVE") == 2 * security.REFUSAL_LOG_BURST
