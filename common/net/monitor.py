"""Connection monitoring of the RX's ROUTER: the connections that end without a completed handshake.

Split out of :mod:`common.net.transport` (issue 16): :class:`ConnectionMonitor`
reads a socket's monitor in a thread and logs, with the peer's address and
rate-limited, every connection that ends without a handshake -- in
particular an unauthenticated (plain / NULL mechanism) client of a CURVE
RX, which libzmq refuses before the allow-list is asked.
:func:`monitor_address` names fresh inproc endpoints for socket monitors, and :func:`open_monitor`
opens one that can never block libzmq's I/O thread.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections import OrderedDict, deque

import zmq
from zmq.utils.monitor import recv_monitor_message

from common.net.security import PER_CONNECTION
from common.net.security import log as security_log

_MONITORS = itertools.count()


def monitor_address() -> str:
    """A fresh inproc endpoint for a socket monitor. pyzmq's default names it after the socket's file
    descriptor, which a new socket may reuse while libzmq still holds the old monitor's endpoint
    ("Address already in use" on a TX socket opened right after another one was dropped)."""
    return f"inproc://semalign-monitor-{os.getpid()}-{next(_MONITORS)}"



def open_monitor(sock: zmq.Socket, events: int) -> zmq.Socket:
    """Start ``sock``'s monitor for ``events`` and return the PAIR socket that reads it, with no queue limit.

    libzmq writes each event to the monitor with a blocking send, from the thread that caused it (for a
    connection's events: the context's I/O thread). With pyzmq's ``get_monitor_socket`` the queue holds
    1000 messages, so a monitor nobody reads for a while (a TX socket left idle while its connection keeps
    failing its handshake: a few events a second) blocks that I/O thread for good, and with it every socket
    of the context: none connects, none is reaped, and at 1023 sockets ``zmq_socket`` fails with EMFILE
    ("Too many open files"). ``RCVHWM`` 0, set before the PAIR connects, makes the queue unbounded; an
    event is a few dozen bytes, and the readers drain them."""
    address = monitor_address()
    sock.monitor(address, events)
    mon = sock.context.socket(zmq.PAIR)
    mon.setsockopt(zmq.RCVHWM, 0)
    mon.setsockopt(zmq.LINGER, 0)
    mon.connect(address)
    return mon


def _peer_of(fd: int) -> str | None:
    """``HOST:PORT`` of the TCP peer on file descriptor ``fd`` of this process, or None."""
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    try:
        s = socket.socket(fileno=dup)
    except (OSError, ValueError):  # not a socket (the number was closed and re-used for a file)
        os.close(dup)
        return None
    try:
        with s:
            peer = s.getpeername()
    except (OSError, ValueError):
        return None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
    return str(peer) or None


_CLOSED_BY_US = {"04", "05", "06", "0B"}  # /proc/net/tcp states FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSING


def _proc_addr(text: str) -> tuple[str, int]:
    """``(host, port)`` of a /proc/net/tcp[6] address field (hex, each 32-bit word in host order)."""
    host_hex, port_hex = text.split(":")
    raw = bytes.fromhex(host_hex)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    host = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:"):]
    return host, int(port_hex, 16)


def _closed_by_us(port: int) -> set[str]:
    """``HOST:PORT`` of the TCP connections on local ``port`` that this host closed first (they linger in
    FIN_WAIT/TIME_WAIT for a minute); empty where /proc/net/tcp is not there (not Linux)."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 4 or f[3] not in _CLOSED_BY_US:
                continue
            try:
                (_, lport), (rhost, rport) = _proc_addr(f[1]), _proc_addr(f[2])
            except (ValueError, OSError):
                continue
            if lport == port:
                found.add(f"[{rhost}]:{rport}" if ":" in rhost else f"{rhost}:{rport}")
    return found


