"""Which RX worker serves a TX's frame: the multi-process front end's pin table (:class:`PinTable`).

**Pinning**: sessions are bound to the TX's key, not to its connection
(``docs/protocol.md``, "Sessions"), so the front end pins what survives a
reconnect. Under CURVE it pins the **key** (the ZAP User-Id): the key's
first frame pins it to the worker with the fewest pins active in the last
:data:`PIN_ACTIVE_S`, and every frame of every connection of that key goes
there, so a TX whose network path changed (new connection, same key)
reaches the worker that holds its sessions. On a plain socket it pins the
connection, and the **session id** of every HELLO (read from small frames):
a HELLO for a session a worker holds re-pins its connection to that worker
(the worker then checks the credential). Under CURVE a HELLO for a session
id held on another worker than the key's goes to that worker (not
re-pinned), which refuses another key's HELLO (``session_owner``), as one
process does. A session's rounds, replay record
and per-session state thus stay together. A mode whose RX
state spans sessions with one owner (``Mode.rx_one_owner``: fed-lora's base
station, one federation) has all its sessions pinned to worker 0: the front
end reads the mode of HELLO frames (small msgpack maps) and re-pins (under
CURVE the key: a key's sessions live on one worker).

The table is bounded (:data:`MAX_PINS` routes and session ids, the least recently active forgotten
first) and holds no sockets and no processes.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import zmq

from common.wire.protocol import DecodeLimits, ProtocolError, unpack

MAX_PINS = 65536  # pinned TX keys / connections / session ids remembered (least recently active forgotten first)
PIN_ACTIVE_S = 60.0  # a pinned connection counts towards its worker's load this long after its last frame
HELLO_PEEK_BYTES = 8192  # frames up to this size are read for a HELLO's mode (one-owner modes only)


def peek(frame, limits: DecodeLimits = DecodeLimits()) -> dict | None:
    """The envelope of a request frame (bytes or a buffer) as a dict (``type``, ``session_id``, ``seq``...),
    or None; decoded under ``limits`` as the workers decode it (:func:`~common.wire.protocol.unpack`)."""
    try:
        body = unpack(frame, limits, strict_map_key=False)
    except ProtocolError:
        return None
    return body if isinstance(body, dict) else None


class PinTable:
    """The routes pinned to workers: ``pins`` (a CURVE key, str, or on a plain socket a TX connection,
    bytes -> (worker index, last seen, monotonic s), most recently active last) and ``session_at`` (plain
    socket: a HELLO's session id -> worker index). ``one_owner``: the modes whose sessions all go to
    worker 0; ``limits``: the decode limits a HELLO is peeked under."""

    def __init__(self, one_owner: set[str] = frozenset(), limits: DecodeLimits = DecodeLimits()):
        self.one_owner = set(one_owner)
        self.limits = limits
        # route -> (worker, last seen): a CURVE key (str), or on a plain socket a TX connection (bytes)
        self.pins: OrderedDict[str | bytes, tuple[int, float]] = OrderedDict()
        self.session_at: OrderedDict[int, int] = OrderedDict()  # plain socket: HELLO's session id -> worker

    def active(self, n_slots: int) -> list[int]:
        """Per worker slot (``n_slots`` of them), the pinned TX connections active within :data:`PIN_ACTIVE_S` (a connection a TX
        dropped stays pinned, idle, until forgotten: it must not count against its worker)."""
        counts, cutoff = [0] * n_slots, time.monotonic() - PIN_ACTIVE_S
        for peer in reversed(self.pins):  # most recently active last
            index, seen = self.pins[peer]
            if seen < cutoff:
                break
            counts[index] += 1
        return counts

    def pick(self, workers: list, peer: bytes, frames: list, owner: str | None = None):
        """The worker for a TX's frame: under CURVE the one its key is pinned to, on a plain socket the one
        its connection (or its HELLO's session id) is pinned to; a new route goes to the least loaded of
        ``workers`` (the front end's slots, :class:`~rx_node.worker_pool.WorkerSlot`; None where a slot is empty).
        None when no worker may take it (none ready, or a one-owner mode's worker 0 is not)."""
        target, sid = None, None
        hello = None
        if len(frames) == 1 and len(frames[0]) <= HELLO_PEEK_BYTES:
            body = peek(frames[0].buffer if isinstance(frames[0], zmq.Frame) else frames[0], self.limits)
            if body and body.get("type") == "HELLO":
                hello = body
        if hello is not None and hello.get("mode") in self.one_owner:
            target = 0
        elif hello is not None and isinstance(hello.get("session_id"), int):
            sid = hello["session_id"]
            held = self.session_at.get(sid)  # a worker holds this session id: it decides who may have it
            if held is not None and not (workers[held] and workers[held].ready):
                held = None
            if owner is None:
                target = held  # plain socket: the connection follows its session (the worker checks the credential)
            elif held is not None and held != (self.pins.get(owner) or (None,))[0]:
                return workers[held]  # another key's session id: that worker refuses it (session_owner)
        route = owner if owner is not None else peer
        pinned = self.pins.get(route)
        index = pinned[0] if target is None and pinned else target
        w = workers[index] if index is not None else None
        if w is None or not w.ready:
            ready = [x for x in workers if x.ready]
            if target is not None or not ready:  # a one-owner mode's worker 0 is not ready
                return None
            active = self.active(len(workers))
            # fewest active pins; on a tie not worker 0 when it carries a one-owner mode (the federation)
            w = min(ready, key=lambda x: (active[x.index], x.index == 0 and bool(self.one_owner), x.index))
        self.pins.pop(route, None)
        self.pins[route] = (w.index, time.monotonic())  # most recently active last
        while len(self.pins) > MAX_PINS:
            self.pins.popitem(last=False)
        if sid is not None:
            self.session_at.pop(sid, None)
            self.session_at[sid] = w.index
            while len(self.session_at) > MAX_PINS:
                self.session_at.popitem(last=False)
        return w

    def forget_worker(self, index: int) -> None:
        """Drop every pin to worker ``index`` (it is gone)."""
        for route in [p for p, (i, _) in self.pins.items() if i == index]:
            del self.pins[route]
        for sid in [k for k, i in self.session_at.items() if i == index]:
            del self.session_at[sid]

    def unpin(self, route: str | bytes) -> None:
        """Forget ``route``'s pin (a connection that left); nothing when it has none."""
        self.pins.pop(route, None)
