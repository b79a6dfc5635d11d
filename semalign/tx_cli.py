"""``tx-node`` (also ``semalign tx``): the TX daemon's command line, generated from :data:`TX_OPTIONS`."""

from __future__ import annotations

import typer

from common.net.security import tx_security
from semalign.cli_support import fail, make_app, options_from, setup_logging, stop_on_signals
from semalign.options import command, tx_options
from tx_node.app import run_tx


def _run(cli: dict, config) -> None:
    setup_logging(cli.pop("log_level"), "tx")
    opts, _ = options_from(config, "tx", cli)
    stop = stop_on_signals()
    try:
        records = run_tx(opts, tx_security(opts.get("curve_secret"), opts.get("curve_server_public"),
                                         bool(opts.get("insecure"))), stop)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    ok = sum(r.status == "ok" for r in records)
    typer.echo(f"{ok}/{len(records)} rounds ok; results in {opts.get('out') or 'runs/latest'}")


tx = command("tx", tx_options(), _run, "Run the TX daemon for a number of rounds and write the results files.")


def main() -> None:
    app = make_app("The semalign TX daemon.")
    app.command()(tx)
    app()
