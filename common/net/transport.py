"""ZeroMQ endpoints. The RX binds a ROUTER (many TX sessions); each TX connects a DEALER.

One protocol message per ZeroMQ message (a single frame); the RX reads a
message frame by frame and keeps no frame of one that has several. The TX side never
blocks without a timeout and rebuilds its socket after one (lazy pirate).

The RX never blocks on a send. Its ROUTER has ``ROUTER_MANDATORY`` and a
per-peer send high-water mark (``SNDHWM``), and every reply is sent with
``NOBLOCK``: a reply that cannot be queued is dropped at once and
:meth:`RxSocket.send` raises a :class:`ReplyDropped` saying why --
:class:`PeerGone` (the TX disconnected) or :class:`PeerNotReading` (the TX
left ``send_hwm`` replies unread). One TX that stops reading therefore costs
at most ``send_hwm`` queued replies (plus the kernel's socket buffer) and
never stalls the others. ``SNDHWM`` counts messages, not bytes: a reply of
:data:`LARGE_REPLY_BYTES` or more is also counted in bytes per key (the
sender's CURVE key; on a plain socket its connection) from the moment it is
queued until libzmq has taken it off the queue (written it to the
connection, or dropped it with the connection), through a ZeroMQ message
tracker on a zero-copy frame; a large reply that would take its key past
``max_reply_bytes_per_key`` is refused (:class:`RepliesUnread`), and no
other key's replies are touched. ``MAXMSGSIZE`` makes libzmq drop a
connection whose next message announces more than the RX accepts, before
buffering it, and a small receive high-water mark bounds what the RX buffers
per peer while it is busy. ``LINGER`` is 0: :meth:`RxSocket.close` never waits for a peer.

A :class:`~common.net.monitor.ConnectionMonitor` thread (its own module) reads the RX socket's monitor and logs,
with the peer's address and rate-limited, every connection that ends without
a handshake -- in particular an unauthenticated (plain / NULL mechanism)
client of a CURVE RX, which libzmq refuses before the allow-list is asked.
"""

from __future__ import annotations

import errno
import time
from collections import Counter

import zmq
from zmq.utils.monitor import recv_monitor_message

from common.net.monitor import ConnectionMonitor, open_monitor
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
# libzmq decrypts (CURVE) and decodes a frame in one go on the connection's I/O thread; with one thread, another
# TX's message waited behind a 50 MB frame's decryption (tens of ms). Connections are spread over the threads.
RX_IO_THREADS = 2
# replies from this size on are sent zero-copy and counted in bytes per key until libzmq takes them; smaller ones
# are copied into libzmq (pyzmq's zmq.COPY_THRESHOLD) and bounded by SEND_HWM in number (64 x 64 KiB per connection)
LARGE_REPLY_BYTES = 64 * 1024
# large replies queued per key (CURVE key; plain socket: connection) and not yet taken by its connections: 190 of
# slf's 171 kB decoder downloads, 3 fed-lora plans at their 8 MiB limit; a reply is always queued when none is
MAX_REPLY_BYTES_PER_KEY = 32 * 2**20
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


class RepliesUnread(ReplyDropped):
    """The reply's key already has large replies queued that its connections have not taken, and this one
    would pass ``max_reply_bytes_per_key``; the connection stays (it is reading, just not fast enough, or
    not at all). :attr:`queued_bytes`: what the key has queued."""

    reason = "replies_unread"

    def __init__(self, peer: bytes, detail: str, queued_bytes: int):
        super().__init__(peer, detail)
        self.queued_bytes = queued_bytes


