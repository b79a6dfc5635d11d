"""What this CPU is, from ``/proc/cpuinfo``: its model name and the instruction-set flags that decide
how fast (and whether natively) the trainers' float32 and bfloat16 products run.

One reader for every user: :func:`common.learn.fastlora.native_bf16` and the machine record of the
campaigns (:func:`semalign.campaigns.machine.machine_info`).
"""

from __future__ import annotations

import functools
import os
import platform

# the flags a result's speed depends on: AVX-512 float32, AVX-512 bf16 dot products, AMX tiles (bf16)
SPEED_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512_BF16 / AMX-BF16, Arm's "bf16" feature


@functools.lru_cache(maxsize=None)  # read once per process: the RX asks on every fixed-steps round
def _cpuinfo(path: str = "/proc/cpuinfo") -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def cpu_flags(text: str | None = None) -> set[str] | None:
    """The first processor's flags (x86 ``flags``, Arm ``Features``); None where ``/proc/cpuinfo``
    cannot be read or lists none. ``text``: a cpuinfo text to parse instead (tests)."""
    text = _cpuinfo() if text is None else text
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return None


def cpu_model(text: str | None = None) -> str:
    """The CPU's model name (``platform.processor()`` where ``/proc/cpuinfo`` has none)."""
    text = _cpuinfo() if text is None else text
    for line in (text or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_record() -> dict:
    """``{"cpu": model name, "cores": logical CPUs, "cpu_flags": {flag: bool for SPEED_FLAGS} or None}``."""
    flags = cpu_flags()
    return {"cpu": cpu_model(), "cores": os.cpu_count(),
            "cpu_flags": None if flags is None else {f: f in flags for f in SPEED_FLAGS}}