_PROTOCOL_ERRORS = {getattr(zmq, n): n[len("PROTOCOL_ERROR_"):] for n in dir(zmq) if n.startswith("PROTOCOL_ERROR_")}
UNKNOWN_PEER = "an unknown address (the connection closed before it could be read)"


class ConnectionMonitor(threading.Thread):
    """Logs the connections to the RX that end without a completed handshake, with the peer's address.

    A plain (NULL mechanism) or PLAIN client that connects to a CURVE RX is
    refused by libzmq during the ZMTP greeting, before any ZAP request, so the
    allow-list never sees it; this thread reads the ROUTER's socket monitor
    and logs it (``unauthenticated connection from HOST:PORT refused``) with
    the other handshake failures (a broken CURVE handshake, a peer that never
    completes one). Refusals of unknown CURVE keys are logged by the ZAP
    handler (:class:`common.net.security.AllowListAuthenticator`). The lines
    go to the ``semalign.security`` logger marked per connection, so they are
    rate-limited like the ZAP refusals (``REFUSAL_LOG_BURST`` per
    ``REFUSAL_LOG_WINDOW_S`` and template, then one summary line).

    The peer address is read from the connection's file descriptor when the
    ``ACCEPTED`` event arrives. A refused handshake often closes it before
    that (microseconds); then, on Linux, the address comes from the kernel's
    table of connections this host closed on the RX's port (``/proc/net/tcp``,
    where they linger for a minute) when exactly one there is not yet
    accounted for (several from one host: that host, port unknown). Otherwise
    the line says :data:`UNKNOWN_PEER` rather than guess. The thread drains the
    monitor at once (libzmq's I/O thread blocks on a full monitor queue) and
    ends with the socket's monitor (:meth:`stop`, from the socket's thread).
    Counters: :attr:`unauthenticated` (on a CURVE RX: every connection that
    ended without authenticating, the ZAP handler's refusals aside),
    :attr:`failed_handshakes`.
    """

    SCANS_PER_WINDOW = 20  # reads of /proc/net/tcp per window at most
    SCAN_WINDOW_S = 10.0
    EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
              | zmq.EVENT_MONITOR_STOPPED)

    def __init__(self, sock: zmq.Socket, curve: bool, allow_dir=None):
        super().__init__(name="rx-connection-monitor", daemon=True)
        self._sock = sock
        self._mon = open_monitor(sock, self.EVENTS)  # made here; read in run()
        self.curve = curve
        self.allow_dir = allow_dir
        self.unauthenticated = 0
        self.failed_handshakes = 0
        self._peers: dict[int, str | None] = {}
        self._failure: tuple[int, int] | None = None  # (event, value) waiting for its DISCONNECTED
        self._stopped = False
        self.port: int | None = None  # the RX's TCP port, set once bound (for the /proc fall-back)
        self._reported: OrderedDict[str, None] = OrderedDict()  # peers already named in a line
        self._scan_window, self._scans = 0.0, 0

    def stop(self, timeout_s: float = 2.0) -> None:
        """End the monitor (call from the socket's own thread, before closing it) and the thread."""
        if not self._stopped:
            self._stopped = True
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
        if self.is_alive():
            self.join(timeout_s)

    def _drain(self, pending: deque) -> None:
        while self._mon.poll(0, zmq.POLLIN):
            pending.append(recv_monitor_message(self._mon))

    def run(self) -> None:
        pending: deque = deque()
        try:
            while True:
                if not pending:
                    ev = recv_monitor_message(self._mon)  # blocks until an event
                    if ev["event"] == zmq.EVENT_ACCEPTED:  # look the peer up first: the race is against a close
                        ev["peer"] = _peer_of(ev["value"])
                    pending.append(ev)
                self._drain(pending)
                ev = pending.popleft()
                if ev["event"] == zmq.EVENT_MONITOR_STOPPED:
                    break
                self._on(ev, pending)
        except zmq.ZMQError:  # context terminated
            pass
        finally:
            self._mon.close(linger=0)

    def _on(self, ev: dict, pending: deque) -> None:
        event, value = ev["event"], ev["value"]
        if event == zmq.EVENT_ACCEPTED:
            # The descriptor may be closed already (a refused handshake takes microseconds): then the
            # look-up fails, or -- if libzmq accepted another connection on the same number -- finds
            # that one, whose ACCEPTED event is then queued behind: in that case the address is unknown.
            peer = ev["peer"] if "peer" in ev else _peer_of(value)
            self._drain(pending)
            if any(e["event"] == zmq.EVENT_ACCEPTED and e["value"] == value for e in pending):
                peer = None
            self._peers[value] = peer
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                       zmq.EVENT_HANDSHAKE_FAILED_AUTH):
            self._failure = (event, value)  # the next DISCONNECTED is this connection's (one I/O thread)
        elif event == zmq.EVENT_DISCONNECTED:
            peer = self._peers.pop(value, None)
            failure, self._failure = self._failure, None
            if failure is None:
                return
            if failure[0] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # the ZAP handler logged it, with its key
                if peer is None and self._may_scan():
                    self._closed_peer()  # account for its entry, so it is never named for another
                return
            self._report(peer or (self._closed_peer() if self._may_scan() else UNKNOWN_PEER), *failure)

    def _may_scan(self) -> bool:
        """At most ``SCANS_PER_WINDOW`` reads of the kernel's table per ``SCAN_WINDOW_S``: under a flood
        the lines are suppressed anyway, and the thread must keep up with libzmq's events."""
        now = time.monotonic()
        if now - self._scan_window > self.SCAN_WINDOW_S:
            self._scan_window, self._scans = now, 0
        self._scans += 1
        return self._scans <= self.SCANS_PER_WINDOW

    def _closed_peer(self) -> str:
        """The peer of a connection just closed, from the kernel's table (see the class docstring)."""
        if self.port is None:
            return UNKNOWN_PEER
        fresh = sorted(_closed_by_us(self.port) - set(self._reported))
        if len(fresh) == 1:
            self._remember(fresh[0])
            return fresh[0]
        hosts = {p.rsplit(":", 1)[0] for p in fresh}
        if len(hosts) == 1:
            self._remember(*fresh)  # all of them are this host's: do not name them again
            return f"{hosts.pop()} (port unknown)"
        return UNKNOWN_PEER

    def _remember(self, *peers: str) -> None:
        for p in peers:
            self._reported[p] = None
            self._reported.move_to_end(p)
        while len(self._reported) > 8192:  # a minute of a flood; older ones have left TIME_WAIT
            self._reported.popitem(last=False)

    def _report(self, peer: str, event: int, value: int) -> None:
        """Log a failed handshake (refused CURVE keys are the ZAP handler's: not here)."""
        if peer != UNKNOWN_PEER and not peer.endswith("(port unknown)"):
            self._remember(peer)
        self.failed_handshakes += 1
        mismatch = event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            detail = _PROTOCOL_ERRORS.get(value, hex(value))
        else:
            detail = os.strerror(value) if 0 < value < 4096 else hex(value)
        if self.curve:  # whatever went wrong, the peer never authenticated
            self.unauthenticated += 1
            why = ("it did not use CURVE (a plain --insecure or PLAIN client)" if mismatch else
                   f"its CURVE handshake failed ({detail})" if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL else
                   f"it ended before completing the CURVE handshake ({detail})")
            security_log.warning("unauthenticated connection from %s refused: %s; only TXs with a CURVE key in %s "
                                 "are served", peer, why, self.allow_dir, extra=PER_CONNECTION)
        elif mismatch:
            security_log.warning("connection from %s refused: it asked for CURVE, but this RX runs --insecure "
                                 "(plain TCP); start the RX with CURVE keys or the TX with --insecure", peer,
                                 extra=PER_CONNECTION)
        else:
            security_log.info("connection from %s closed before completing a handshake (%s)", peer, detail,
                              extra=PER_CONNECTION)
