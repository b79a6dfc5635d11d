"""ZeroMQ hygiene for the suite: each test module closes its sockets, and one module's leak cannot
starve the modules after it.

libzmq gives a context at most ``ZMQ_MAX_SOCKETS`` (1023) sockets, and a closed socket frees its slot
only once libzmq's reaper thread has ended it. Most tests share ``zmq.Context.instance()``, so a module
that leaves sockets behind makes every later ``zmq_socket()`` fail with EMFILE ("Too many open
files"): a CI run failed 36 tests that way, all after one point, none of them at fault.

After each module (its module-scoped fixtures torn down) this plugin

- names the sockets made during the module that are still open (with the test that made each), and
- checks that the shared context still has :data:`SLOTS_WANTED` free sockets; where it has not, it
  reports that, and the modules after it get a fresh ``zmq.Context.instance()`` (the old one is left
  to its reaper, never terminated: a leaked socket could block that forever).

Both go to the end of the run's summary, so a CI log names the module to fix while the run goes on.
"""

from __future__ import annotations

import resource
import time
import weakref

import pytest
import zmq

SLOTS_WANTED = 256  # free sockets the shared context must have between modules
_REAP_WAIT_S = (0.05, 0.2, 1.0)  # closed sockets free their slots when the reaper gets to them

_made: "weakref.WeakKeyDictionary[zmq.Socket, str]" = weakref.WeakKeyDictionary()
_current = {"test": "(collection)"}
_reports: list[str] = []


def _raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: the suite runs RXs, TXs and their monitors in one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _free_slots(ctx: zmq.Context, limit: int) -> int:
    """How many sockets ``ctx`` can still make, counted up to ``limit`` (the probes are closed again)."""
    made = []
    try:
        while len(made) < limit:
            made.append(ctx.socket(zmq.PAIR))
    except zmq.ZMQError:
        pass
    finally:
        for s in made:
            s.close(linger=0)
    return len(made)


def pytest_configure(config):
    _raise_open_files_limit()
    original = zmq.Context.socket

    def socket(self, *args, **kwargs):
        sock = original(self, *args, **kwargs)
        _made[sock] = _current["test"]
        return sock

    zmq.Context.socket = socket


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current["test"] = item.nodeid
    yield
    if nextitem is not None and nextitem.module is item.module:
        return
    module = item.nodeid.split("::")[0]
    left = sorted({test for sock, test in list(_made.items()) if not sock.closed and test != "(collection)"
                   and test.split("::")[0] == module})
    if left:
        _reports.append(f"{module}: ZeroMQ sockets left open, made by {', '.join(left)}")
    ctx = zmq.Context.instance()
    for wait_s in _REAP_WAIT_S:
        free = _free_slots(ctx, SLOTS_WANTED)
        if free >= SLOTS_WANTED:
            return
        time.sleep(wait_s)
    _reports.append(f"{module}: the shared ZeroMQ context had {free} free sockets of {ctx.get(zmq.MAX_SOCKETS)} "
                    "after it (sockets not closed, or not yet reaped); later modules get a fresh context")
    zmq.Context._instance = None  # the next instance() makes a new context; the old one keeps its sockets


def pytest_terminal_summary(terminalreporter):
    if _reports:
        terminalreporter.section("ZeroMQ hygiene")
        for line in _reports:
            terminalreporter.write_line(line)
