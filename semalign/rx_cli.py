"""``rx-node`` (also ``semalign rx``): the RX daemon's command line, generated from :data:`RX_OPTIONS`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from common.net.security import rx_security, tx_security
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


def rx_worker(spec: Optional[Path] = typer.Option(None, help="The worker's spec file (written by the RX front "
                                                               "end when it starts its own workers)"),
              generation: int = typer.Option(0, help="Restarts of this worker slot so far (with --spec)"),
              connect: Optional[str] = typer.Option(None, help="Join the RX front end at this address as a "
                                                    "worker on another host, e.g. tcp://10.0.0.2:5556 (its "
                                                    "--worker-bind)"),
              curve_secret: Optional[Path] = typer.Option(None, help="CURVE: this worker's secret certificate "
                                                          "NAME.key_secret (its NAME.key goes into the RX's "
                                                          "--worker-allow directory)"),
              curve_server_public: Optional[Path] = typer.Option(None, help="CURVE: the RX's public "
                                                                 "certificate (its NAME.key)"),
              insecure: bool = typer.Option(False, help="Join over plain TCP (the RX runs --insecure)"),
              join_timeout_s: float = typer.Option(300.0, help="Give up when the front end has not answered "
                                                   "after this long, s"),
              log_level: str = typer.Option("INFO", help="Log level: DEBUG, INFO, WARNING, ERROR")) -> None:
    """One RX worker process: started by `semalign rx --workers W` itself (--spec), or by hand or systemd on
    another host to join an RX front end that runs --worker-bind (--connect; docs/deploy.md)."""
    from rx_node.worker_process import run_remote_worker, run_worker
    from rx_node.worker_wire import read_spec

    if (spec is None) == (connect is None):
        fail("give exactly one of --spec (a worker the front end started) or --connect (a worker on another host)")
    if spec is not None:
        setup_logging(log_level, f"rx-w{read_spec(spec)['index']}")
        raise typer.Exit(run_worker(spec, generation))
    setup_logging(log_level, "rx-worker")
    try:
        security = tx_security(curve_secret, curve_server_public, insecure)
        code = run_remote_worker(connect, security, join_timeout_s)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    raise typer.Exit(code)


def main() -> None:
    app = make_app("The semalign RX daemon.")
    app.command()(rx)
    app()
