"""The machine a campaign ran on, as recorded in its results (any mode's)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from common.cpu import cpu_record


def machine_info() -> dict:
    """CPU model, logical cores, the CPU flags speed depends on (``cpu_flags``: avx512f, avx512_bf16,
    amx_bf16, amx_tile -> bool; None without ``/proc/cpuinfo``), platform, Python and torch versions,
    torch threads and the load average (1, 5, 15 min)."""
    import torch

    return {**cpu_record(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "loadavg": list(os.getloadavg())}


def loadavg_line() -> str:
    """``/proc/loadavg`` as one line (load averages over 1, 5, 15 min, running/total tasks, last pid); "" where
    there is none."""
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return ""
