"""Mixed-mode load (``semalign load --mix``) and the interference measurement (``semalign load --interference``).

Both run one RX with ``--mode pca-lora,slf,fed-lora`` (the modes asked for) and ``--workers W``.

**Mixed load** (:func:`run_mixed`): at once, on that one RX,

- ``pca_sessions`` pca-lora sessions from the replaying generator of this process
  (:mod:`semalign.campaigns.pca_lora.replay_load`: the real TX half's PAYLOADs, encoded before the run);
- ``slf_sessions`` ``semalign tx --mode slf`` processes whose every round is an alignment (decoder
  download, fine-tuning at the TX with ``--n-frozen`` layers frozen, upload of the changed layers);
- a fed-lora federation of ``fed_devices`` ``semalign tx --mode fed-lora`` processes (the base station
  on worker 0: every fed-lora session is pinned there).

The replayed pca-lora sessions start once every slf and fed-lora process has ended its first round, so
that the modes' rounds overlap. Per mode: rounds ok / failed / lost (a round a TX never recorded, or one the replay got no reply to),
rounds/s over that mode's own span (first round's start to last round's end), p50/p90/p99 of the round's
latency at the TX (pca-lora: PAYLOAD to RESULT; slf: its alignment's wall time, download + fine-tuning +
upload; fed-lora: a round's start to the next's, the device's own training included: the last round of a
device has no such figure; the first round of each slf or fed-lora process, its cold start (torch's first
calls, the federation's joining), is counted but left out of the latencies and of rounds/s), and the RX's RSS at the end (front end, workers summed: shared by the modes).

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

import csv
import json
import logging
import os
import signal
import statistics
import time
from pathlib import Path

import numpy as np
import zmq

from common.files import read_jsonl
from common.wire.protocol import Channel, Error, Hello, Result, decode, encode
from semalign.campaigns.pca_lora.load import DEEP_FADE_CSV, _children, _percentile, rx_memory
from semalign.campaigns.pca_lora.replay_load import HELLO_RESEND_S, replay, round_frames
from semalign.campaigns.pca_lora.runner import ensure_artifacts
from semalign.campaigns.processes import free_port, launch, stop_process, wait_all
from semalign.campaigns.tables import markdown_lines

log = logging.getLogger("semalign.load")

MODES = ("pca-lora", "slf", "fed-lora")
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
MIXED_CSV_FIELDS = ["mode", "sessions", "rounds_expected", "rounds_ok", "rounds_failed", "rounds_lost", "span_s",
                    "rounds_per_s", "p50_ms", "p90_ms", "p99_ms", "rss_rx_mib", "rss_workers_mib", "workers",
                    "load1_before", "load1_after"]
INTERFERENCE_CSV_FIELDS = ["condition", "pinned", "rounds", "rtt_p50_ms", "rtt_p90_ms", "rtt_p50_diff_ms",
                           "rtt_p90_diff_ms", "oncpu_p50_ms", "runqueue_p50_ms", "runqueue_p90_ms", "steps_p50",
                           "finetune_p50_ms", "airtime_p50_ms",
                           "background_rounds", "worker0_cpu_share", "background_cpu_share", "loadavg_before",
                           "loadavg_after"]
SLF_WIDTHS = (32, 64)  # the paper's decoder size (171 kB) on 8x8 digits


# ------------------------------------------------------------------ set-up shared by both


def slf_artifacts(out: Path, widths: tuple[int, int] = SLF_WIDTHS, epochs: float = 2.0) -> Path:
    """An slf transceiver for 8x8 digits in ``out`` (pre-trained once, kept): both ends use it (an alignment
    then changes little, but its download, fine-tuning and upload are the whole work)."""
    from common.data.datasets import load_dataset
    from common.modes.slf.artifacts import load_transceiver
    from common.modes.slf.configs import TransceiverConfig
    from common.modes.slf.pretrain import pretrain_and_save
    from common.modes.slf.shape import TransceiverShape

    try:
        load_transceiver(out)
        return out
    except Exception:  # none yet (or damaged): pre-train
        pass
    shape = TransceiverShape(image_size=8, widths=tuple(widths), code_dim=16, n_codewords=16,
                             head_channels=(8, 8), head_hidden=32)
    cfg = TransceiverConfig("load", eps=1e-3, seed=1, dataset="digits", epochs=epochs, head_epochs=epochs,
                            batch_size=128, lr=1e-2, shape=shape)
    pretrain_and_save(cfg, load_dataset("digits"), out)
    return out


def parse_mix(mix: str) -> list[str]:
    modes = [m.strip() for m in mix.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"--mix {mix!r}: a comma-separated list of {', '.join(MODES)}")
    return [m for m in MODES if m in modes]


def _start_rx(out: Path, modes: list[str], workers: int, artifacts: Path, dataset: str, slf_dir: Path | None,
              fed_devices: int, rx_extra: dict | None):
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "deep-fade.csv"
    trace.write_text(DEEP_FADE_CSV)
    address = f"tcp://127.0.0.1:{free_port()}"
    opts = {"bind": address, "mode": ",".join(modes), "artifacts": artifacts, "dataset": dataset,
            "trace": str(trace), "workers": workers, "insecure": True, **(rx_extra or {})}
    if "slf" in modes:
        opts["trx"] = slf_dir
    if "fed-lora" in modes:
        opts.update(fed_devices=fed_devices, fed_policy="fixed")
    return launch("rx", opts, out / "rx.log", env=ENV), address


def _slf_tx(out: Path, address: str, i: int, slf_dir: Path, rounds: int, finetune_images: int,
            finetune_epochs: float, n_frozen: int):
    """A ``semalign tx --mode slf`` whose every round is an alignment."""
    return launch("tx", {"mode": "slf", "connect": address, "trx": slf_dir, "rounds": rounds, "out": out / f"slf{i}",
                         "insecure": True, "seed": i, "align_first": 0, "align_every": 1, "n_frozen": n_frozen,
                         "finetune_images": finetune_images, "finetune_epochs": finetune_epochs,
                         "finetune_lr": 1e-3, "n_images": 50, "connect_timeout_s": 300, "hello_attempts": 600},
                  out / f"slf{i}.log", env=ENV)


def _fed_device(out: Path, address: str, k: int, devices: int, rounds: int):
    return launch("tx", {"mode": "fed-lora", "connect": address, "device_id": k, "fed_devices": devices,
                         "rounds": rounds, "out": out / f"fed{k}", "insecure": True, "connect_timeout_s": 300,
                         "hello_attempts": 600}, out / f"fed{k}.log", env=ENV)


def _rows(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def _round_ms(mode: str, rows: list[dict]) -> list[float]:
    """Each ok round's latency at the TX, ms (the module docstring says which)."""
    out = []
    for i, r in enumerate(rows):
        if r.get("status") != "ok":
            continue
        lat = r.get("latency_ms") or {}
        if mode == "slf" and "recovery" in lat:
            out.append(lat["recovery"])
        elif "rtt" in lat:
            out.append(lat["rtt"])
        elif i + 1 < len(rows) and rows[i + 1].get("started_at") and r.get("started_at"):
            out.append((rows[i + 1]["started_at"] - r["started_at"]) * 1e3)
    return out


