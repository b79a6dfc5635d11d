"""``tx-node`` (also ``semalign tx``): the TX daemon's command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from semalign.cli_support import (
    ArtifactsOpt,
    ConfigOpt,
    DataDirOpt,
    DatasetOpt,
    LogOpt,
    SeedOpt,
    fail,
    make_app,
    options_from,
    setup_logging,
    stop_on_signals,
)
from common.net.security import tx_security
from tx_node.app import run_tx

TX_HELP = {
    "mode": "Alignment mode of the session: pca-lora [default: pca-lora].",
    "connect": "ZeroMQ address of the RX, e.g. tcp://10.0.0.2:5555 [default: tcp://127.0.0.1:5555].",
    "rounds": "Rounds to run [default: 9].",
    "out": "Directory for results.json and results.jsonl [default: runs/latest].",
    "n_test": "Test vectors per payload (t in eq. 2) [default: 500, or the whole test set if smaller].",
    "n_min_train": "Fewest training vectors a payload must carry when choosing alpha [default: 2000].",
    "max_train": "Cap on training vectors per payload, 0 = no cap [default: 0].",
    "value_dtype": "Bytes per value on the wire: float32 (4), float16 (2), int8 + scale (1) [default: float16].",
    "deadline_s": "Delivery deadline per payload, s; B_max = rate_bps * deadline_s / 8 [default: 0.05].",
    "result_timeout_s": "How long to wait for a RESULT, s [default: 30].",
    "hello_timeout_s": "How long to wait for each HELLO reply, s [default: 2].",
    "hello_attempts": "HELLO attempts before giving up on the RX [default: 30].",
    "policy": "Alpha policy: largest (the paper's), lookahead (best expected accuracy from --policy-table), "
              "or fixed:N [default: largest].",
    "policy_table": "policy_table.json written by `semalign sweep` (for --policy lookahead).",
    "curve_secret": "CURVE: the TX's secret certificate NAME.key_secret (from `semalign keygen`).",
    "curve_server_public": "CURVE: the RX's public certificate (its NAME.key).",
    "insecure": "Run plain TCP without CURVE (no authentication, no encryption); needed when no keys are given.",
    "resume": "Continue the campaign in --out: skip rounds recorded as ok/failed in results.jsonl.",
    "round_attempts": "Sends of a round's payload when its reply is lost (timeout, RX restart) [default: 3].",
    "backoff_s": "First back-off before a reconnect, s; doubles per attempt [default: 0.2].",
    "backoff_max_s": "Longest back-off between reconnects, s [default: 5].",
    "stop_grace_s": "On SIGTERM/SIGINT, wait this long for the round in flight, s [default: 5].",
}


def tx(
    mode: Optional[str] = typer.Option(None, help=TX_HELP["mode"]),
    connect: Optional[str] = typer.Option(None, help=TX_HELP["connect"]),
    rounds: Optional[int] = typer.Option(None, help=TX_HELP["rounds"]),
    out: Optional[Path] = typer.Option(None, help=TX_HELP["out"]),
    artifacts: Optional[Path] = ArtifactsOpt,
    dataset: Optional[str] = DatasetOpt,
    data_dir: Optional[str] = DataDirOpt,
    n_test: Optional[int] = typer.Option(None, help=TX_HELP["n_test"]),
    n_min_train: Optional[int] = typer.Option(None, help=TX_HELP["n_min_train"]),
    max_train: Optional[int] = typer.Option(None, help=TX_HELP["max_train"]),
    value_dtype: Optional[str] = typer.Option(None, help=TX_HELP["value_dtype"]),
    deadline_s: Optional[float] = typer.Option(None, help=TX_HELP["deadline_s"]),
    result_timeout_s: Optional[float] = typer.Option(None, help=TX_HELP["result_timeout_s"]),
    hello_timeout_s: Optional[float] = typer.Option(None, help=TX_HELP["hello_timeout_s"]),
    hello_attempts: Optional[int] = typer.Option(None, help=TX_HELP["hello_attempts"]),
    policy: Optional[str] = typer.Option(None, help=TX_HELP["policy"]),
    policy_table: Optional[Path] = typer.Option(None, help=TX_HELP["policy_table"]),
    curve_secret: Optional[Path] = typer.Option(None, help=TX_HELP["curve_secret"]),
    curve_server_public: Optional[Path] = typer.Option(None, help=TX_HELP["curve_server_public"]),
    insecure: Optional[bool] = typer.Option(None, "--insecure", help=TX_HELP["insecure"]),
    resume: Optional[bool] = typer.Option(None, "--resume", help=TX_HELP["resume"]),
    round_attempts: Optional[int] = typer.Option(None, help=TX_HELP["round_attempts"]),
    backoff_s: Optional[float] = typer.Option(None, help=TX_HELP["backoff_s"]),
    backoff_max_s: Optional[float] = typer.Option(None, help=TX_HELP["backoff_max_s"]),
    stop_grace_s: Optional[float] = typer.Option(None, help=TX_HELP["stop_grace_s"]),
    seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    log_level: str = LogOpt,
):
    """Run the TX daemon for a number of rounds and write the results files."""
    setup_logging(log_level, "tx")
    cli = {k: v for k, v in locals().items() if k not in ("config", "log_level")}
    opts, _ = options_from(config, "tx", cli)
    stop = stop_on_signals()
    try:
        records = run_tx(opts, tx_security(opts), stop)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    ok = sum(r.status == "ok" for r in records)
    typer.echo(f"{ok}/{len(records)} rounds ok; results in {opts.get('out') or 'runs/latest'}")


def main() -> None:
    app = make_app("The semalign TX daemon.")
    app.command()(tx)
    app()
