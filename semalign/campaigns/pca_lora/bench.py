"""``semalign bench``: micro-benchmarks, each next to the physical floor it stands against.

Figures (medians of ``repeats`` runs, one torch thread):

- ``gemm``: achieved single-thread float32 GEMM rate (the compute reference) and
  ``memcpy`` bandwidth (the memory reference);
- ``pca_encode``: vectors/s at alpha 20 and d_pre; floor = GEMM rate / (2 d_raw alpha) FLOP;
- ``pack`` / ``unpack``: MB/s of a ~1 MB PAYLOAD (encode, decode + dequantize); floor = memcpy;
- ``zmq_rtt``: one loopback ZeroMQ DEALER/ROUTER round trip of a 1 MB message; floors:
  two memcpys of it, and (for scale) its air time at the reference link rate;
- ``step``: one training step of each adaptation recipe at alpha 20 (256 vectors, the
  trainer alone, least thread CPU time over runs) in fp32 and (first-layer: its frozen layers) bf16, forced
  each (bf16 emulated where the CPU lacks it, and the output says so); floor = the step's GEMMs
  (shapes from the trainer's code) timed alone at those shapes and dtypes;
- ``adapt``: adaptation time against n_train at alpha 20 for each recipe with the RX's
  default settings (step count calibrated to the budget); floor = FLOPs of the steps / GEMM rate;
- ``precision_choice``: what ``precision auto`` picks for each dense recipe here (its own step
  timed in fp32 and bf16, bf16 only at <= 0.85 of fp32's time) and both step times;
- ``precision_accuracy``: the default recipe's accuracy with the frozen layers in fp32 and in bf16
  on the same payloads (alpha 10, 20, 40, 3 seeds, reference budget) and the same step counts;
- ``inference``: classification of t vectors; floor = FLOPs / GEMM rate;
- ``rss``: peak RSS (``VmHWM``) of an RX and a TX daemon process during a 9-round loopback run
  of the demo trace; 7 of its rounds are at alpha = d_pre with nothing to align, so
  ``round_d_pre`` gives their round latency (TX starts encoding -> RESULT back; the first
  round, which pays the processes' warm-up, left out) against the air time of the payload
  plus inference.
- ``train_parts``: time to classification (TX starts encoding -> the RX has classified, on
  the RX's emulated timeline) of live rounds at alpha 20 on a constant 64-QAM top-MCS link
  (~170 Mb/s), one PAYLOAD (0 parts: encode, air time and adaptation one after the other)
  against the training vectors in K parts first (they overlap), next to the sum and the
  max of encode, air time and adaptation.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch
import zmq

from common.learn import fastlora, process_tuning
from common.modes.pca_lora.adapt_config import DEFAULT_RECIPE, RECIPES, AdaptConfig
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.budget import PayloadLayout, n_train_max
from common.learn.models import mlp_shape, predict
from common.wire.protocol import decode, encode
from common.modes.pca_lora.messages import Payload
from semalign.campaigns.machine import machine_info
from semalign.campaigns.pca_lora.runner import campaign_inputs, reference_rate_bps


def _median_s(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _best_cpu_s(fn, repeats: int) -> float:
    """Least CPU time of this thread over ``repeats`` calls of ``fn`` (s): with one torch thread, time
    other processes take on a shared machine is not counted (the calibration's clock)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def gemm_rate(repeats: int) -> float:
    """Best achieved FLOP/s of float32 products on one thread ((m x 784) @ (784 x 256), m = 256 and 4096)."""
    best = 0.0
    for m in (256, 4096):
        a, b = torch.randn(m, 784), torch.randn(784, 256)
        a @ b
        t = _median_s(lambda: [a @ b for _ in range(5)], repeats) / 5
        best = max(best, 2 * m * 784 * 256 / t)
    return best


def memcpy_rate(repeats: int, nbytes: int = 64 * 2**20) -> float:
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    return nbytes / _median_s(lambda: np.copyto(dst, src), repeats)


def zmq_round_trip(nbytes: int, repeats: int) -> float:
    """Median seconds for a DEALER -> ROUTER -> DEALER echo of ``nbytes`` over tcp://127.0.0.1."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    stop = threading.Event()

    def echo():
        while not stop.is_set():
            if router.poll(50):
                router.send_multipart(router.recv_multipart())

    th = threading.Thread(target=echo, daemon=True)
    th.start()
    msg = os.urandom(nbytes)
    try:
        def once():
            dealer.send(msg)
            if not dealer.poll(10_000):
                raise RuntimeError("no echo within 10 s")
            dealer.recv()

        once()
        return _median_s(once, repeats)
    finally:
        stop.set()
        th.join()
        dealer.close()
        router.close()
        ctx.term()


def recipe_step_gemms(recipe: str, alpha: int, dims: list[int], rank: int, batch: int, stage: int = 0,
                      precision: str = "fp32") -> list:
    """The products of one training step of ``recipe`` (stage 1 = staged's all-layer steps), as its
    trainer runs them (:func:`fastlora.lora_step_gemms`, :func:`fastlora.dense_step_gemms`; ``precision``:
    the frozen layers' of the first-layer step)."""
    if recipe == "lora":
        return fastlora.lora_step_gemms(alpha, dims, rank, batch)
    trained = 1 if stage == 0 else len(dims) - 1
    return fastlora.dense_step_gemms([alpha, *dims[1:]], trained, batch, precision if trained < len(dims) - 1
                                     else "fp32")


def recipe_step_flops(recipe: str, alpha: int, dims: list[int], rank: int, batch: int, stage: int = 0) -> float:
    """FLOPs of one training step of ``recipe`` (:func:`recipe_step_gemms`)."""
    return fastlora.gemm_flops(recipe_step_gemms(recipe, alpha, dims, rank, batch, stage))


_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gemm_floor_ms(gemms: list, repeats: int, calls: int = 20) -> float:
    """The step's FLOP floor at the GEMM rate measured at its own shapes: the sum over its products
    of the time one product of that shape and dtype takes alone (ms; each the best over ``repeats``
    runs of ``calls`` products in CPU time of this thread, operands hot in cache, one thread)."""
    times: dict = {}
    for m, k, n, dt in set(gemms):
        a = torch.randn(m, k).to(_TORCH_DTYPES[dt])
        b = torch.randn(k, n).to(_TORCH_DTYPES[dt])
        a @ b
        times[(m, k, n, dt)] = _best_cpu_s(lambda: [a @ b for _ in range(calls)], repeats) / calls
    return sum(times[g] for g in gemms) * 1e3


def step_times(model, codec, alpha: int, dims: list[int], repeats: int, k: int = 60, batch: int = 256) -> dict:
    """ms per training step of each recipe's trainer at ``alpha`` (``batch`` vectors; least CPU time of
    this thread over ``repeats`` runs of ``k`` steps) in fp32 and, where the recipe has frozen layers, bf16 (forced, emulated where
    the CPU has no bf16 arithmetic), each against its FLOP floor (:func:`gemm_floor_ms`)."""
    from common.modes.pca_lora.folded_mlp import mlp_weights

    weights, biases = mlp_weights(model)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(16 * batch, alpha, generator=gen)
    y = torch.randint(0, dims[-1], (16 * batch,), generator=gen)
    native = fastlora.native_bf16()
    out = {}
    for recipe in RECIPES:
        strategy = LoraAlignment(adapt=AdaptConfig(recipe=recipe, batch_size=batch))
        for stage in range(2 if recipe == "staged" else 1):
            if recipe == "staged" and stage == 0:
                continue  # stage 1 of staged is the first-layer step
            label = recipe if stage == 0 else "staged stage 2 (all layers)"
            frozen = recipe == "first-layer"  # the only step with frozen layers (lora: fp32 only)
            # the default recipe's step: its own, or (staged) the first-layer step its first stage runs
            default = recipe == DEFAULT_RECIPE or (recipe == "first-layer" and DEFAULT_RECIPE == "staged")
            row = {"alpha": alpha, "batch": batch, "default": default,
                   "flops": recipe_step_flops(recipe, alpha, dims, 8, batch, stage)}
            for precision in ("fp32", "bf16"):
                if precision == "bf16" and not frozen:
                    row[precision] = None
                    continue
                run = lambda: strategy._train_synthetic(weights, biases, z, y, codec, stage, k,  # noqa: E731
                                                        precision)
                run()
                ms = _best_cpu_s(run, repeats) * 1e3 / k
                gemms = recipe_step_gemms(recipe, alpha, dims, 8, batch, stage, precision)
                floor = gemm_floor_ms(gemms, repeats)
                row[precision] = {"ms_per_step": ms, "floor_ms_per_step": floor, "ratio": ms / floor,
                                  "gemm_gflops_at_step_shapes": row["flops"] / floor / 1e6, "gemms": len(gemms)}
            row["bf16_native"] = native
            out[label] = row
    return out


def precision_accuracy(codec, model, data, alphas: tuple[int, ...] = (10, 20, 40), seeds: int = 3,
                       n_test: int = 500, recipe: str = DEFAULT_RECIPE) -> dict:
    """Accuracy of ``recipe`` with its frozen layers in fp32 and in bf16 on the same payloads and step
    counts: per alpha and seed the reference-budget payload (:func:`build_round`), the plan the fp32
    calibration gives on this machine (recorded: ``stage_steps``), run uncapped in each precision;
    accuracy on the whole (quantized) test set. ``loss_pp``: mean fp32 - bf16 accuracy, percentage points."""
    from common.learn.models import accuracy
    from common.modes.pca_lora.calibration import CALIBRATIONS, calibration_key
    from semalign.campaigns.pca_lora.runner import build_round, quantized_test

    layout = PayloadLayout.for_dtype("float16")
    rate = reference_rate_bps()
    b_max = int(rate * 0.05 / 8)
    planner = LoraAlignment(adapt=AdaptConfig(recipe=recipe, precision="fp32"))
    planner.calibrate(model, codec)
    cal = CALIBRATIONS[calibration_key(planner.config, planner.lora, model, codec)]
    runner = LoraAlignment(adapt=AdaptConfig(recipe=recipe, budget_ms=None, deep_budget_ms=None))
    out = {}
    for alpha in (a for a in alphas if a <= codec.d_max):
        x_eval = quantized_test(codec, data, alpha, "float16")
        rows = []
        for seed in range(seeds):
            rd = build_round(codec, data, alpha, seed, layout, n_test=n_test, b_max_bytes=b_max, rate_bps=rate)
            deep = alpha < planner.config.deep_fraction * codec.d_max
            plan = cal.plan(planner.config, alpha, planner.config.deep_budget_ms if deep else
                            planner.config.budget_ms)
            row = {"seed": seed, "n_train": rd.n_train}
            for precision in ("fp32", "bf16"):
                adapted, rep, _ = runner.adapt_state(model, rd.z_train, rd.y_train, codec, plan_steps=plan,
                                                     _precision=precision)
                row[precision] = accuracy(predict(adapted, x_eval), data.y_test)
                row["stage_steps"], row["kept_" + precision] = list(rep.stage_steps), rep.kept
            rows.append(row)
        mean = {p: float(np.mean([r[p] for r in rows])) for p in ("fp32", "bf16")}
        out[str(alpha)] = {"rows": rows, "fp32": mean["fp32"], "bf16": mean["bf16"],
                           "loss_pp": (mean["fp32"] - mean["bf16"]) * 100}
    return out


class _PeakRss:
    """Polls ``VmHWM`` (the post-exec peak RSS) of a process in ``/proc`` until it exits.

    ``ru_maxrss`` from ``wait4`` is not used: Linux carries the forking
    parent's RSS into the child's figure across exec.
    """

    def __init__(self, pid: int, period_s: float = 0.02):
        self.pid, self.period_s, self.peak_kib = pid, period_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        path = Path(f"/proc/{self.pid}/status")
        while not self._stop.is_set():
            try:
                for line in path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            except (OSError, ValueError, IndexError):
                return
            self._stop.wait(self.period_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def daemon_rss(artifacts: Path, dataset: str, out: Path, data_dir: str | None) -> dict:
    """Peak RSS (MiB) of an RX and a TX process during a 9-round loopback run of the demo trace (``VmHWM``)."""
    from semalign.campaigns.processes import free_port, launch, stop_process

    if not Path("/proc/self/status").exists():
        return {"rx_peak_rss_mib": None, "tx_peak_rss_mib": None, "note": "no /proc on this system"}
    address = f"tcp://127.0.0.1:{free_port()}"
    common = {"artifacts": artifacts, "dataset": dataset, "insecure": True}
    out.mkdir(parents=True, exist_ok=True)
    rx = launch("rx", {"bind": address, "link": "loopback", "trace": "demo", "trace_rounds": 9, **common},
                out / "rx.log")
    rx_peak = _PeakRss(rx.pid)
    try:
        tx = launch("tx", {"connect": address, "rounds": 9, "out": out / "run", "data_dir": data_dir, **common},
                    out / "tx.log")
        tx_peak = _PeakRss(tx.pid)
        tx.wait(timeout=600)
        tx_mib = tx_peak.stop()
    finally:
        rx_mib = rx_peak.stop()
        stop_process(rx)
    if tx.returncode != 0:
        raise RuntimeError(f"bench TX exited with {tx.returncode}; see {out / 'tx.log'}")
    return {"rx_peak_rss_mib": rx_mib, "tx_peak_rss_mib": tx_mib, "rounds_dir": str(out / "run")}


def round_latency_d_pre(run_dir: Path) -> dict | None:
    """Round latency of the run's rounds at alpha = d_pre (TX starts encoding -> RESULT back, ms)
    against the payload's air time plus the RX's inference, medians (round 0, the warm-up, left out)."""
    from common.results.log import load_results

    try:
        rounds = [r for r in load_results(run_dir)["rounds"] if r.get("status") == "ok"]
    except (OSError, ValueError, KeyError):
        return None
    lean = [r for r in rounds if r.get("nothing_to_align") == "d_pre" and r["round"] > 0]  # 0: warm-up
    if not lean:
        return None
    lat = [r["latency_ms"]["encode"] + r["latency_ms"]["pack"] + r["latency_ms"]["rtt"] for r in lean]
    floor = [r["airtime_ms"] + r["latency_ms"]["classify"] for r in lean]
    return {"rounds": len(lean), "n_train": [r["n_train"] for r in lean], "payload_rule": lean[0].get("payload_rule"),
            "round_ms": float(np.median(lat)), "airtime_plus_inference_ms": float(np.median(floor)),
            "airtime_ms": float(np.median([r["airtime_ms"] for r in lean])),
            "ratio": float(np.median(lat) / np.median(floor))}


def train_parts_rounds(artifacts: Path, dataset: str, out: Path, data_dir: str | None,
                       parts: tuple[int, ...] = (0, 1, 2, 4, 8), rounds: int = 6, passes: int = 3) -> dict:
    """Live rounds at alpha 20 on a constant ~170 Mb/s link for each ``train_parts`` value (one RX; per
    pass one TX run per value, the values interleaved so that other load on the machine falls on all of
    them alike; the same seeds, so all carry the same vectors): medians (ms) over every pass's rounds of
    the time to classification and of its parts, the first round of each run left out (warm-up)."""
    from common.results.log import load_results
    from semalign.campaigns.processes import free_port, launch, stop_process

    out.mkdir(parents=True, exist_ok=True)
    trace = out / "constant_qam64_top.csv"
    trace.write_text("time_s,mcs,mcs_table,bler\n0,28,qam64,0\n")
    address = f"tcp://127.0.0.1:{free_port()}"
    common = {"artifacts": artifacts, "dataset": dataset, "insecure": True}
    rx = launch("rx", {"bind": address, "link": "loopback", "trace": str(trace), "trace_rounds": 1, **common},
                out / "rx.log")
    res, by_k = {}, {k: [] for k in parts}
    try:
        for p, k in ((p, k) for p in range(passes) for k in parts):
            log, run = out / f"tx-parts{k}-pass{p}.log", out / f"parts{k}-pass{p}"
            tx = launch("tx", {"connect": address, "rounds": rounds, "out": run, "data_dir": data_dir,
                               "policy": "fixed:20", "train_parts": k, **common}, log)
            if tx.wait(timeout=600) != 0:
                raise RuntimeError(f"bench TX (train_parts {k}) exited with {tx.returncode}; see {log}")
            by_k[k] += [r for r in load_results(run)["rounds"] if r.get("status") == "ok"][1:]
        for k, ok in by_k.items():
            if not ok:
                raise RuntimeError(f"bench TX (train_parts {k}): no successful rounds; see {out}")

            def med(get):
                return float(np.median([get(r) for r in ok]))

            lat = lambda r: r["latency_ms"]  # noqa: E731
            res[str(k)] = {
                "rounds": len(ok), "alpha": ok[0]["alpha"], "n_train": med(lambda r: r["n_train"]),
                "payload_bytes": med(lambda r: r["payload_bytes"]), "airtime_ms": med(lambda r: r["airtime_ms"]),
                "encode_ms": med(lambda r: lat(r)["encode"]), "finetune_ms": med(lambda r: lat(r)["finetune"]),
                "to_classification_ms": med(lambda r: lat(r)["classification"]),
                "acc_adapted": med(lambda r: r["acc_adapted"]),
                "sum_ms": med(lambda r: lat(r)["encode"] + r["airtime_ms"] + lat(r)["finetune"]),
                "max_ms": med(lambda r: max(lat(r)["encode"], r["airtime_ms"], lat(r)["finetune"])),
            }
    finally:
        stop_process(rx)
    return res


def run_bench(artifacts: Path, dataset: str, out: Path, data_dir: str | None = None, repeats: int = 7,
              live: bool = True) -> dict:
    inputs = campaign_inputs(artifacts, dataset, out, data_dir)
    codec, model, data = inputs.codec, inputs.model, inputs.data
    d_in, hidden, n_classes = mlp_shape(model)
    dims = [d_in, *hidden, n_classes]
    rate_bps = reference_rate_bps()
    flops = gemm_rate(repeats)
    mem = memcpy_rate(repeats)
    res: dict = {"machine": machine_info(), "dataset": dataset, "artifacts": str(artifacts),
                 "reference_rate_bps": rate_bps, "gemm_flops_per_s": flops, "memcpy_bytes_per_s": mem}
    small_alpha = min(20, codec.d_max)

    # PCA encode
    x = data.x_test[: min(10000, len(data.x_test))]
    enc = {}
    for alpha in sorted({small_alpha, codec.d_max}):
        t = _median_s(lambda: codec.encode(x, alpha), repeats)
        per_vec = 2 * codec.d_raw * alpha
        enc[str(alpha)] = {"vectors_per_s": len(x) / t, "floor_vectors_per_s": flops / per_vec,
                           "flop_per_vector": per_vec}
    res["pca_encode"] = enc

    # pack / unpack a ~1 MB payload at the reference budget
    layout = PayloadLayout.for_dtype("float16")
    b_max = int(rate_bps * 0.05 / 8)
    n_test = min(500, len(data.y_test))
    n = min(n_train_max(b_max, small_alpha, n_test, layout), len(data.y_train)) + n_test
    xs = np.concatenate([data.x_test[:n_test], data.x_train[: n - n_test]])
    ys = np.concatenate([data.y_test[:n_test], data.y_train[: n - n_test]])
    z = codec.encode(xs, small_alpha)
    ids = np.arange(n, dtype=np.uint32)
    frame = encode(Payload.build(1, 0, codec.fingerprint, "float16", z, ids, ys, n_test))
    t_pack = _median_s(lambda: encode(Payload.build(1, 0, codec.fingerprint, "float16", z, ids, ys, n_test)),
                       repeats)
    t_unpack = _median_s(lambda: decode(frame).features(), repeats)
    mb = len(frame) / 1e6
    res["payload"] = {"alpha": small_alpha, "vectors": n, "bytes": len(frame),
                      "pack_mb_per_s": mb / t_pack, "unpack_mb_per_s": mb / t_unpack,
                      "floor_mb_per_s": mem / 1e6, "airtime_ms_at_reference_rate": 8 * len(frame) / rate_bps * 1e3}

    # ZeroMQ loopback round trip of 1 MB
    rtt = zmq_round_trip(2**20, repeats)
    res["zmq_rtt_1mib"] = {"ms": rtt * 1e3, "floor_ms_two_memcpy": 2 * 2**20 / mem * 1e3,
                           "airtime_ms_at_reference_rate": 8 * 2**20 / rate_bps * 1e3}

    # one training step of each recipe against its floor
    process_tuning.match_blas_threads()
    res["step"] = step_times(model, codec, small_alpha, dims, repeats)
    # what precision auto picks here for each dense recipe, from its own step timed in both
    res["precision_choice"] = {r: LoraAlignment(adapt=AdaptConfig(recipe=r)).precision_choice(model, codec)
                               for r in RECIPES if r != "lora"}
    # bf16 vs fp32 accuracy on the same payloads and step counts
    res["precision_accuracy"] = precision_accuracy(codec, model, data)

    # adaptation vs n_train, each recipe with the RX's defaults (calibrated step counts)
    adapt = []
    full_n = n - n_test
    strategies = {r: LoraAlignment(adapt=AdaptConfig(recipe=r)) for r in RECIPES}
    for strategy in strategies.values():
        strategy.calibrate(model, codec)
    for n_train in sorted({min(k, full_n) for k in (500, 2000, 8000, full_n)}):
        zt, yt = z[n_test:n_test + n_train], ys[n_test:n_test + n_train]
        row = {"alpha": small_alpha, "n_train": n_train}
        for recipe, strategy in strategies.items():
            reports = []
            t = _median_s(lambda: reports.append(strategy.adapt(model, zt, yt, codec)[1]), repeats)
            rep = reports[-1]
            batch = min(strategy.config.batch_size, n_train)
            floor_ms = sum(k * recipe_step_flops(recipe, small_alpha, dims, 8, batch, stage)
                           for stage, k in enumerate(rep.stage_steps)) / flops * 1e3
            row[recipe] = {"ms": t * 1e3, "steps": rep.steps, "stage_steps": list(rep.stage_steps),
                           "ms_per_step": t * 1e3 / max(rep.steps, 1), "floor_ms": floor_ms,
                           "cut_by_cap": any(r.cut_by_cap for r in reports),
                           "deterministic": all(r.steps == rep.steps for r in reports)}
        row["default"] = row[DEFAULT_RECIPE]
        adapt.append(row)
    res["adapt"] = adapt

    # inference of t vectors
    inf = []
    for t_vec in sorted({min(500, len(data.x_test)), len(data.x_test)}):
        xh = codec.decode(codec.encode(data.x_test[:t_vec], small_alpha))
        t = _median_s(lambda: predict(model, xh), repeats)
        fl = 2 * t_vec * sum(a * b for a, b in zip(dims[:-1], dims[1:]))
        inf.append({"t": t_vec, "ms": t * 1e3, "floor_ms": fl / flops * 1e3})
    res["inference"] = inf

    if live:
        res["rss"] = daemon_rss(artifacts, dataset, out / "daemons", data_dir)
        res["round_d_pre"] = round_latency_d_pre(Path(res["rss"].pop("rounds_dir")))
        res["train_parts"] = train_parts_rounds(artifacts, dataset, out / "train_parts", data_dir)
    res["loadavg_end"] = list(os.getloadavg())
    (out / "bench.json").write_text(json.dumps(res, indent=1))
    return res


def print_bench(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"semalign bench ({res['dataset']}; {res['machine']['cpu']}, load "
                    f"{res['machine']['loadavg'][0]:.2f})", header_style="bold")
    for name in ("figure", "measured", "floor", "note"):
        t.add_column(name, justify="left" if name in ("figure", "note") else "right")
    t.add_row("GEMM (1 thread)", f"{res['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s", "", "compute reference")
    t.add_row("memcpy", f"{res['memcpy_bytes_per_s'] / 1e9:.1f} GB/s", "", "memory reference")
    for alpha, e in res["pca_encode"].items():
        t.add_row(f"PCA encode alpha={alpha}", f"{e['vectors_per_s'] / 1e6:.2f} M vec/s",
                  f"{e['floor_vectors_per_s'] / 1e6:.2f} M vec/s", f"{e['flop_per_vector']} FLOP/vector")
    p = res["payload"]
    t.add_row(f"pack {p['bytes'] / 1e6:.2f} MB", f"{p['pack_mb_per_s']:.0f} MB/s", f"{p['floor_mb_per_s']:.0f} MB/s",
              f"air time {p['airtime_ms_at_reference_rate']:.1f} ms")
    t.add_row("unpack + dequantize", f"{p['unpack_mb_per_s']:.0f} MB/s", f"{p['floor_mb_per_s']:.0f} MB/s", "")
    r = res["zmq_rtt_1mib"]
    t.add_row("ZeroMQ RTT 1 MiB", f"{r['ms']:.2f} ms", f"{r['floor_ms_two_memcpy']:.2f} ms",
              f"air time {r['airtime_ms_at_reference_rate']:.1f} ms")
    for a in res["adapt"]:
        for label in RECIPES:
            x = a[label]
            t.add_row(f"adapt a={a['alpha']} n={a['n_train']} ({label}{', default' if label == DEFAULT_RECIPE else ''})",
                      f"{x['ms']:.0f} ms ({'+'.join(map(str, x['stage_steps']))} steps)",
                      f"{x['floor_ms']:.0f} ms", f"{x['ms_per_step']:.2f} ms/step"
                      + (", cut by the cap" if x["cut_by_cap"] else ""))
    for i in res["inference"]:
        t.add_row(f"inference t={i['t']}", f"{i['ms']:.2f} ms", f"{i['floor_ms']:.2f} ms", "")
    d = res.get("round_d_pre")
    if d:
        t.add_row(f"round at alpha=d_pre ({d['payload_rule']}, n_train {d['n_train'][0]})", f"{d['round_ms']:.1f} ms",
                  f"{d['airtime_plus_inference_ms']:.1f} ms", f"{d['ratio']:.2f}x air time + inference")
    for k, x in (res.get("train_parts") or {}).items():
        t.add_row(f"round a={x['alpha']}, {k} training parts first", f"{x['to_classification_ms']:.1f} ms",
                  f"{x['max_ms']:.1f} ms", f"to classification (acc {x['acc_adapted']:.4f}); encode "
                  f"{x['encode_ms']:.0f} + air {x['airtime_ms']:.0f} + adapt {x['finetune_ms']:.0f} = "
                  f"{x['sum_ms']:.0f} ms, floor: their max")
    if res.get("rss"):
        t.add_row("peak RSS RX / TX", f"{res['rss']['rx_peak_rss_mib']:.0f} / {res['rss']['tx_peak_rss_mib']:.0f} MiB",
                  "", "VmHWM of each process")
    Console(width=160).print(t)
    print_steps(res)
    print_precision(res)


def print_precision(res: dict) -> None:
    """auto's precision choice per recipe, and bf16 vs fp32 accuracy at the same steps."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="frozen layers: bf16 vs fp32 (same payloads, same step counts; accuracy on the test set)",
              header_style="bold")
    for name in ("alpha", "steps per stage", "fp32", "bf16", "bf16 - fp32"):
        t.add_column(name, justify="right")
    for alpha, x in (res.get("precision_accuracy") or {}).items():
        steps = sorted({"+".join(map(str, r["stage_steps"])) for r in x["rows"]})
        t.add_row(alpha, ", ".join(steps), f"{x['fp32'] * 100:.2f} %", f"{x['bf16'] * 100:.2f} %",
                  f"{(x['bf16'] - x['fp32']) * 100 + 0.0:+.3f} pp")
    Console(width=160).print(t)
    for recipe, c in (res.get("precision_choice") or {}).items():
        ms = c.get("step_ms")
        timing = f": step {ms['fp32']:.3f} ms fp32, {ms['bf16']:.3f} ms bf16" if ms else ""
        print(f"precision auto, {recipe}: {c['precision']} ({c['by']}{timing})")


def print_steps(res: dict) -> None:
    """The ``step`` section: each recipe's step against its FLOP floor at its own shapes, fp32 and bf16."""
    from rich.console import Console
    from rich.table import Table

    steps = res.get("step") or {}
    if not steps:
        return
    native = next(iter(steps.values())).get("bf16_native")
    note = {True: "bf16 native (avx512_bf16/amx_bf16)", False: "bf16 EMULATED: this CPU has no bf16 arithmetic",
            None: "bf16 support unknown (no /proc/cpuinfo)"}[native]
    t = Table(title=f"train step vs FLOP floor at the step's GEMM shapes ({note})", header_style="bold")
    for name in ("step", "MFLOP", "precision", "measured", "floor", "ratio", "GEMM rate at its shapes"):
        t.add_column(name, justify="left" if name in ("step", "precision") else "right")
    for label, x in steps.items():
        for precision in ("fp32", "bf16"):
            p = x.get(precision)
            if p is None:
                t.add_row("", "", precision, "n/a", "", "", "fp32 only (no frozen layers)")
                continue
            t.add_row(f"a={x['alpha']} b={x['batch']} {label}{' (default)' if x['default'] else ''}"
                      if precision == "fp32" else "", f"{x['flops'] / 1e6:.1f}" if precision == "fp32" else "",
                      precision, f"{p['ms_per_step']:.3f} ms", f"{p['floor_ms_per_step']:.3f} ms",
                      f"{p['ratio']:.1f}x", f"{p['gemm_gflops_at_step_shapes']:.1f} GFLOP/s")
    Console(width=160).print(t)
