"""``semalign bench``'s references and timing helpers: the GEMM rate (FLOP/s) and memcpy bandwidth (B/s)
of this machine, a loopback ZeroMQ round trip (s), the products and FLOPs of a recipe's training step and
their floor (ms) at the step's own shapes."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import torch
import zmq

from common.learn import fastlora


def median_s(fn, repeats: int) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``fn``."""
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def best_cpu_s(fn, repeats: int) -> float:
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
        t = median_s(lambda: [a @ b for _ in range(5)], repeats) / 5
        best = max(best, 2 * m * 784 * 256 / t)
    return best


def memcpy_rate(repeats: int, nbytes: int = 64 * 2**20) -> float:
    """Median bytes/s of a numpy copy of ``nbytes``."""
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    return nbytes / median_s(lambda: np.copyto(dst, src), repeats)


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
        return median_s(once, repeats)
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
        times[(m, k, n, dt)] = best_cpu_s(lambda: [a @ b for _ in range(calls)], repeats) / calls
    return sum(times[g] for g in gemms) * 1e3