def _mode_row(mode: str, per_session: list[list[dict]], rounds: int) -> dict:
    rows = [r for s in per_session for r in s]
    ok = [r for r in rows if r.get("status") == "ok"]
    expected = rounds * len(per_session)
    if mode != "pca-lora":  # a process's first round is its cold start: counted, not timed (see the docstring)
        per_session = [s[1:] for s in per_session]
    lat = [x for s in per_session for x in _round_ms(mode, s)]
    starts = [r["started_at"] for s in per_session for r in s if r.get("started_at")]
    ends = []
    for s in per_session:
        ms = _round_ms(mode, s)
        ok_s = [r for r in s if r.get("status") == "ok" and r.get("started_at")]
        if ok_s:
            ends.append(ok_s[-1]["started_at"] + (ms[-1] / 1e3 if ms and mode != "fed-lora" else 0.0))
        if s and s[-1].get("started_at") and mode == "fed-lora":
            ends.append(s[-1]["started_at"])
    span = (max(ends) - min(starts)) if starts and ends else None
    return {"mode": mode, "sessions": len(per_session), "rounds_expected": expected, "rounds_ok": len(ok),
            "rounds_failed": len(rows) - len(ok) - sum(r.get("status") == "lost" for r in rows),
            "rounds_lost": expected - len(rows) + sum(r.get("status") == "lost" for r in rows),
            "span_s": span, "rounds_per_s": sum(r.get("status") == "ok" for s in per_session for r in s) / span
            if span else None,
            "p50_ms": _percentile(lat, 50), "p90_ms": _percentile(lat, 90), "p99_ms": _percentile(lat, 99)}


