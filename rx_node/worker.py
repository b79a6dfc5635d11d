"""``python -m rx_node.worker --spec PATH``: one RX worker process (see :mod:`rx_node.workers`).

The front end starts workers itself; ``semalign rx-worker`` is the same
entry point with semalign's logging.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rx_node.worker_process import run_worker
from rx_node.worker_wire import read_spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rx_node.worker", description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, required=True, help="the worker's spec file, written by the front end")
    p.add_argument("--generation", type=int, default=0, help="restart count of this worker slot")
    args = p.parse_args(argv)
    if not logging.getLogger().handlers:
        spec = read_spec(args.spec)
        logging.basicConfig(level=getattr(logging, str(spec.get("log_level", "INFO")), logging.INFO),
                            stream=sys.stderr,
                            format=f"%(asctime)s rx-w{spec['index']} %(levelname)s %(message)s")
    return run_worker(args.spec, args.generation)


if __name__ == "__main__":
    sys.exit(main())
