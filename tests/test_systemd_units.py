"""The systemd units set descriptor and memory limits (sane, documented, consistent)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "deploy" / "systemd"
_SUFFIX = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(value: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)", value)
    assert m, f"not a systemd byte size: {value!r}"
    return int(m.group(1)) * _SUFFIX[m.group(2)]


def _service(role: str) -> configparser.SectionProxy:
    cp = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    cp.optionxform = str
    cp.read(UNITS / f"semalign-{role}.service")
    return cp["Service"]


@pytest.mark.parametrize("role, min_nofile, max_memory, restart", [
    ("rx", 4096, 4 * 2**30, "on-failure"), ("tx", 1024, 2 * 2**30, "on-failure"),
    ("rx-worker", 4096, 4 * 2**30, "always"),  # it exits when its front end goes away, and must join again
])
def test_units_limit_descriptors_and_memory(role, min_nofile, max_memory, restart):
    svc = _service(role)
    nofile = int(svc["LimitNOFILE"])
    assert min_nofile <= nofile <= 65536
    high, hard = _bytes(svc["MemoryHigh"]), _bytes(svc["MemoryMax"])
    assert 2**30 <= high < hard <= max_memory  # reclaim/throttle before the OOM kill
    assert svc["Restart"] == restart           # an OOM kill is followed by a restart
    text = (UNITS / f"semalign-{role}.service").read_text()
    assert "docs/operations.md" in text        # the values are explained where they are set


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("role", ["rx", "tx", "rx-worker"])
def test_units_have_no_unknown_directives(role):
    out = subprocess.run(["systemd-analyze", "verify", str(UNITS / f"semalign-{role}.service")],
                         capture_output=True, text=True, timeout=60)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if line.strip() and "is not executable" not in line and "No such file" not in line]
    assert not [p for p in problems if "Unknown" in p or "Invalid" in p or "Failed to parse" in p], problems
