"""A socket monitor that nobody reads never blocks libzmq.

libzmq writes monitor events with a blocking send; behind pyzmq's ``get_monitor_socket`` the queue holds
1000 messages, after which the thread reporting an event (for a connection's events, the context's I/O
thread) blocks for good: no socket of the context connects again, none is reaped, and ``zmq_socket`` ends
in EMFILE. A CI run failed 36 tests that way (a stuck I/O thread, seen in gdb on a fresh clone: blocked in
``zmq_msg_send`` to a monitor) after a test left an idle TX socket whose connection kept failing.
Counted in events, not seconds: the wait is generous and ends when the events are all sent.
"""

from __future__ import annotations

import threading

import zmq

from common.net.monitor import open_monitor
from common.net.transport import TxSocket

EVENTS = 3000  # bind + unbind cycles, two events each: six times the 1000-message queue


def test_an_unread_monitor_takes_every_event_without_blocking():
    ctx = zmq.Context()  # its own: were a thread blocked, the suite's shared context stays untouched
    sock = ctx.socket(zmq.ROUTER)
    mon = open_monitor(sock, zmq.EVENT_LISTENING | zmq.EVENT_CLOSED)
    done = threading.Event()

    def cycle():
        for _ in range(EVENTS):
            sock.bind("tcp://127.0.0.1:0")
            sock.unbind(sock.getsockopt(zmq.LAST_ENDPOINT))
        done.set()

    thread = threading.Thread(target=cycle, daemon=True)
    thread.start()
    assert done.wait(300), "the monitor's queue filled and blocked the thread that reports events"
    got = 0  # the CLOSED events come from the I/O thread, after unbind returns: wait for the last ones
    while got < 2 * EVENTS and mon.poll(30_000):
        mon.recv_multipart()
        got += 1
    assert got == 2 * EVENTS  # every event kept, none dropped
    assert not mon.poll(100)  # and no more than those
    sock.disable_monitor()
    mon.close(0)
    sock.close(0)
    ctx.term()


def test_the_tx_socket_monitor_has_no_queue_limit():
    ctx = zmq.Context()
    tx = TxSocket("tcp://127.0.0.1:9", ctx)
    try:
        assert tx._monitor.getsockopt(zmq.RCVHWM) == 0
    finally:
        tx.close()
        ctx.term()
