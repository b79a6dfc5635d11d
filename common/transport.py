"""ZeroMQ endpoints. The RX binds a ROUTER (many TX sessions); each TX connects a DEALER.

One protocol message per ZeroMQ message (a single frame). ``ROUTER_MANDATORY``
makes a reply to a vanished TX an error instead of a silent drop. The TX side
never blocks without a timeout and rebuilds its socket after one (lazy pirate).
"""

from __future__ import annotations

import zmq


class PeerGone(RuntimeError):
    """A reply could not be routed: the TX it was for has disconnected."""


class RxSocket:
    """ROUTER bound at ``address`` (e.g. ``tcp://0.0.0.0:5555``)."""

    def __init__(self, address: str, max_message_bytes: int, context: zmq.Context | None = None):
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.ROUTER)
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


class TxSocket:
    """DEALER connected to the RX; :meth:`reset` rebuilds it after a timeout."""

    def __init__(self, address: str, context: zmq.Context | None = None):
        self._ctx = context or zmq.Context.instance()
        self.address = address
        self.sock = self._open()

    def _open(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        return sock

    def send(self, frame: bytes) -> None:
        self.sock.send(frame, copy=False)

    def recv(self, timeout_ms: int) -> bytes | None:
        """One frame or None after ``timeout_ms``; extra frames of one message are joined off."""
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        return self.sock.recv_multipart()[0]

    def reset(self) -> None:
        """Drop queued messages and reconnect (after a lost reply)."""
        self.sock.close(linger=0)
        self.sock = self._open()

    def close(self) -> None:
        self.sock.close(linger=0)
