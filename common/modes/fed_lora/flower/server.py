"""The ServerApp's loop: the daemons' base station driven over Flower's Grid.

:func:`run_federation` builds the same :class:`~common.modes.fed_lora.base_station.BaseStation`
as ``semalign rx --mode fed-lora`` (``FedLora.build_rx`` on the run config) and
plays ``rounds`` rounds with the SuperNodes:

1. **Join**: wait until ``fed-devices`` nodes are connected (or
   ``fed-join-timeout-s`` passed), send each a ``query`` message; its reply holds
   the device's HELLO parameters (id, shard size, profile, training FLOPs) and
   its task fingerprint. :meth:`BaseStation.check_device` accepts or refuses the
   device as it would a daemon's HELLO; a node with another fingerprint, a
   device id already taken or an error reply is refused. Every node's outcome is
   written to ``<fed-out>/flower_nodes.json``.
2. **Each round** ``r``: the devices whose nodes are still connected are
   active; :meth:`BaseStation.plan` decides module / power / bandwidth per
   device (policy ours / fixed / random, Lyapunov queues); each planned device's
   node gets a ``train`` message (group id ``r``) with its start factors; the
   replies go through :meth:`BaseStation.on_update` (the emulated uplink: loss
   draws, deadline, energy; malformed or non-finite updates refused with the
   check's code); an error reply is recorded ``failed`` with its reason; when all
   planned devices have answered, or ``fed-round-timeout-s`` after sending, the
   round forms (aggregation, queues, evaluation) and its record goes to
   ``<fed-out>/base_station.jsonl`` (the daemons' format).
3. ``<fed-out>/summary.json``: initial and per-round accuracy, per-round wall
   time, the node map.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import Message, RecordDict

from common.modes.base import RoundError
from common.modes.fed_lora.flower.config import run_options
from common.modes.fed_lora.flower.records import (
    hello_from_content,
    plan_content,
    update_from_content,
)
from common.modes.fed_lora.mode import FedLora
from common.wire.tensors import TensorError

log = logging.getLogger("semalign.flower")
POLL_S = 0.2  # how often the node list is read while waiting for nodes


def run_federation(grid, run_config) -> dict:
    """Play the run (see the module docstring); returns the summary (also in ``<fed-out>/summary.json``)."""
    opts = run_options(run_config)
    import torch

    torch.set_num_threads(opts.get("threads", 1))
    rx = FedLora.build_rx(opts)
    station, rounds = rx.station, opts.get("rounds", 2)
    station.background_forming = False  # the ServerApp forms each round itself, in order (no poll to answer)
    out = Path(station.config.out) if station.config.out else None
    initial_acc = station.accuracy
    nodes = wait_for_nodes(grid, station.spec.n_devices, station.config.join_timeout_s)
    joined, node_log = join(grid, station, rx.fingerprint, nodes, station.config.round_timeout_s)
    if out:
        (out / "flower_nodes.json").write_text(json.dumps(node_log, indent=1))
    if not joined:
        raise RuntimeError(f"no SuperNode joined the federation: {node_log}")
    records = []
    first = station.next_round
    for r in range(first, first + rounds):
        records.append(play_round(grid, station, r, joined))
    summary = {"initial_acc": initial_acc, "fingerprint": rx.fingerprint, "rounds": len(records),
               "global_acc": [rec["global_acc"] for rec in records],
               "round_wall_s": [rec["round_wall_s"] for rec in records], "nodes": node_log}
    if out:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def wait_for_nodes(grid, n: int, timeout_s: float) -> list[int]:
    """Node ids connected once ``n`` are (or ``timeout_s`` passed; whatever is there then)."""
    t_end = time.monotonic() + timeout_s
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= n or time.monotonic() >= t_end:
            log.info("%d of %d SuperNodes connected", len(ids), n)
            return ids
        time.sleep(POLL_S)


def join(grid, station, fingerprint: str, nodes: list[int], timeout_s: float) -> tuple[dict[int, int], list]:
    """Ask every node for its device's HELLO; returns ``{device_id: node_id}`` of the accepted devices and,
    per node, ``{node_id, device_id, joined, reason}``."""
    msgs = [Message(RecordDict(), dst_node_id=node, message_type="query") for node in nodes]
    replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(msgs, timeout=timeout_s)}
    joined: dict[int, int] = {}
    node_log = []
    for node in nodes:
        device_id, reason = _admit(station, fingerprint, replies.get(node), joined, timeout_s)
        if not reason:
            joined[device_id] = node
        else:
            log.warning("node %d refused: %s", node, reason)
        node_log.append({"node_id": node, "device_id": device_id, "joined": not reason, "reason": reason})
    return joined, node_log


def _admit(station, fingerprint: str, reply: Message | None, joined: dict[int, int], timeout_s: float):
    """``(device_id, "")`` for a node whose device joins (it is then registered), else ``(id or None, why)``."""
    if reply is None:
        return None, f"no reply within {timeout_s:g} s"
    if reply.has_error():
        return None, f"node error {reply.error.code}: {reply.error.reason}"[:300]
    try:
        params, fp = hello_from_content(reply.content)
    except ValueError as e:
        return None, str(e)
    device_id = params.get("device_id")
    if fp != fingerprint:
        return device_id, (f"task fingerprint {fp[:16]} != the base station's {fingerprint[:16]} "
                           "(another task, seed or model code)")
    if isinstance(device_id, int) and device_id in joined:
        return device_id, f"device-id {device_id} is already taken by node {joined[device_id]}"
    return device_id, station.check_device(params) or ""


def play_round(grid, station, r: int, joined: dict[int, int]) -> dict:
    """Round ``r`` (see the module docstring); returns its record (``BaseStation.form``'s)."""
    connected = set(grid.get_node_ids())
    for k, node in joined.items():
        station.devices[k].active = node in connected
    rnd = station.plan(r, station.clock())
    msgs = [Message(plan_content(r, rnd.decisions[k], station.start_factors(rnd, rnd.decisions[k].module)),
                    dst_node_id=joined[k], message_type="train", group_id=str(r))
            for k in rnd.participants]
    device_of = {node: k for k, node in joined.items()}
    if msgs:
        for reply in grid.send_and_receive(msgs, timeout=station.config.round_timeout_s):
            k = device_of.get(reply.metadata.src_node_id)
            if k is not None and k in rnd.decisions and not rnd.formed:
                receive(station, rnd, station.devices[k], reply)
    if not rnd.formed:  # some planned device did not answer in time: recorded missing
        station.form(rnd, station.clock(), "deadline")
    return rnd.record


def receive(station, rnd, dev, reply: Message) -> None:
    """One train reply into the base station: an error -> ``failed``; a malformed update -> ``refused``;
    otherwise :meth:`BaseStation.on_update` (delivered, lost, or refused by its checks)."""
    now = station.clock()
    if reply.has_error():
        station.fail(dev, rnd, f"node error {reply.error.code}: {reply.error.reason}", now)
        return
    try:
        update = update_from_content(reply.content, rnd.index, dev.device_id)
    except TensorError as e:
        log.warning("round %d: device %d sent a malformed update: %s", rnd.index, dev.device_id, e)
        station.refuse(dev, rnd, e.code, now)
        return
    rnd.fetched.add(dev.device_id)  # under Flower the train message carried the plan
    try:
        station.on_update(dev, update, now)
    except RoundError as e:
        log.warning("round %d: device %d update refused (%s): %s", rnd.index, dev.device_id, e.code, e)


def summary_line(summary: dict[str, Any]) -> str:
    """One line for a log: initial and per-round accuracy."""
    accs = ", ".join(f"{a:.3f}" for a in summary["global_acc"])
    return f"fed-lora over Flower: accuracy {summary['initial_acc']:.3f} -> {accs} after {summary['rounds']} rounds"
