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
"""

from __future__ import annotations

import time
from collections import Counter

import zmq
from zmq.utils.monitor import recv_monitor_message

from common.net.security import (
    AllowListAuthenticator,
    RxSecurity,
    TxSecurity,
    apply_client,
    apply_server,
    flush_refusal_logs,
)

SEND_HWM = 64  # replies queued per TX before further replies to it are dropped (a TX has <= 2 in flight)
RECV_HWM = 16  # messages buffered per TX while the serving loop is busy (then TCP pushes back)
# libzmq compares MAXMSGSIZE with the frame on the wire: CURVE adds 33 bytes to each message, and a
# little slack lets a frame just over the protocol limit reach decode(), which answers ERROR "oversize".
MAXMSGSIZE_SLACK = 4096


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
            self.sock.bind(address)
        except BaseException:
            self.close()
            raise
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def recv(self, timeout_ms: int) -> tuple[bytes, list[bytes]] | None:
        """``(peer identity, frames)`` or None after ``timeout_ms``.

        :attr:`last_user_id` is then the sender's authenticated identity: its
        CURVE public key (z85) as the ZAP handler admitted it, or None on a
        plain (``--insecure``) socket, where nothing is authenticated.
        """
        if self.auth is not None:
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

    def send(self, peer: bytes, frame: bytes) -> None:
        """Queue ``frame`` for ``peer`` without blocking, or raise :class:`ReplyDropped` (nothing queued)."""
        try:
            self.sock.send_multipart([peer, frame], flags=zmq.NOBLOCK)
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
        self.sock, self._monitor = self._open()

    def _open(self) -> tuple[zmq.Socket, zmq.Socket]:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        apply_client(sock, self.security)
        monitor = sock.get_monitor_socket(self._EVENTS)
        sock.connect(self.address)
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

    def send(self, frame: bytes) -> None:
        self.sock.send(frame, copy=False)

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
