"""ZeroMQ endpoints. The RX binds a ROUTER (many TX sessions); each TX connects a DEALER.

One protocol message per ZeroMQ message (a single frame). The TX side never
blocks without a timeout and rebuilds its socket after one (lazy pirate).

The RX never blocks on a send. Its ROUTER has ``ROUTER_MANDATORY`` and a
per-peer send high-water mark (``SNDHWM``), and every reply is sent with
``NOBLOCK``: a reply that cannot be queued is dropped at once and
:meth:`RxSocket.send` raises a :class:`ReplyDropped` saying why --
:class:`PeerGone` (the TX disconnected) or :class:`PeerNotReading` (the TX
left ``send_hwm`` replies unread). One TX that stops reading therefore costs
at most ``send_hwm`` queued replies (plus the kernel's socket buffer) and
never stalls the others. ``MAXMSGSIZE`` makes libzmq drop a connection whose
next message announces more than the RX accepts, before buffering it, and a
small receive high-water mark bounds what the RX buffers per peer while it is
busy. ``LINGER`` is 0: :meth:`RxSocket.close` never waits for a peer.

A :class:`ConnectionMonitor` thread reads the RX socket's monitor and logs,
with the peer's address and rate-limited, every connection that ends without
a handshake -- in particular an unauthenticated (plain / NULL mechanism)
client of a CURVE RX, which libzmq refuses before the allow-list is asked.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import threading
import time
from collections import Counter, OrderedDict, deque

import zmq
from zmq.utils.monitor import recv_monitor_message

from common.net.security import (
    PER_CONNECTION,
    AllowListAuthenticator,
    RxSecurity,
    TxSecurity,
    apply_client,
    apply_server,
    flush_refusal_logs,
)
from common.net.security import log as security_log

_MONITORS = itertools.count()


def monitor_address() -> str:
    """A fresh inproc endpoint for a socket monitor. pyzmq's default names it after the socket's file
    descriptor, which a new socket may reuse while libzmq still holds the old monitor's endpoint
    ("Address already in use" on a TX socket opened right after another one was dropped)."""
    return f"inproc://semalign-monitor-{os.getpid()}-{next(_MONITORS)}"


SEND_HWM = 64  # replies queued per TX before further replies to it are dropped (a TX has <= 2 in flight)
RECV_HWM = 16  # messages buffered per TX while the serving loop is busy (then TCP pushes back)
# libzmq compares MAXMSGSIZE with the frame on the wire: CURVE adds 33 bytes to each message, and a
# little slack lets a frame just over the protocol limit reach decode(), which answers ERROR "oversize".
MAXMSGSIZE_SLACK = 4096


def check_endpoint(address: str, option: str) -> None:
    """ValueError naming ``option`` unless ``address`` is a ZeroMQ endpoint whose TCP port is in range.

    libzmq takes ``tcp://127.0.0.1:99999`` without complaint (it binds another
    port); every other malformed address is refused by libzmq itself and
    reported by :func:`endpoint_error`.
    """
    if not isinstance(address, str) or "://" not in address:
        raise ValueError(f"--{option} {address}: not a ZeroMQ address; write tcp://HOST:PORT, "
                         f"e.g. tcp://127.0.0.1:5555")
    scheme, rest = address.split("://", 1)
    if scheme == "tcp":
        port = rest.rsplit(":", 1)[-1] if ":" in rest else ""
        if port != "*" and not (port.isdigit() and 0 <= int(port) <= 65535):
            raise ValueError(f"--{option} {address}: the port must be a number from 1 to 65535; "
                             f"write tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")


def endpoint_error(address: str, option: str, e: zmq.ZMQError) -> ValueError:
    """A one-line ValueError for a bind/connect of ``address`` that libzmq refused."""
    if e.errno == zmq.EADDRINUSE:
        return ValueError(f"--{option} {address}: the address is already in use (another RX, or another "
                          f"program, listens on that port); stop it or choose another port")
    if e.errno == zmq.EADDRNOTAVAIL:
        return ValueError(f"--{option} {address}: this host has no such address; bind to one of its own "
                          f"addresses, or to tcp://0.0.0.0:PORT for all of them")
    if e.errno == errno.ENODEV:
        return ValueError(f"--{option} {address}: no network interface or address of that name on this host; "
                          f"bind to one of its IP addresses, or to tcp://0.0.0.0:PORT for all of them")
    return ValueError(f"--{option} {address}: not a usable ZeroMQ address ({e.strerror}); write "
                      f"tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")


def max_wire_bytes(max_message_bytes: int) -> int:
    """ZeroMQ ``MAXMSGSIZE`` for a protocol limit of ``max_message_bytes`` per message."""
    return int(max_message_bytes) + MAXMSGSIZE_SLACK


class ReplyDropped(RuntimeError):
    """A reply was not sent and will not be; :attr:`reason` says why (see the subclasses)."""

    reason = "dropped"

    def __init__(self, peer: bytes, detail: str):
        super().__init__(f"reply to peer {peer.hex()} dropped ({self.reason}): {detail}")
        self.peer = peer


class PeerGone(ReplyDropped):
    """A reply could not be routed: the TX it was for has disconnected."""

    reason = "peer_gone"


class PeerNotReading(PeerGone):
    """The TX has ``send_hwm`` replies queued and unread: it stopped reading (or reads too slowly).

    A subclass of :class:`PeerGone` so that code written for disconnects
    (``except PeerGone``: drop the peer's session) also covers this case;
    tell them apart with ``isinstance`` or :attr:`reason`.
    """

    reason = "peer_not_reading"


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
        self._mon = sock.get_monitor_socket(self.EVENTS, monitor_address())  # made here; read in run()
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


class RxSocket:
    """ROUTER bound at ``address`` (e.g. ``tcp://0.0.0.0:5555``).

    ``max_message_bytes``: the protocol's limit per message (``DecodeLimits``);
    ZeroMQ drops connections that announce more than :func:`max_wire_bytes`
    of it. ``send_hwm`` / ``recv_hwm``: messages queued per peer outbound /
    inbound. :attr:`dropped` counts dropped replies by reason.
    """

    def __init__(self, address: str, max_message_bytes: int, context: zmq.Context | None = None,
                 security: RxSecurity | None = None, *, send_hwm: int = SEND_HWM,
                 recv_hwm: int = RECV_HWM):
        if max_message_bytes <= 0 or send_hwm <= 0 or recv_hwm <= 0:
            raise ValueError(f"RxSocket needs positive limits, got max_message_bytes={max_message_bytes}, "
                             f"send_hwm={send_hwm}, recv_hwm={recv_hwm}")
        self._ctx = context or zmq.Context.instance()
        self.security = security or RxSecurity()
        self.max_message_bytes = int(max_message_bytes)
        self.maxmsgsize = max_wire_bytes(max_message_bytes)
        self.send_hwm = send_hwm
        self.dropped: Counter[str] = Counter()
        self.auth: AllowListAuthenticator | None = None
        self.monitor: ConnectionMonitor | None = None
        self._next_log_flush = 0.0
        self.last_user_id: str | None = None  # authenticated sender of the last message (see recv)
        if self.security.curve:
            self.auth = AllowListAuthenticator(self._ctx, self.security.allow_dir)
            self.auth.start()
        self.sock = self._ctx.socket(zmq.ROUTER)
        try:
            apply_server(self.sock, self.security)
            # all before bind: they apply to the connections made afterwards
            self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unknown or full peer: an error, never a silent drop
            self.sock.setsockopt(zmq.SNDHWM, send_hwm)
            self.sock.setsockopt(zmq.RCVHWM, recv_hwm)
            self.sock.setsockopt(zmq.SNDTIMEO, 0)  # sends are NOBLOCK anyway; never wait if one is not
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.MAXMSGSIZE, self.maxmsgsize)
            self.monitor = ConnectionMonitor(self.sock, self.security.curve, self.security.allow_dir)
            self.monitor.start()
            check_endpoint(address, "bind")
            try:
                self.sock.bind(address)
            except zmq.ZMQError as e:
                raise endpoint_error(address, "bind", e) from e
        except BaseException:
            self.close()
            raise
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.address.startswith("tcp://"):
            self.monitor.port = int(self.address.rsplit(":", 1)[1])

    def recv(self, timeout_ms: int) -> tuple[bytes, list[bytes]] | None:
        """``(peer identity, frames)`` or None after ``timeout_ms``.

        :attr:`last_user_id` is then the sender's authenticated identity: its
        CURVE public key (z85) as the ZAP handler admitted it, or None on a
        plain (``--insecure``) socket, where nothing is authenticated.
        """
        now = time.monotonic()
        if now >= self._next_log_flush:  # a refusal flood that stopped still gets its summary line
            self._next_log_flush = now + 1.0
            flush_refusal_logs()
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        peer, *parts = self.sock.recv_multipart(copy=False)
        self.last_user_id = None
        if self.auth is not None and parts:
            try:
                self.last_user_id = parts[-1].get("User-Id") or None
            except zmq.ZMQError:  # no metadata on this message
                self.last_user_id = None
        return peer.bytes, [p.bytes for p in parts]

    def recv_frames(self) -> tuple[bytes, list[zmq.Frame], str | None]:
        """``(peer identity, frames, authenticated identity or None)`` of one waiting message, the frames
        as ZeroMQ frames (not copied: a front end forwards them as they are). Call after a poll."""
        peer, *parts = self.sock.recv_multipart(copy=False)
        user_id = None
        if self.auth is not None and parts:
            try:
                user_id = parts[-1].get("User-Id") or None
            except zmq.ZMQError:  # no metadata on this message
                user_id = None
        return peer.bytes, parts, user_id

    def flush_logs(self) -> None:
        """Once a second: the summary line of a refusal flood that stopped (:meth:`recv` does it itself)."""
        now = time.monotonic()
        if now >= self._next_log_flush:
            self._next_log_flush = now + 1.0
            flush_refusal_logs()

    def send(self, peer: bytes, frame) -> None:
        """Queue ``frame`` (bytes or a ZeroMQ frame) for ``peer`` without blocking, or raise
        :class:`ReplyDropped` (nothing queued)."""
        try:
            self.sock.send_multipart([peer, frame], flags=zmq.NOBLOCK, copy=not isinstance(frame, zmq.Frame))
        except zmq.Again as e:
            self.dropped[PeerNotReading.reason] += 1
            raise PeerNotReading(peer, f"{self.send_hwm} replies already queued and unread") from e
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self.dropped[PeerGone.reason] += 1
                raise PeerGone(peer, "disconnected") from e
            raise

    def close(self) -> None:
        """Close at once (LINGER 0: queued replies are discarded); safe to call twice."""
        sock = getattr(self, "sock", None)
        if self.monitor is not None and sock is not None and not sock.closed:
            self.monitor.stop()  # before the socket: the monitor thread reads until libzmq stops it
        if sock is not None and not sock.closed:
            sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


class TxSocket:
    """DEALER connected to the RX; :meth:`reset` rebuilds it after a timeout.

    A socket monitor counts connection drops (:attr:`disconnects`, e.g. the RX
    process died) and refused CURVE handshakes (:attr:`auth_failures`), so the
    TX can stop waiting for a reply that cannot come.
    """

    _EVENTS = (zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
               | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

    def __init__(self, address: str, context: zmq.Context | None = None,
                 security: TxSecurity | None = None):
        self._ctx = context or zmq.Context.instance()
        self.address = address
        self.security = security or TxSecurity()
        self.disconnects = 0
        self.auth_failures = 0
        self.unsent = 0
        self.sock, self._monitor = self._open()

    def _open(self) -> tuple[zmq.Socket, zmq.Socket]:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        apply_client(sock, self.security)
        monitor = sock.get_monitor_socket(self._EVENTS, monitor_address())
        try:
            check_endpoint(self.address, "connect")
            sock.connect(self.address)
        except (ValueError, zmq.ZMQError) as e:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
            if isinstance(e, zmq.ZMQError):
                raise endpoint_error(self.address, "connect", e) from e
            raise
        return sock, monitor

    def poll_events(self) -> None:
        """Drain the monitor: update :attr:`disconnects` and :attr:`auth_failures`."""
        while self._monitor.poll(0, zmq.POLLIN):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_DISCONNECTED:
                self.disconnects += 1
            elif event & (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                          | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self.auth_failures += 1

    def _close_socket(self) -> None:
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self.sock.close(linger=0)

    def send(self, frame: bytes) -> bool:
        """Queue ``frame`` for the RX without blocking; False when it could not be queued.

        A DEALER whose connection was refused (a CURVE handshake the RX turned
        down) has no peer to queue to, and a blocking send would then wait
        forever; instead the frame is dropped (:attr:`unsent` counts them) and
        the caller's wait for a reply times out as for a lost message.
        """
        try:
            self.sock.send(frame, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            self.unsent += 1
            self.poll_events()
            return False

    def recv(self, timeout_ms: int) -> bytes | None:
        """One frame or None after ``timeout_ms``; extra frames of one message are joined off."""
        got = self.sock.poll(timeout_ms, zmq.POLLIN)
        self.poll_events()
        if not got:
            return None
        return self.sock.recv_multipart()[0]

    def reset(self) -> None:
        """Drop queued messages and reconnect (after a lost reply)."""
        self._close_socket()
        self.sock, self._monitor = self._open()

    def close(self) -> None:
        self._close_socket()