# ------------------------------------------------------------------ mixed load


def run_mixed(out: Path, modes: list[str], workers: int = 2, pca_sessions: int = 4, slf_sessions: int = 1,
              fed_devices: int = 2, rounds: int = 10, slf_rounds: int | None = None, fed_rounds: int | None = None,
              dataset: str = "digits", artifacts: Path | None = None, slf_dir: Path | None = None,
              slf_finetune_images: int = 256, slf_finetune_epochs: float = 1.0, slf_n_frozen: int = 2,
              rx_extra: dict | None = None, timeout_s: float = 1800.0) -> dict:
    """The mixed load (module docstring); writes ``mixed.json``, ``mixed.csv``, ``mixed.png`` in ``out``."""
    modes = [m for m in MODES if m in modes]
    if not modes or workers < 1 or rounds < 1:
        raise ValueError(f"need a mode, workers >= 1 and rounds >= 1, got {modes=} {workers=} {rounds=}")
    counts = {"pca-lora": pca_sessions, "slf": slf_sessions, "fed-lora": fed_devices}
    if any(counts[m] < 1 for m in modes):
        raise ValueError(f"every mode of --mix needs >= 1 session, got {counts}")
    slf_rounds, fed_rounds = slf_rounds or rounds, fed_rounds or rounds
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts = ensure_artifacts(dataset, artifacts)
    if "slf" in modes:
        slf_dir = Path(slf_dir) if slf_dir else slf_artifacts(out / "slf-artifacts")
    load_before = os.getloadavg()
    rx, address = _start_rx(out, modes, workers, artifacts, dataset, slf_dir, fed_devices, rx_extra)
    procs, per_mode = [], {}
    try:
        if "fed-lora" in modes:
            procs += [_fed_device(out, address, k, fed_devices, fed_rounds) for k in range(fed_devices)]
        if "slf" in modes:
            procs += [_slf_tx(out, address, i, slf_dir, slf_rounds, slf_finetune_images, slf_finetune_epochs,
                              slf_n_frozen) for i in range(slf_sessions)]
        # the replayed sessions start once every background process has ended its first round (their
        # start-ups, torch's import and first calls, would otherwise overlap no pca-lora round)
        started = [(p, out / f"slf{i}" / "results.jsonl") for i, p in
                   enumerate(procs[len(procs) - slf_sessions:] if "slf" in modes else [])]
        started += [(p, out / f"fed{k}" / "results.jsonl") for k, p in
                    enumerate(procs[:fed_devices] if "fed-lora" in modes else [])]
        for p, path in started:
            _wait_rows(lambda path=path: len(_rows(path)), 1, timeout_s, p)
        if "pca-lora" in modes:
            half = _pca_half(artifacts, dataset)
            per_mode["pca-lora"] = replay(address, half, pca_sessions, rounds, timeout_s)
        wait_all(procs, timeout_s)
        memory = rx_memory(rx.pid)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        stop_process(rx)
    if "slf" in modes:
        per_mode["slf"] = [_rows(out / f"slf{i}" / "results.jsonl") for i in range(slf_sessions)]
    if "fed-lora" in modes:
        per_mode["fed-lora"] = [_rows(out / f"fed{k}" / "results.jsonl") for k in range(fed_devices)]
    load_after = os.getloadavg()
    n_rounds = {"pca-lora": rounds, "slf": slf_rounds, "fed-lora": fed_rounds}
    rows = []
    for m in modes:
        row = _mode_row(m, per_mode[m], n_rounds[m])
        row.update(memory, workers=workers, load1_before=load_before[0], load1_after=load_after[0])
        rows.append(row)
        log.info("%s: %d/%d ok, %d lost, %s rounds/s, p50 %s ms", m, row["rounds_ok"], row["rounds_expected"],
                 row["rounds_lost"], _f1(row["rounds_per_s"]), _f0(row["p50_ms"]))
    summary = {"rows": rows, "settings": {"modes": modes, "workers": workers, "dataset": dataset,
                                          "sessions": {m: counts[m] for m in modes}, "rounds": n_rounds,
                                          "slf_finetune_images": slf_finetune_images,
                                          "slf_finetune_epochs": slf_finetune_epochs, "slf_n_frozen": slf_n_frozen,
                                          "cpus": os.cpu_count(), "rx_extra": rx_extra or {}},
               "loadavg_before": list(load_before), "uptime": _loadavg()}
    (out / "mixed.json").write_text(json.dumps(summary, indent=1))
    _write_csv(out / "mixed.csv", MIXED_CSV_FIELDS, rows)
    plot_mixed(rows, out / "mixed.png")
    return summary


