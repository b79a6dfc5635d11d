"""``rx-node`` (also ``semalign rx``): the RX daemon's command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from semalign.cli_support import (
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
from common.net.security import rx_security
from rx_node.app import run_rx

RX_HELP = {
    "mode": "Alignment modes served, comma-separated: pca-lora [default: pca-lora].",
    "bind": "ZeroMQ address to bind, e.g. tcp://0.0.0.0:5555 [default: tcp://127.0.0.1:5555].",
    "link": "Sidelink backend: loopback (channel emulator), ip, sirius [default: loopback].",
    "trace": "Channel trace for loopback: demo, paper, fading, stress, or a CSV path [default: demo].",
    "trace_rounds": "Rounds the trace spans before it repeats [default: 9].",
    "link_rate_bps": "Nominal link rate for the ip backend, bit/s.",
    "lora_rank": "LoRA rank r [default: 8].",
    "lora_alpha": "LoRA alpha; scaling = lora_alpha / rank [default: 16].",
    "adapt_steps": "Most Adam steps of fine-tuning per round [default: 150].",
    "adapt_lr": "Peak Adam learning rate (cosine schedule) for fine-tuning [default: 1e-2].",
    "adapt_batch": "Fine-tuning mini-batch in vectors, 0 = full batch [default: 256].",
    "adapt_budget_ms": "Wall-clock cap on adaptation per round, ms, for alpha >= d_pre/10 [default: 120]; "
                       "below (severe misalignment) up to 400 steps within 400 ms.",
    "adapter_bank": "Directory of a persistent adapter bank (LoRA adapters by alpha, warm starts) [default: none].",
    "bank_size": "Adapters the bank keeps, least recently used evicted [default: 16 when a bank is used].",
    "max_payload_bytes": "Largest message accepted, bytes [default: 67108864].",
    "threads": "CPU threads for fine-tuning and inference; small MLPs run best on 1 [default: 1].",
    "max_rounds": "Exit after answering this many payload rounds [default: serve until SIGTERM].",
    "curve_secret": "CURVE: the RX's secret certificate NAME.key_secret (from `semalign keygen`).",
    "curve_allow": "CURVE: directory of the TX public certificates (*.key) admitted; others are refused and logged.",
    "insecure": "Run plain TCP without CURVE (no authentication, no encryption); needed when no keys are given.",
    "max_vectors": "Hard limit: vectors per payload [default: 200000].",
    "max_alpha": "Hard limit: alpha per payload [default: d_pre of the basis].",
    "max_str_len": "Hard limit: msgpack string length, bytes [default: 4096].",
    "max_container_len": "Hard limit: msgpack array/map length [default: 256].",
}


def rx(
    mode: Optional[str] = typer.Option(None, help=RX_HELP["mode"]),
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
    adapter_bank: Optional[Path] = typer.Option(None, help=RX_HELP["adapter_bank"]),
    bank_size: Optional[int] = typer.Option(None, help=RX_HELP["bank_size"]),
    max_payload_bytes: Optional[int] = typer.Option(None, help=RX_HELP["max_payload_bytes"]),
    max_rounds: Optional[int] = typer.Option(None, help=RX_HELP["max_rounds"]),
    threads: Optional[int] = typer.Option(None, help=RX_HELP["threads"]),
    curve_secret: Optional[Path] = typer.Option(None, help=RX_HELP["curve_secret"]),
    curve_allow: Optional[Path] = typer.Option(None, help=RX_HELP["curve_allow"]),
    insecure: Optional[bool] = typer.Option(None, "--insecure", help=RX_HELP["insecure"]),
    max_vectors: Optional[int] = typer.Option(None, help=RX_HELP["max_vectors"]),
    max_alpha: Optional[int] = typer.Option(None, help=RX_HELP["max_alpha"]),
    max_str_len: Optional[int] = typer.Option(None, help=RX_HELP["max_str_len"]),
    max_container_len: Optional[int] = typer.Option(None, help=RX_HELP["max_container_len"]),
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
        stats = run_rx(opts, cfg.get("link", {}), rx_security(opts), stop)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    logging.getLogger("semalign.rx").info("RX exiting: %d rounds ok, %d failed %s", stats.ok, stats.failed,
                                          stats.errors_by_code or "")


def main() -> None:
    app = make_app("The semalign RX daemon.")
    app.command()(rx)
    app()
