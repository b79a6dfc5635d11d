"""The machine a campaign ran on, as recorded in its results (any mode's)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine_info() -> dict:
    """CPU model, cores, platform, Python and torch versions, torch threads and the load average."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "loadavg": list(os.getloadavg())}
