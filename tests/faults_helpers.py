"""Shared by the fault and shutdown tests: a TX command line and waiting for results rows."""

import sys
import time


def tx_cmd(artifacts, address, out, rounds, *extra):
    return [sys.executable, "-m", "semalign", "tx", "--connect", address, "--artifacts", str(artifacts),
            "--dataset", "digits", "--rounds", str(rounds), "--out", str(out), "--n-test", "20",
            "--n-min-train", "40", "--max-train", "60", "--deadline-s", "0.002", "--insecure", *extra]


def wait_rows(out, n, timeout_s=60.0):
    """Block until ``out/results.jsonl`` has ``n`` lines."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jsonl = out / "results.jsonl"
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)
    raise TimeoutError(f"{out}: fewer than {n} rounds after {timeout_s} s")
