"""The interference measurement (``semalign load --interference``): another mode's work beside a pca-lora round.

One RX with ``--mode pca-lora,slf,fed-lora`` (:func:`semalign.campaigns.mixed_rx.start_rx`).

**Interference** (:func:`run_interference`): W = 2. One pca-lora session, opened first so that it is
pinned to worker 1 (a one-owner mode keeps worker 0 for the federation), runs rounds one after the
other while worker 0 is (i) idle, (ii) serving one slf TX's alignments back to back, (iii) the base
station of a federation whose devices run rounds back to back. Each condition runs ``rounds`` pca-lora
rounds once the background has finished its first round; then, where the process may set CPU
affinities and has 2 CPUs or more, the same condition again with worker 0 and the background's
processes on CPU 0 and worker 1, the front end and this process on the others (``*-pinned``). Per
round: its round trip, and worker 1's time on a CPU and waiting for one (``/proc/<pid>/task/*/schedstat``,
ns, summed over its threads) during the round. Per condition: median / p90 of each, the differences
to the idle condition of the same pinning, the background's rounds during it, and ``/proc/loadavg``
before and after.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import statistics
import time
from pathlib import Path

import zmq

from common.wire.protocol import Channel, Error, Hello, Result, decode, encode
from semalign.campaigns.machine import loadavg_line
from semalign.campaigns.mixed_rx import (MODES, fed_device, pca_half, result_rows, slf_artifacts, slf_tx, start_rx,
                                         wait_rows)
from semalign.campaigns.pca_lora.load import _children, _percentile
from semalign.campaigns.pca_lora.replay_load import HELLO_RESEND_S, round_frames
from semalign.campaigns.pca_lora.runner import ensure_artifacts
from semalign.campaigns.processes import kill_all, stop_process
from semalign.campaigns.tables import fmt, markdown_lines, write_csv

log = logging.getLogger("semalign.load")

INTERFERENCE_CSV_FIELDS = ["condition", "pinned", "rounds", "rtt_p50_ms", "rtt_p90_ms", "rtt_p50_diff_ms",
                           "rtt_p90_diff_ms", "oncpu_p50_ms", "runqueue_p50_ms", "runqueue_p90_ms", "steps_p50",
                           "finetune_p50_ms", "airtime_p50_ms",
                           "background_rounds", "worker0_cpu_share", "background_cpu_share", "loadavg_before",
                           "loadavg_after"]


def _schedstat_ns(pid: int) -> tuple[int, int]:
    """(time on a CPU, time runnable but waiting for one) of process ``pid``, ns, summed over its threads."""
    run = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            a, b, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        run, wait = run + int(a), wait + int(b)
    return run, wait


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (OSError, ValueError):
            pass


def can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


class _Probe:
    """One pca-lora session on a DEALER, running rounds one after the other (PAYLOAD, RESULT, next CHANNEL)."""

    def __init__(self, address: str, half, session_id: int = 7_000):
        self.half, self.id = half, session_id
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.seq, self.channel, self.rx_pid = 0, None, None
        self.next_channel = False

    def open(self, timeout_s: float) -> None:
        credential, sent, deadline = os.urandom(32), 0.0, time.monotonic() + timeout_s
        while self.channel is None and time.monotonic() < deadline:
            if time.monotonic() - sent > HELLO_RESEND_S and self.channel is None:
                sent = time.monotonic()
                self.sock.send(encode(Hello("tx", self.id, self.half.mode, self.half.fingerprint,
                                            self.half.hello_params(), 0, 0, os.getpid(), time.time_ns(),
                                            credential=credential)))
            if self.sock.poll(100, zmq.POLLIN):
                msg = decode(self.sock.recv())
                if isinstance(msg, Channel) and msg.seq == 0:
                    self.channel = msg
                elif isinstance(msg, Error):
                    raise RuntimeError(f"the RX refused the probe's session: {msg.code}: {msg.message}")
        if self.channel is None:
            raise RuntimeError(f"the RX did not open the probe's session within {timeout_s:.0f} s")
        self.next_channel = True

    def round(self, worker_pid: int | None, timeout_s: float = 120.0) -> dict:
        """One round: its rtt and ``worker_pid``'s schedstat deltas (ms); the RESULT's rx_pid kept."""
        frames = round_frames(self.half, self.id, self.seq, self.channel)
        deadline = time.monotonic() + timeout_s
        while not self.next_channel and time.monotonic() < deadline:  # the CHANNEL that releases this round
            if self.sock.poll(100, zmq.POLLIN):
                msg = decode(self.sock.recv())
                self.next_channel = isinstance(msg, Channel) and msg.seq == self.seq
        s0 = _schedstat_ns(worker_pid) if worker_pid else (0, 0)
        t0 = time.perf_counter()
        for f in frames:
            self.sock.send(f, copy=False)
        reply = None
        while reply is None and time.monotonic() < deadline:
            if self.sock.poll(100, zmq.POLLIN):
                msg = decode(self.sock.recv())
                if isinstance(msg, (Result, Error)) and msg.seq == self.seq:
                    reply = msg
                elif isinstance(msg, Channel) and msg.seq == self.seq + 1:
                    self.next_channel = True
        rtt = (time.perf_counter() - t0) * 1e3
        s1 = _schedstat_ns(worker_pid) if worker_pid else (0, 0)
        row = {"seq": self.seq, "status": "ok" if isinstance(reply, Result) else ("lost" if reply is None else "failed"),
               "rtt_ms": rtt, "oncpu_ms": (s1[0] - s0[0]) / 1e6, "runqueue_ms": (s1[1] - s0[1]) / 1e6}
        if isinstance(reply, Result):
            self.rx_pid = reply.rx_pid
            adapt = reply.fields.get("adapt") or {}
            row.update(steps=adapt.get("steps"), finetune_ms=reply.timings_ms.get("finetune"),
                       airtime_ms=reply.timings_ms.get("airtime"))
        self.seq += 1
        self.next_channel = self.next_channel and isinstance(reply, Result)
        return row

    def close(self) -> None:
        self.sock.close(0)


def run_interference(out: Path, rounds: int = 30, blocks: int = 3, dataset: str = "digits", artifacts: Path | None = None,
                     slf_dir: Path | None = None, fed_devices: int = 2, slf_finetune_images: int = 256,
                     slf_finetune_epochs: float = 1.0, slf_n_frozen: int = 2, pin: bool | None = None,
                     rx_extra: dict | None = None, timeout_s: float = 600.0) -> dict:
    """The interference measurement (module docstring); writes ``interference.json`` / ``.csv`` in ``out``."""
    if rounds < 2:
        raise ValueError(f"need rounds >= 2 per condition, got {rounds}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts = ensure_artifacts(dataset, artifacts)
    slf_dir = Path(slf_dir) if slf_dir else slf_artifacts(out / "slf-artifacts")
    pin = can_pin() if pin is None else (pin and can_pin())
    rx, address = start_rx(out, list(MODES), 2, artifacts, dataset, slf_dir, fed_devices, rx_extra)
    probe = _Probe(address, pca_half(artifacts, dataset))
    background: list = []
    conditions, all_rounds, blocks_run, groups_pids = [], [], [], {}
    every = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    try:
        probe.open(timeout_s)
        for _ in range(3):  # warm-up: the first rounds' allocations and calibration
            probe.round(None)
        workers = _children(rx.pid)
        w1 = probe.rx_pid
        w0 = next((p for p in workers if p != w1), None)
        if w1 not in workers or w0 is None:
            raise RuntimeError(f"the probe's worker {w1} is not one of the RX's workers {workers}")

        def measure(name: str, pinned: bool, background_rows, n: int) -> None:
            pids = [p.pid for p in background]
            if pinned:
                for p in [w0, *pids]:
                    _set_affinity(p, {0})
                for p in [w1, rx.pid, os.getpid()]:
                    _set_affinity(p, every - {0})
            before_bg, load0 = background_rows(), loadavg_line()
            busy0 = [_schedstat_ns(p)[0] for p in (w0, *groups_pids[name])] + [time.perf_counter_ns()]
            rows = [probe.round(w1) for _ in range(n)]
            busy1 = [_schedstat_ns(p)[0] for p in (w0, *groups_pids[name])] + [time.perf_counter_ns()]
            load1, after_bg = loadavg_line(), background_rows()
            if pinned:
                for p in [w0, w1, rx.pid, os.getpid(), *pids]:
                    _set_affinity(p, every)
            for r in rows:
                r.update(condition=name, pinned=pinned)
            all_rounds.extend(rows)
            wall = busy1[-1] - busy0[-1]
            blocks_run.append((name, pinned, after_bg - before_bg, load0, load1, (busy1[0] - busy0[0]) / wall,
                               sum(b - a for a, b in zip(busy0[1:-1], busy1[1:-1])) / wall))
            log.info("%s%s: %d rounds, rtt median %.1f ms (load %s)", name, " pinned" if pinned else "", n,
                     statistics.median(r["rtt_ms"] for r in rows), load1)

        # the backgrounds start once, at once: one slf TX aligning every round (pinned to worker 0, as worker 1
        # holds the probe) and the federation's devices; each is paused (SIGSTOP) outside its own condition
        # the slf TX first: it is pinned to the worker with the fewest sessions, worker 0, only before the
        # federation's devices (all pinned to worker 0) arrive
        slf_proc = slf_tx(out, address, 0, slf_dir, 100_000, slf_finetune_images, slf_finetune_epochs, slf_n_frozen)
        background.append(slf_proc)
        slf_rows = lambda: len(result_rows(out / "slf0" / "results.jsonl"))  # noqa: E731
        wait_rows(slf_rows, 1, timeout_s, slf_proc)
        served = result_rows(out / "slf0" / "results.jsonl")[0].get("rx_pid")
        if served != w0:
            raise RuntimeError(f"the slf session landed on worker pid {served}, not worker 0 ({w0}): the "
                               f"measurement needs it beside the probe's worker ({w1}), not on it")
        devices = [fed_device(out, address, k, fed_devices, 100_000) for k in range(fed_devices)]
        background.extend(devices)
        fed_rows = lambda: sum(len(result_rows(out / f"fed{k}" / "results.jsonl")) for k in range(fed_devices))  # noqa: E731
        wait_rows(fed_rows, fed_devices, timeout_s, devices[0])
        groups = {"idle": ([], lambda: 0), "slf": ([slf_proc], slf_rows), "fed-lora": (devices, fed_rows)}
        groups_pids.update({k: [p.pid for p in v[0]] for k, v in groups.items()})
        for procs, _ in groups.values():
            _signal(procs, signal.SIGSTOP)
        per_block = max(1, rounds // blocks)
        for block in range(blocks):  # interleaved, so that the machine's other load falls alike on each
            for pinned in (False, True) if pin else (False,):
                for name, (procs, count) in groups.items():
                    _signal(procs, signal.SIGCONT)
                    if procs:  # the background is back at work before the probe's rounds start
                        wait_rows(count, count() + 1, timeout_s, procs[0])
                    measure(name, pinned, count, per_block)
                    _signal(procs, signal.SIGSTOP)
        _signal(background, signal.SIGCONT)
        slf_pids = {r.get("rx_pid") for r in result_rows(out / "slf0" / "results.jsonl") if r.get("rx_pid")}
        fed_pids = {r.get("rx_pid") for k in range(fed_devices)
                    for r in result_rows(out / f"fed{k}" / "results.jsonl") if r.get("rx_pid")}
    finally:
        kill_all(background)
        probe.close()
        stop_process(rx)
    for name in ("idle", "slf", "fed-lora"):
        for pinned in (False, True) if pin else (False,):
            mine = [b for b in blocks_run if b[:2] == (name, pinned)]
            rows = [r for r in all_rounds if (r["condition"], r["pinned"]) == (name, pinned)]
            if mine:
                c = _condition(name, pinned, rows, sum(b[2] for b in mine), mine[0][3], mine[-1][4])
                c["worker0_cpu_share"] = statistics.mean(b[5] for b in mine)  # CPU-s per s of the condition
                c["background_cpu_share"] = statistics.mean(b[6] for b in mine)  # its TX processes, summed
                conditions.append(c)
    for c in conditions:
        idle = next(x for x in conditions if x["condition"] == "idle" and x["pinned"] == c["pinned"])
        c["rtt_p50_diff_ms"] = c["rtt_p50_ms"] - idle["rtt_p50_ms"]
        c["rtt_p90_diff_ms"] = c["rtt_p90_ms"] - idle["rtt_p90_ms"]
    summary = {"conditions": conditions, "rounds": all_rounds,
               "workers": {"probe (worker 1)": w1, "other (worker 0)": w0, "slf served by": sorted(slf_pids),
                           "fed-lora served by": sorted(fed_pids)},
               "settings": {"rounds_per_condition": rounds, "blocks": blocks, "dataset": dataset, "fed_devices": fed_devices,
                            "slf_finetune_images": slf_finetune_images, "slf_finetune_epochs": slf_finetune_epochs,
                            "slf_n_frozen": slf_n_frozen, "pinned_variants": pin, "cpus": os.cpu_count()},
               "uptime": loadavg_line()}
    (out / "interference.json").write_text(json.dumps(summary, indent=1))
    write_csv(out / "interference.csv", INTERFERENCE_CSV_FIELDS, conditions)
    return summary


def _signal(procs, sig) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, sig)



def _condition(name, pinned, rows, background_rounds, load0, load1) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    rtt = [r["rtt_ms"] for r in ok]
    return {"condition": name, "pinned": pinned, "rounds": len(ok), "rounds_not_ok": len(rows) - len(ok),
            "rtt_p50_ms": statistics.median(rtt) if rtt else None, "rtt_p90_ms": _percentile(rtt, 90),
            "oncpu_p50_ms": statistics.median(r["oncpu_ms"] for r in ok) if ok else None,
            "runqueue_p50_ms": statistics.median(r["runqueue_ms"] for r in ok) if ok else None,
            "runqueue_p90_ms": _percentile([r["runqueue_ms"] for r in ok], 90),
            "steps_p50": _median([r.get("steps") for r in ok]),
            "finetune_p50_ms": _median([r.get("finetune_ms") for r in ok]),
            "airtime_p50_ms": _median([r.get("airtime_ms") for r in ok]),
            "background_rounds": background_rounds, "loadavg_before": load0, "loadavg_after": load1}


def _median(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def interference_table(conditions: list[dict]) -> str:
    head = ["worker 0", "pinned", "pca-lora rounds", "rtt p50 / p90 ms", "p50 / p90 vs idle, ms",
            "worker 1 on CPU p50 ms", "worker 1 waiting for a CPU p50 / p90 ms", "background rounds",
            "worker 0 / background TXs CPU share",
            "/proc/loadavg before -> after"]
    body = [[c["condition"], "yes" if c["pinned"] else "no", str(c["rounds"]),
             f"{fmt(c['rtt_p50_ms'], '.1f')} / {fmt(c['rtt_p90_ms'], '.1f')}",
             f"{c.get('rtt_p50_diff_ms', 0):+.1f} / {c.get('rtt_p90_diff_ms', 0):+.1f}",
             fmt(c["oncpu_p50_ms"], ".1f"), f"{fmt(c['runqueue_p50_ms'], '.1f')} / {fmt(c['runqueue_p90_ms'], '.1f')}",
             str(c["background_rounds"]), f"{c['worker0_cpu_share']:.2f} / {c['background_cpu_share']:.2f}",
             f"{' '.join(c['loadavg_before'].split()[:3])} -> "
                                          f"{' '.join(c['loadavg_after'].split()[:3])}"] for c in conditions]
    return "\n".join(markdown_lines(head, body))
