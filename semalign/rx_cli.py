"""``rx-node`` (also ``semalign rx``): the RX daemon's command line, generated from :data:`RX_OPTIONS`."""

from __future__ import annotations

import logging

from common.net.security import rx_security
from rx_node.app import run_rx
from semalign.cli_support import fail, make_app, options_from, setup_logging, stop_on_signals
from semalign.options import command, rx_options


def _run(cli: dict, config) -> None:
    setup_logging(cli.pop("log_level"), "rx")
    opts, cfg = options_from(config, "rx", cli)
    stop = stop_on_signals()
    try:
        stats = run_rx(opts, cfg.get("link", {}), rx_security(opts.get("curve_secret"), opts.get("curve_allow"), bool(opts.get("insecure"))), stop)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    logging.getLogger("semalign.rx").info("RX exiting: %d rounds ok, %d failed %s", stats.ok, stats.failed,
                                          stats.errors_by_code or "")


rx = command("rx", rx_options(), _run, "Run the RX daemon: serve the given alignment modes until SIGTERM.")


def main() -> None:
    app = make_app("The semalign RX daemon.")
    app.command()(rx)
    app()
