"""Impersonation and one silent device against a fed-lora base station, over real processes and CURVE.

``python -m semalign.campaigns.fed_lora.attack_probe [--round-timeout-s S] [--rounds R]`` starts a
CURVE base station (``semalign rx --mode fed-lora --fed-devices 2``, mlp task, throwaway keys
``dev0`` / ``dev1`` in its allow-list) and then:

1. impersonation: device 0's admitted key says HELLO for device 1 (and for device 0 under a key
   named ``other``): the answers by code, and whether anything was registered;
2. one silent device: device 1's rightful key says HELLO (so rounds are planned for it) and then is
   silent, while device 0 runs as a real device daemon (``semalign tx --mode fed-lora``) for ``R``
   rounds. Reported from the base station's record: each round's ``closed_by``, wall time and device
   1's outcome, against the round timeout ``S`` (the issue's run: a 60.1 s round at a 60 s timeout).

It prints one JSON object with the load average. The properties are guarded by
``tests/test_fed_lora_attacks.py``; this is the measurement over processes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import zmq

from common.modes.base import get_mode
from common.wire.protocol import Hello, encode
from semalign.campaigns.probes import tx_socket, wait_for
from semalign.campaigns.processes import free_port, launch, stop_process, throwaway_keys

FED = {"mode": "fed-lora", "fed_devices": 2, "fed_task": "mlp"}


def hello(half, session_id: int) -> bytes:
    return encode(Hello("tx", session_id, "fed-lora", half.fingerprint, half.hello_params(), 0, 0, os.getpid(),
                        time.time_ns()))


def describe(reply) -> str:
    return "none" if reply is None else f"ERROR {reply.code}" if reply.TYPE == "ERROR" else reply.TYPE


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--round-timeout-s", type=float, default=60.0)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    if a.rounds < 1 or a.round_timeout_s <= 0:
        p.error("--rounds must be >= 1 and --round-timeout-s > 0")
    work = Path(tempfile.mkdtemp(prefix="semalign-fed-attacks-"))
    keys = work / "keys"
    rx_keys, _ = throwaway_keys(keys, "dev0")
    _, dev0_keys = throwaway_keys(keys, "dev0")
    throwaway_keys(keys, "dev1")
    throwaway_keys(keys, "other")
    address = f"tcp://127.0.0.1:{free_port()}"
    out = {"round_timeout_s": a.round_timeout_s, "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
           "work": str(work)}
    rx = launch("rx", {**FED, "bind": address, "fed_out": work / "bs", "fed_round_timeout_s": a.round_timeout_s,
                       **rx_keys}, work / "rx.log")
    mode = get_mode("fed-lora")
    halves = [mode.build_tx({"fed_devices": 2, "device_id": k}) for k in range(2)]
    context = zmq.Context()
    socks = {name: tx_socket(address, keys, name, context) for name in ("dev0", "other", "dev1")}
    device0 = None
    try:
        tries = [("dev0", 1, 901), ("other", 0, 902), ("other", 1, 903)]
        answers = []
        for i, (name, k, sid) in enumerate(tries):
            socks[name].send(hello(halves[k], sid))
            answers.append(describe(wait_for(socks[name], ("HELLO", "ERROR"), 300 if i == 0 else 60)))
        out["impersonation"] = {"tries": [f"key {n} as device {k}" for n, k, _ in tries], "answers": answers}
        socks["dev1"].send(hello(halves[1], 201))
        out["device1_hello"] = describe(wait_for(socks["dev1"], ("HELLO", "ERROR"), 60))
        device0 = launch("tx", {**FED, "connect": address, "device_id": 0, "rounds": a.rounds, "out": work / "dev0",
                                "connect_timeout_s": 120.0, **dev0_keys}, work / "dev0.log")
        device0.wait(timeout=a.rounds * (a.round_timeout_s + 60) + 120)
        rows = [json.loads(x) for x in (work / "bs" / "base_station.jsonl").read_text().splitlines() if x.strip()]
        out["rounds"] = [{"round": r["round"], "closed_by": r["closed_by"], "round_wall_s": round(r["round_wall_s"], 2),
                          "device1": r["devices"].get("1", {}).get("outcome", "not planned"),
                          "delivered": r["delivered"]} for r in rows]
        out["device0_results"] = [{"round": r["round"], "status": r["status"]} for r in
                                  map(json.loads, (work / "dev0" / "results.jsonl").read_text().splitlines())]
        out["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    finally:
        for sock in socks.values():
            sock.close()
        context.term()
        if device0 is not None and device0.poll() is None:
            stop_process(device0)
        stop_process(rx)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
