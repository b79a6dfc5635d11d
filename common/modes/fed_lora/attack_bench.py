"""Poisoning measurement: global accuracy with 0, 1, 2 hostile devices out of 4, per aggregation rule.

In-process (no sockets): the base station (:class:`~common.modes.fed_lora.base_station.BaseStation`) and four
devices (:class:`~common.modes.fed_lora.tx.FedLoraTx`) of the MLP task go through the same plan ->
train -> update -> form steps as over the daemons, with policy ``fixed`` (every device trains
``all-r8`` at full power; devices at 150 / 300 / 450 / 600 m lose no upload) so that ``fedavg`` can
take part. A hostile device trains honestly, then uploads ``G + s (U - G)`` with ``s = -scale``: its
honest delta from the global start, sign-flipped and scaled (``B' = -scale B`` for the factors, so
``B' A = -scale B A``; the head ``h_G - scale (h - h_G)``): finite, well-formed, and passes every
tensor check. Devices ``4 - n_hostile .. 3`` are hostile, from round ``--honest-rounds`` on (0: from
the first; the issue's attack: 2 honest rounds, then ``--scale 1e10``, values up to ~1e11). ``python -m common.modes.fed_lora.attack_bench``
prints the table of ``docs/modes/fed_lora.md`` ("Poisoning").
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from common.modes.base import get_mode
from common.modes.fed_lora.messages import FedPlan, FedUpdate, adapter_from_wire, adapter_to_wire, poll

DISTANCES_M = (150.0, 300.0, 450.0, 600.0)


def hostile(arrays: dict, start: dict, scale: float) -> dict:
    """The sign-flipped, ``scale``-times update (see the module docstring)."""
    out = {}
    for key, v in arrays.items():
        if key.endswith(".lora_B"):
            out[key] = (-scale * v).astype(np.float32)
        elif key.startswith("head."):
            out[key] = (start[key] - scale * (v - start[key])).astype(np.float32)
        else:
            out[key] = v
    return out


def run(aggregation: str, clip_factor: float, n_hostile: int, seed: int, rounds: int,
        scale: float = 10.0, honest_rounds: int = 0) -> list[float]:
    """Global accuracy after each of ``rounds`` rounds (4 devices, ``n_hostile`` of them hostile from round
    ``honest_rounds`` on)."""
    mode = get_mode("fed-lora")
    rx = mode.build_rx({"fed_devices": 4, "fed_policy": "fixed", "fed_aggregation": aggregation,
                        "fed_clip_factor": clip_factor, "seed": seed})
    st = rx.station
    txs = [mode.build_tx({"fed_devices": 4, "device_id": k, "fed_distance_m": d, "seed": seed})
           for k, d in enumerate(DISTANCES_M)]
    for t in txs:
        problem = st.check_device(t.hello_params())
        if problem:
            raise RuntimeError(problem)
    accs = []
    for r in range(rounds):
        for k, t in enumerate(txs):
            dev = st.devices[k]
            plan = st.on_plan_poll(dev, r, poll(0, 100 + k, r, k, "plan"), st.clock())
            if not isinstance(plan, FedPlan) or not plan.module:
                continue
            start = adapter_from_wire(plan.tensors, t.shapes[plan.module])
            arrays, loss, train_s = t.train_module(r, plan.module, start)
            if k >= 4 - n_hostile and r >= honest_rounds:
                arrays = hostile(arrays, start, scale)
            msg = FedUpdate(100 + k, r, k, plan.module, len(t.y), 1.0, train_s, adapter_to_wire(arrays))
            try:
                st.on_update(dev, msg, st.clock())
            except Exception:  # a refusal counts as the report; nothing else to do here
                pass
        rnd = st.rounds[r]
        if not rnd.formed:
            st.form(rnd, st.clock(), "deadline")
        accs.append(st.accuracy)
    return accs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--scale", type=float, default=10.0)
    ap.add_argument("--honest-rounds", type=int, default=0, help="rounds the hostile devices first train honestly")
    ap.add_argument("--rules", default="fedavg:0,fedavg:3,stack-svd:0,stack-svd:3,trimmed-mean:3,median:3")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    t0 = time.time()
    print("| aggregation | clip | 0 hostile | 1 hostile | 2 hostile |")
    print("|---|---|---|---|---|")
    for rule in a.rules.split(","):
        agg, clip = rule.split(":")
        cells = []
        for h in (0, 1, 2):
            final = [run(agg, float(clip), h, s, a.rounds, a.scale, a.honest_rounds)[-1] for s in seeds]
            cells.append(f"{np.mean(final):.3f} ({', '.join(f'{x:.3f}' for x in final)})")
        print(f"| {agg} | {clip if float(clip) else 'off'} | " + " | ".join(cells) + " |", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
