"""Pieces every command line shares: option definitions, logging, signals, errors."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from semalign.config import load_toml, merged_options
from semalign.options import by_name, check_choices, check_modes, check_ranges, rx_options, tx_options

TX, RX = by_name(tx_options()), by_name(rx_options())
ConfigOpt = typer.Option(None, "--config", help="TOML file with options (command line wins).")
DatasetOpt = typer.Option(None, help=TX["dataset"].help_text)
DataDirOpt = typer.Option(None, help=TX["data_dir"].help_text)
ArtifactsOpt = typer.Option(None, help=TX["artifacts"].help_text)
SeedOpt = typer.Option(None, help=TX["seed"].help_text)
LogOpt = typer.Option("INFO", help="Log level: DEBUG, INFO, WARNING, ERROR.")


def setup_logging(level: str, role: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s {role} %(levelname)s %(message)s")


def stop_on_signals() -> threading.Event:
    """An Event set by SIGTERM/SIGINT, so loops finish the current step and exit cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def fail(message: str) -> None:
    """Print ``error: MESSAGE`` as one line on stderr and exit with status 2 (a usage error)."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(2)


def one_line(message: str) -> str:
    """``message`` with its line breaks folded, so an error is always one line."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip()) or str(message)


TABLE_OPTIONS = {"rx": RX, "tx": TX}  # the option specs of the tables the daemons read


def options_from(config: Optional[Path], table: str, cli: dict,
                 specs: Optional[dict] = None) -> tuple[dict, dict]:
    """The options of ``table``: the ``--config`` file's values, type-checked against ``specs`` (the
    daemons' option specs for ``rx``/``tx``), overridden by the command line's; then the values that must
    come from a fixed list (dataset, mode, link) are checked. Any problem ends in one ``error:`` line."""
    try:
        cfg = load_toml(config)
        specs = TABLE_OPTIONS.get(table) if specs is None else specs
        opts = merged_options(cfg, table, cli, set(cli), specs, config)
        if table in TABLE_OPTIONS:
            check_choices(opts, table)
            check_modes(opts, table)
            check_ranges(opts)
        return opts, cfg
    except ValueError as e:
        fail(str(e))


def make_app(help_text: str) -> typer.Typer:
    return typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, help=help_text)