_HALVES: dict = {}


def _pca_half(artifacts: Path, dataset: str):
    key = (str(artifacts), dataset)
    if key not in _HALVES:
        from common.modes.base import get_mode

        _HALVES[key] = get_mode("pca-lora").build_tx({"artifacts": artifacts, "dataset": dataset})
    return _HALVES[key]


def mixed_table(rows: list[dict]) -> str:
    head = ["mode", "sessions", "rounds ok / expected", "failed", "lost", "rounds/s", "p50 / p90 / p99 ms",
            "RX RSS MiB (front end + workers)"]
    body = [[r["mode"], str(r["sessions"]), f"{r['rounds_ok']} / {r['rounds_expected']}", str(r["rounds_failed"]),
             str(r["rounds_lost"]), _f1(r["rounds_per_s"]),
             f"{_f0(r['p50_ms'])} / {_f0(r['p90_ms'])} / {_f0(r['p99_ms'])}",
             _f0(r.get("rss_rx_mib")) + ("" if r.get("rss_workers_mib") is None else f" + {_f0(r['rss_workers_mib'])}")]
            for r in rows]
    return "\n".join(markdown_lines(head, body))


def plot_mixed(rows: list[dict], path: Path) -> None:
    """Rounds/s and p50/p90/p99 round latency per mode (the load plot's two panels, one bar group per mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["mode"] for r in rows]
    x = np.arange(len(rows))
    ax_t.bar(x, [r["rounds_per_s"] or 0 for r in rows])
    for j, q in enumerate(("p50_ms", "p90_ms", "p99_ms")):
        ax_l.bar(x + (j - 1) * 0.27, [r[q] or 0 for r in rows], 0.27, label=q.split("_")[0])
    for ax, ylabel in ((ax_t, "rounds/s (the mode's span)"), (ax_l, "round latency, ms")):
        ax.set_xticks(x, names)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    ax_l.set_yscale("log")
    ax_l.legend()
    fig.suptitle(f"RX load, mixed modes on one RX (W = {rows[0]['workers'] if rows else '?'})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ interference


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
    rx, address = _start_rx(out, list(MODES), 2, artifacts, dataset, slf_dir, fed_devices, rx_extra)
    probe = _Probe(address, _pca_half(artifacts, dataset))
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
            before_bg, load0 = background_rows(), _loadavg()
            busy0 = [_schedstat_ns(p)[0] for p in (w0, *groups_pids[name])] + [time.perf_counter_ns()]
            rows = [probe.round(w1) for _ in range(n)]
            busy1 = [_schedstat_ns(p)[0] for p in (w0, *groups_pids[name])] + [time.perf_counter_ns()]
            load1, after_bg = _loadavg(), background_rows()
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
        slf_tx = _slf_tx(out, address, 0, slf_dir, 100_000, slf_finetune_images, slf_finetune_epochs, slf_n_frozen)
        background.append(slf_tx)
        slf_rows = lambda: len(_rows(out / "slf0" / "results.jsonl"))  # noqa: E731
        _wait_rows(slf_rows, 1, timeout_s, slf_tx)
        served = _rows(out / "slf0" / "results.jsonl")[0].get("rx_pid")
        if served != w0:
            raise RuntimeError(f"the slf session landed on worker pid {served}, not worker 0 ({w0}): the "
                               f"measurement needs it beside the probe's worker ({w1}), not on it")
        devices = [_fed_device(out, address, k, fed_devices, 100_000) for k in range(fed_devices)]
        background.extend(devices)
        fed_rows = lambda: sum(len(_rows(out / f"fed{k}" / "results.jsonl")) for k in range(fed_devices))  # noqa: E731
        _wait_rows(fed_rows, fed_devices, timeout_s, devices[0])
        groups = {"idle": ([], lambda: 0), "slf": ([slf_tx], slf_rows), "fed-lora": (devices, fed_rows)}
        groups_pids.update({k: [p.pid for p in v[0]] for k, v in groups.items()})
        for procs, _ in groups.values():
            _signal(procs, signal.SIGSTOP)
        per_block = max(1, rounds // blocks)
        for block in range(blocks):  # interleaved, so that the machine's other load falls alike on each
            for pinned in (False, True) if pin else (False,):
                for name, (procs, count) in groups.items():
                    _signal(procs, signal.SIGCONT)
                    if procs:  # the background is back at work before the probe's rounds start
                        _wait_rows(count, count() + 1, timeout_s, procs[0])
                    measure(name, pinned, count, per_block)
                    _signal(procs, signal.SIGSTOP)
        _signal(background, signal.SIGCONT)
        slf_pids = {r.get("rx_pid") for r in _rows(out / "slf0" / "results.jsonl") if r.get("rx_pid")}
        fed_pids = {r.get("rx_pid") for k in range(fed_devices)
                    for r in _rows(out / f"fed{k}" / "results.jsonl") if r.get("rx_pid")}
    finally:
        for p in background:
            if p.poll() is None:
                p.kill()
                p.wait()
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
               "uptime": _loadavg()}
    (out / "interference.json").write_text(json.dumps(summary, indent=1))
    _write_csv(out / "interference.csv", INTERFERENCE_CSV_FIELDS, conditions)
    return summary


def _signal(procs, sig) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, sig)


def _wait_rows(count, n: int, timeout_s: float, proc) -> None:
    deadline = time.monotonic() + timeout_s
    while count() < n:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the background's first round did not end within {timeout_s:.0f} s "
                               f"(exit status {proc.poll()})")
        time.sleep(0.2)


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
             f"{_f1(c['rtt_p50_ms'])} / {_f1(c['rtt_p90_ms'])}",
             f"{c.get('rtt_p50_diff_ms', 0):+.1f} / {c.get('rtt_p90_diff_ms', 0):+.1f}",
             _f1(c["oncpu_p50_ms"]), f"{_f1(c['runqueue_p50_ms'])} / {_f1(c['runqueue_p90_ms'])}",
             str(c["background_rounds"]), f"{c['worker0_cpu_share']:.2f} / {c['background_cpu_share']:.2f}",
             f"{' '.join(c['loadavg_before'].split()[:3])} -> "
                                          f"{' '.join(c['loadavg_after'].split()[:3])}"] for c in conditions]
    return "\n".join(markdown_lines(head, body))


# ------------------------------------------------------------------ small helpers


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return ""


def _f0(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def _f1(v) -> str:
    return "-" if v is None else f"{v:.1f}"
