"""``rx-node`` (also ``semalign rx``): the RX daemon's command line, generated from :data:`RX_OPTIONS`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from common.net.security import rx_security
from rx_node.app import run_rx
from semalign.cli_support import fail, make_app, options_from, setup_logging, stop_on_signals
from semalign.options import command, rx_options


def _run(cli: dict, config) -> None:
    setup_logging(cli.pop("log_level"), "rx")
    opts, cfg = options_from(config, "rx", cli)
    stop = stop_on_signals()
    try:
        stats = run_rx(opts, cfg.get("link", {}), rx_security(opts.get("curve_secret"), opts.get("curve_allow"), bool(opts.get("insecure"))), stop,
                       worker_argv=[sys.executable, "-m", "semalign", "rx-worker"])
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    logging.getLogger("semalign.rx").info("RX exiting: %d rounds ok, %d failed %s", stats.ok, stats.failed,
                                          stats.errors_by_code or "")


rx = command("rx", rx_options(), _run, "Run the RX daemon: serve the given alignment modes until SIGTERM.")


def rx_worker(spec: Path = typer.Option(..., help="The worker's spec file (written by the RX front end)"),
              generation: int = typer.Option(0, help="Restarts of this worker slot so far"),
              log_level: str = typer.Option("INFO", help="Log level: DEBUG, INFO, WARNING, ERROR")) -> None:
    """One RX worker process: started by `semalign rx --workers W` (W > 1), not by hand."""
    from rx_node.workers import read_spec, run_worker

    setup_logging(log_level, f"rx-w{read_spec(spec)['index']}")
    raise typer.Exit(run_worker(spec, generation))


def main() -> None:
    app = make_app("The semalign RX daemon.")
    app.command()(rx)
    app()
