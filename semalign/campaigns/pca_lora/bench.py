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

Here: the run (``bench.json``); the references and timing helpers in
:mod:`.bench_floors`, the training steps in :mod:`.bench_steps`, the live
daemons' figures in :mod:`.bench_live`, the printed tables in
:mod:`.bench_report`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from common.learn import process_tuning
from common.modes.pca_lora.adapt_config import DEFAULT_RECIPE, RECIPES, AdaptConfig
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.budget import PayloadLayout, n_train_max
from common.learn.models import mlp_shape, predict
from common.wire.protocol import decode, encode
from common.modes.pca_lora.messages import Payload
from semalign.campaigns.machine import machine_info
from semalign.campaigns.pca_lora.bench_floors import gemm_rate, median_s, memcpy_rate, recipe_step_flops, zmq_round_trip
from semalign.campaigns.pca_lora.bench_live import daemon_rss, round_latency_d_pre, train_parts_rounds
from semalign.campaigns.pca_lora.bench_steps import precision_accuracy, step_times
from semalign.campaigns.pca_lora.runner import campaign_inputs, reference_rate_bps


def run_bench(artifacts: Path, dataset: str, out: Path, data_dir: str | None = None, repeats: int = 7,
              live: bool = True) -> dict:
    """Run the figures of the module docstring (``live``: with the daemons' ``rss``, ``round_d_pre`` and
    ``train_parts``); writes ``out/bench.json`` and returns it."""
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
        t = median_s(lambda: codec.encode(x, alpha), repeats)
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
    t_pack = median_s(lambda: encode(Payload.build(1, 0, codec.fingerprint, "float16", z, ids, ys, n_test)),
                       repeats)
    t_unpack = median_s(lambda: decode(frame).features(), repeats)
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
            t = median_s(lambda: reports.append(strategy.adapt(model, zt, yt, codec)[1]), repeats)
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
        t = median_s(lambda: predict(model, xh), repeats)
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