class RxSocket:
    """ROUTER bound at ``address`` (e.g. ``tcp://0.0.0.0:5555``).

    ``max_message_bytes``: the protocol's limit per message (``DecodeLimits``);
    ZeroMQ drops connections that announce more than :func:`max_wire_bytes`
    of it. ``context``: default the process's shared one, which gets
    :data:`RX_IO_THREADS` I/O threads when this socket is its first user (as
    in the RX daemons). ``send_hwm`` / ``recv_hwm``: messages queued per peer outbound /
    inbound. ``max_reply_bytes_per_key``: bytes of large replies (:data:`LARGE_REPLY_BYTES` and up) one
    key may have queued and not yet taken (:meth:`send`). :attr:`dropped` counts dropped replies by reason;
    :attr:`freed_reply_bytes`: bytes of large replies libzmq let go of since the daemon last reset it (the
    memory to give back).
    """

    def __init__(self, address: str, max_message_bytes: int, context: zmq.Context | None = None,
                 security: RxSecurity | None = None, *, send_hwm: int = SEND_HWM,
                 recv_hwm: int = RECV_HWM, max_reply_bytes_per_key: int = MAX_REPLY_BYTES_PER_KEY):
        if min(max_message_bytes, send_hwm, recv_hwm, max_reply_bytes_per_key) <= 0:
            raise ValueError(f"RxSocket needs positive limits, got max_message_bytes={max_message_bytes}, "
                             f"send_hwm={send_hwm}, recv_hwm={recv_hwm}, "
                             f"max_reply_bytes_per_key={max_reply_bytes_per_key}")
        self._ctx = context or zmq.Context.instance(io_threads=RX_IO_THREADS)
        self.security = security or RxSecurity()
        self.max_message_bytes = int(max_message_bytes)
        self.maxmsgsize = max_wire_bytes(max_message_bytes)
        self.send_hwm = send_hwm
        self.max_reply_bytes_per_key = int(max_reply_bytes_per_key)
        self.dropped: Counter[str] = Counter()
        self._queued: dict[str | bytes, list[tuple[zmq.MessageTracker, int]]] = {}  # key -> large replies queued
        self._queued_bytes: dict[str | bytes, int] = {}
        self.freed_reply_bytes = 0
        self._next_reap = 0.0
        self.auth: AllowListAuthenticator | None = None
        self.monitor: ConnectionMonitor | None = None
        self._next_log_flush = 0.0
        self.last_user_id: str | None = None  # authenticated sender of the last message (see recv)
        self.last_frames = self.last_bytes = 0  # frames and bytes of the last message (see recv_frames)
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

    def recv(self, timeout_ms: int) -> tuple[bytes, list[memoryview]] | None:
        """``(peer identity, frames)`` of the next message, or None after ``timeout_ms``; see :meth:`recv_frames`.

        The frame is a read-only buffer over ZeroMQ's own (not copied);
        :attr:`last_user_id` is then the sender's authenticated identity.
        """
        now = time.monotonic()
        if now >= self._next_log_flush:  # a refusal flood that stopped still gets its summary line
            self._next_log_flush = now + 1.0
            flush_refusal_logs()
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        peer, frames, self.last_user_id = self.recv_frames()
        return peer, [f.buffer for f in frames]

    def recv_frames(self) -> tuple[bytes, list[zmq.Frame], str | None]:
        """``(peer identity, frames, authenticated identity or None)`` of one waiting message, the frames
        as ZeroMQ frames (not copied: a front end forwards them as they are). Call after a poll.

        ``frames`` is the message's one frame, or ``[]`` for a message of
        several: the protocol has none, and they are read and freed one at a
        time, never held together. :attr:`last_frames` and :attr:`last_bytes`
        are the frames and bytes the message had. (libzmq hands over a
        message only once all its frames arrived; each frame is capped by
        ``MAXMSGSIZE``, their number is not.) The identity is the sender's
        CURVE public key (z85) as the ZAP handler admitted it, or None on a
        plain (``--insecure``) socket, where nothing is authenticated.
        """
        peer = self.sock.recv(copy=False)
        frame = part = self.sock.recv(copy=False)  # a ROUTER gives the identity, then at least one frame
        self.last_frames, self.last_bytes = 1, len(frame)
        while part.more:
            frame = None
            part = self.sock.recv(copy=False)
            self.last_frames += 1
            self.last_bytes += len(part)
        user_id = None
        if self.auth is not None:
            try:
                user_id = part.get("User-Id") or None
            except zmq.ZMQError:  # no metadata on this message
                user_id = None
        return peer.bytes, [frame] if frame is not None else [], user_id

    def flush_logs(self) -> None:
        """Once a second: the summary line of a refusal flood that stopped (:meth:`recv` does it itself)."""
        now = time.monotonic()
        if now >= self._next_log_flush:
            self._next_log_flush = now + 1.0
            flush_refusal_logs()

    def send(self, peer: bytes, frame, key: str | None = None) -> None:
        """Queue ``frame`` (bytes or a ZeroMQ frame) for ``peer`` without blocking, or raise
        :class:`ReplyDropped` (nothing queued).

        ``key``: whose reply it is, the sender's CURVE key (None: the connection ``peer``, as on a plain
        socket). A frame of :data:`LARGE_REPLY_BYTES` or more is sent zero-copy and tracked until libzmq
        takes it; it is refused with :class:`RepliesUnread` when ``key`` already has large replies queued
        and this one would take them past ``max_reply_bytes_per_key`` (with none queued it always goes: a
        key holds at most the cap, or one reply larger than it).
        """
        nbytes = len(frame)
        if nbytes < LARGE_REPLY_BYTES:
            self._send(peer, frame, copy=not isinstance(frame, zmq.Frame))
            return
        key = peer if key is None else key
        queued = self.queued_reply_bytes(key)
        if queued and queued + nbytes > self.max_reply_bytes_per_key:
            self.dropped[RepliesUnread.reason] += 1
            raise RepliesUnread(peer, f"its key has {queued} bytes of replies queued and not yet taken; this "
                                      f"{nbytes}-byte reply would pass the {self.max_reply_bytes_per_key}-byte cap "
                                      "(--max-reply-bytes-per-key)", queued)
        tracked = zmq.Frame(frame.buffer if isinstance(frame, zmq.Frame) else frame, track=True, copy=False)
        tracker = self._send(peer, tracked, copy=False, track=True)
        self._queued.setdefault(key, []).append((tracker, nbytes))
        self._queued_bytes[key] = queued + nbytes

    def _send(self, peer: bytes, frame, **kw):
        try:
            return self.sock.send_multipart([peer, frame], flags=zmq.NOBLOCK, **kw)
        except zmq.Again as e:
            self.dropped[PeerNotReading.reason] += 1
            raise PeerNotReading(peer, f"{self.send_hwm} replies already queued and unread") from e
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self.dropped[PeerGone.reason] += 1
                raise PeerGone(peer, "disconnected") from e
            raise

    def queued_reply_bytes(self, key: str | bytes | None = None) -> int:
        """Bytes of large replies of ``key`` (None: of every key) queued and not yet taken by libzmq."""
        keys = list(self._queued) if key is None else [key] if key in self._queued else []
        for k in keys:
            left = [(t, n) for t, n in self._queued[k] if not t.done]
            freed = self._queued_bytes[k] - sum(n for _, n in left)
            self.freed_reply_bytes += freed
            if left:
                self._queued[k] = left
                self._queued_bytes[k] -= freed
            else:
                del self._queued[k], self._queued_bytes[k]
        return sum(self._queued_bytes.values()) if key is None else self._queued_bytes.get(key, 0)

    def reap_replies(self, interval_s: float = 0.1) -> int:
        """At most every ``interval_s``: forget the large replies libzmq has taken (their keys' budgets
        free up, :attr:`freed_reply_bytes` grows); returns the bytes still queued (all keys)."""
        now = time.monotonic()
        if now < self._next_reap or not self._queued:
            return sum(self._queued_bytes.values())
        self._next_reap = now + interval_s
        return self.queued_reply_bytes()

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
        monitor = open_monitor(sock, self._EVENTS)
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
