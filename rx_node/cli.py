"""``rx-node`` (also ``semalign rx``): the RX daemon's command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from common.cli_support import (
    ArtifactsOpt,
    ConfigOpt,
    DatasetOpt,
    LogOpt,
    SeedOpt,
    fail,
    make_app,
    options_from,
    setup_logging,
    stop_on_signals,
)
from rx_node.app import run_rx

RX_HELP = {
    "bind": "ZeroMQ address to bind, e.g. tcp://0.0.0.0:5555 [default: tcp://127.0.0.1:5555].",
    "link": "Sidelink backend: loopback (channel emulator), ip, sirius [default: loopback].",
    "trace": "Channel trace for loopback: demo, paper, fading, stress, or a CSV path [default: demo].",
    "trace_rounds": "Rounds the trace spans before it repeats [default: 9].",
    "link_rate_bps": "Nominal link rate for the ip backend, bit/s.",
    "lora_rank": "LoRA rank r [default: 8].",
    "lora_alpha": "LoRA alpha; scaling = lora_alpha / rank [default: 16].",
    "adapt_steps": "Adam steps of fine-tuning per round [default: 100].",
    "adapt_lr": "Adam learning rate for fine-tuning [default: 3e-3].",
    "adapt_batch": "Fine-tuning mini-batch in vectors, 0 = full batch [default: 256].",
    "adapt_budget_ms": "Wall-clock cap on fine-tuning per round, ms [default: none].",
    "max_payload_bytes": "Largest message accepted, bytes [default: 67108864].",
    "threads": "CPU threads for fine-tuning and inference; small MLPs run best on 1 [default: 1].",
    "max_rounds": "Exit after answering this many payload rounds [default: serve until SIGTERM].",
}


def rx(
    bind: Optional[str] = typer.Option(None, help=RX_HELP["bind"]),
    artifacts: Optional[Path] = ArtifactsOpt,
    dataset: Optional[str] = DatasetOpt,
    link: Optional[str] = typer.Option(None, help=RX_HELP["link"]),
    trace: Optional[str] = typer.Option(None, help=RX_HELP["trace"]),
    trace_rounds: Optional[int] = typer.Option(None, help=RX_HELP["trace_rounds"]),
    link_rate_bps: Optional[float] = typer.Option(None, help=RX_HELP["link_rate_bps"]),
    lora_rank: Optional[int] = typer.Option(None, help=RX_HELP["lora_rank"]),
    lora_alpha: Optional[float] = typer.Option(None, help=RX_HELP["lora_alpha"]),
    adapt_steps: Optional[int] = typer.Option(None, help=RX_HELP["adapt_steps"]),
    adapt_lr: Optional[float] = typer.Option(None, help=RX_HELP["adapt_lr"]),
    adapt_batch: Optional[int] = typer.Option(None, help=RX_HELP["adapt_batch"]),
    adapt_budget_ms: Optional[float] = typer.Option(None, help=RX_HELP["adapt_budget_ms"]),
    max_payload_bytes: Optional[int] = typer.Option(None, help=RX_HELP["max_payload_bytes"]),
    max_rounds: Optional[int] = typer.Option(None, help=RX_HELP["max_rounds"]),
    threads: Optional[int] = typer.Option(None, help=RX_HELP["threads"]),
    seed: Optional[int] = SeedOpt,
    config: Optional[Path] = ConfigOpt,
    log_level: str = LogOpt,
):
    """Run the RX daemon: reconstruct, LoRA-adapt, classify, report; serves until SIGTERM."""
    setup_logging(log_level, "rx")
    cli = {k: v for k, v in locals().items() if k not in ("config", "log_level")}
    opts, cfg = options_from(config, "rx", cli)
    stop = stop_on_signals()
    try:
        stats = run_rx(opts, cfg.get("link", {}), stop)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    logging.getLogger("semalign.rx").info("RX exiting: %d rounds ok, %d failed %s", stats.ok, stats.failed,
                                          stats.errors_by_code or "")


def main() -> None:
    app = make_app("The semalign RX daemon.")
    app.command()(rx)
    app()
