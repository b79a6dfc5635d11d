"""ZeroMQ endpoints. The RX binds a ROUTER (many TX sessions); each TX connects a DEALER.

One protocol message per ZeroMQ message (a single frame). ``ROUTER_MANDATORY``
makes a reply to a vanished TX an error instead of a silent drop. The TX side
never blocks without a timeout and rebuilds its socket after one (lazy pirate).
"""

from __future__ import annotations

import zmq
from zmq.utils.monitor import recv_monitor_message

from common.net.security import (
    AllowListAuthenticator,
    RxSecurity,
    TxSecurity,
    apply_client,
    apply_server,
)


class PeerGone(RuntimeError):
    """A reply could not be routed: the TX it was for has disconnected."""


class RxSocket:
    """ROUTER bound at ``address`` (e.g. ``tcp://0.0.0.0:5555``)."""

    def __init__(self, address: str, max_message_bytes: int, context: zmq.Context | None = None,
                 security: RxSecurity | None = None):
        self._ctx = context or zmq.Context.instance()
        self.security = security or RxSecurity()
        self.auth: AllowListAuthenticator | None = None
        if self.security.curve:
            self.auth = AllowListAuthenticator(self._ctx, self.security.allow_dir)
            self.auth.start()
        self.sock = self._ctx.socket(zmq.ROUTER)
        apply_server(self.sock, self.security)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        # Larger messages drop the connection inside ZeroMQ; below it, decode() answers ERROR.
        self.sock.setsockopt(zmq.MAXMSGSIZE, 2 * max_message_bytes)
        self.sock.bind(address)
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def recv(self, timeout_ms: int) -> tuple[bytes, list[bytes]] | None:
        """``(peer identity, frames)`` or None after ``timeout_ms``."""
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        peer, *frames = self.sock.recv_multipart(copy=True)
        return peer, frames

    def send(self, peer: bytes, frame: bytes) -> None:
        try:
            self.sock.send_multipart([peer, frame])
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                raise PeerGone(f"peer {peer.hex()} disconnected") from e
            raise

    def close(self) -> None:
        self.sock.close(linger=0)
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
