"""The RX's socket loop (:func:`serve`) and how replies leave: a mode's held replies wait in a queue while
other peers are served, large replies go within the sender key's byte budget (:func:`send_replies`), and
freed memory goes back to the system after large messages (:func:`release_sent_replies`).

:meth:`~rx_node.daemon.RxNode.handle_timed` turns a request into replies without a socket; this module is
the only one of the single-process RX that touches one. The multi-process front end
(:mod:`rx_node.workers`) sends its workers' replies with the same :func:`send_replies`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time

from common.learn.process_tuning import release_freed_memory
from common.net.transport import RepliesUnread, ReplyDropped, RxSocket
from common.wire.protocol import Error, encode, request_ids
from rx_node.daemon import PER_PEER, RELEASE_AFTER_BYTES, RxNode
from rx_node.sessions import RxStats

log = logging.getLogger("semalign.rx")


def serve(node: RxNode, sock: RxSocket, stop: threading.Event, max_rounds: int | None = None,
          poll_ms: int = 100) -> RxStats:
    """Answer messages until ``stop`` is set or ``max_rounds`` rounds were answered.

    Replies a mode holds back (an emulated air time, :attr:`Reply.not_before_ns`)
    wait in a queue while other peers are served; after a message larger than
    :data:`RELEASE_AFTER_BYTES` (all its frames), and once large replies that
    left total that much (or the last one left), the freed memory goes back to the system.
    """
    node.warm_up()
    log.info("RX pid %d serving %s on %s", node.pid, ", ".join(sorted(node.halves)), sock.address)
    held: list[tuple[int, int, bytes, str | None, list[bytes]]] = []  # (due ns, order, peer, key, frames), a heap
    order = itertools.count()
    while not stop.is_set() and (max_rounds is None or node.stats.rounds < max_rounds or held):
        wait_ms = poll_ms if not held else max(0, min(poll_ms, (held[0][0] - time.time_ns()) // 1_000_000))
        got = sock.recv(wait_ms) if max_rounds is None or node.stats.rounds < max_rounds else None
        if got is not None:
            peer, frames = got
            key = sock.last_user_id
            replies, hold_ns = node.handle_timed(peer, frames, time.time_ns(), key, sock.last_frames)
            heapq.heappush(held, (hold_ns, next(order), peer, key, replies))
            got = frames = None  # ZeroMQ's buffer of the frame is freed before the memory goes back
            if sock.last_bytes > RELEASE_AFTER_BYTES:
                release_freed_memory()
        elif max_rounds is not None and node.stats.rounds >= max_rounds and held:
            time.sleep(max(0, held[0][0] - time.time_ns()) / 1e9)
        while held and held[0][0] <= time.time_ns():
            _, _, peer, key, replies = heapq.heappop(held)
            _send(node, sock, peer, key, replies)
        release_sent_replies(sock)
    while held:  # stopping: the rounds already answered still reach their TXs (held at most an air time)
        due, _, peer, key, replies = heapq.heappop(held)
        time.sleep(max(0, due - time.time_ns()) / 1e9)
        _send(node, sock, peer, key, replies)
    return node.stats



def release_sent_replies(sock: RxSocket) -> None:
    """Give the memory of the large replies libzmq has let go of back to the system, once they total
    :data:`RELEASE_AFTER_BYTES` or none is left queued (a flood that was read, or whose connections went)."""
    queued = sock.reap_replies()
    if sock.freed_reply_bytes > RELEASE_AFTER_BYTES or (sock.freed_reply_bytes and not queued):
        sock.freed_reply_bytes = 0
        release_freed_memory()


def send_replies(sock: RxSocket, peer: bytes, key: str | None, replies: list, dropped: dict) -> ReplyDropped | None:
    """Queue one request's ``replies`` for ``peer`` (the sender's CURVE ``key``, None on a plain socket); never
    blocks. Returns the drop that ends the connection's part in its sessions (:class:`PeerGone`,
    :class:`PeerNotReading`: the caller detaches it), else None; ``dropped`` counts drops by reason.

    A large reply the key has no room for (:class:`RepliesUnread`) is answered ERROR ``replies_unread`` in its
    place (its session and seq; not round-final), and the request's later replies (the CHANNEL of a final
    one) go with it: a re-sent request is answered from the replay record, all of it. The connection stays.
    """
    for reply in replies:
        try:
            sock.send(peer, reply, key)
        except RepliesUnread as e:
            dropped[e.reason] = dropped.get(e.reason, 0) + 1
            log.warning("%s; answering ERROR replies_unread instead", e, extra=PER_PEER)
            ids = request_ids(reply)
            if ids is None:
                return None
            _, sid, seq = ids
            refusal = encode(Error(sid, seq, "replies_unread", f"reply ({ids[0]}) not sent: {e}; read your "
                                                                "replies, then send the request again"))
            try:
                sock.send(peer, refusal)
            except ReplyDropped as gone:
                dropped[gone.reason] = dropped.get(gone.reason, 0) + 1
                return gone
            return None
        except ReplyDropped as e:  # the peer left or stopped reading: never block the others
            dropped[e.reason] = dropped.get(e.reason, 0) + 1
            return e
    return None


def _send(node: RxNode, sock: RxSocket, peer: bytes, key: str | None, replies: list[bytes]) -> None:
    gone = send_replies(sock, peer, key, replies, node.stats.replies_dropped)
    if gone is not None:
        log.warning("%s; detaching the connection from its sessions", gone, extra=PER_PEER)
        node.drop_peer(peer)
