"""``semalign keygen`` and ``semalign soak``: key pairs for CURVE, and the long-run check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from semalign.cli_support import ArtifactsOpt, LogOpt, fail, setup_logging


def keygen(
    out: Path = typer.Option(..., help="Directory to write NAME.key (public) and NAME.key_secret (secret, mode 0600)."),
    name: str = typer.Option(..., help="Key name, e.g. rx or tx-lab1 (the file stem)."),
    force: bool = typer.Option(False, help="Overwrite an existing key pair of that name."),
):
    """Write a CURVE key pair (zmq.auth certificates) for a TX or an RX."""
    from common.net.security import generate_keypair

    if (out / f"{name}.key_secret").exists() and not force:
        fail(f"{out / (name + '.key_secret')} exists; pass --force to replace it")
    try:
        public, secret = generate_keypair(out, name)
    except (ValueError, OSError) as e:
        fail(str(e))
    typer.echo(f"public key: {public}  (copy to the other host: a TX's into the RX's --curve-allow "
               f"directory, the RX's to each TX's --curve-server-public)")
    typer.echo(f"secret key: {secret}  (stays on this host; pass it as --curve-secret)")


def soak(
    rounds: int = typer.Option(2000, help="Rounds in all, split over 2 x --sessions TX sessions."),
    sessions: int = typer.Option(2, help="TX sessions run in turn, then as many at once."),
    out: Path = typer.Option(Path("runs/soak"), help="Directory for soak.json, rx.log and per-session results."),
    dataset: str = typer.Option("digits", help="Dataset: digits (fast) or mnist."),
    artifacts: Optional[Path] = ArtifactsOpt,
    n_test: int = typer.Option(20, help="Test vectors per payload."),
    max_train: int = typer.Option(40, help="Training vectors per payload at most."),
    adapt_steps: int = typer.Option(3, help="Fine-tuning steps per round at the RX."),
    deadline_s: float = typer.Option(0.002, help="Delivery deadline per payload, s."),
    trace: str = typer.Option("demo", help="Loopback channel trace."),
    insecure: bool = typer.Option(False, "--insecure", help="Run without CURVE (default: throwaway keys in OUT/keys)."),
    max_rss_growth: float = typer.Option(0.10, help="Fail (exit 1) above this RSS growth after warm-up (0.10 = 10 %)."),
    log_level: str = LogOpt,
):
    """Soak the daemon pair on loopback: every round accounted for, RSS growth, latency p50/p99."""
    from semalign.soak import run_soak

    setup_logging(log_level, "soak")
    try:
        s = run_soak(out, rounds, sessions, dataset, artifacts, n_test, max_train, adapt_steps, deadline_s,
                     trace, insecure)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    rtt = s["latency_ms"]["rtt"]
    growth = s["rss"].get("growth_after_warm", float("nan"))
    typer.echo(f"rounds: {s['rounds_expected']} expected, {s['rounds_ok']} ok, {s['rounds_failed']} failed "
               f"{json.dumps(s['failed_reasons']) if s['failed_reasons'] else ''}, {s['rounds_lost']} lost, "
               f"{s['rounds_duplicated']} duplicated, {s['rows_in_wrong_session']} in a wrong session")
    typer.echo(f"RX RSS: {s['rss'].get('warm_kib')} KiB after warm-up -> max {s['rss'].get('max_after_warm_kib')} "
               f"KiB ({100 * growth:+.1f} %)")
    typer.echo(f"round trip: p50 {rtt.get('p50', float('nan')):.1f} ms, p99 {rtt.get('p99', float('nan')):.1f} ms; "
               f"{s['rounds_per_s']:.1f} rounds/s; summary in {out / 'soak.json'}")
    bad = s["rounds_lost"] or s["rounds_duplicated"] or s["rows_in_wrong_session"] or s["session_errors"] \
        or not growth < max_rss_growth
    if bad:
        raise typer.Exit(1)
