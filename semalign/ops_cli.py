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
    allow_dir: Optional[Path] = typer.Option(None, help="A TX key: also copy its public NAME.key into this directory "
                                             "(the RX's --curve-allow allow-list), creating it; with an existing "
                                             "key pair of that name, only the copy is made."),
):
    """Write a CURVE key pair (zmq.auth certificates) for a TX or an RX; --allow-dir admits a TX at an RX on
    this host."""
    from common.net.security import admit_public_key, generate_keypair

    public, secret = out / f"{name}.key", out / f"{name}.key_secret"
    try:
        if secret.exists() and not force:
            if allow_dir is None:
                fail(f"{secret} exists; pass --force to replace it (or --allow-dir DIR to admit its public key "
                     f"at an RX on this host)")
            if not public.exists():
                fail(f"{secret} exists but its public key {public} does not; pass --force to make a new pair")
            typer.echo(f"key pair {name} exists in {out}: kept")
        else:
            public, secret = generate_keypair(out, name)
            typer.echo(f"public key: {public}  (copy to the other host: a TX's into the RX's --curve-allow "
                       f"directory, the RX's to each TX's --curve-server-public)")
            typer.echo(f"secret key: {secret}  (stays on this host; pass it as --curve-secret)")
        if allow_dir is not None:
            admitted = admit_public_key(public, allow_dir, replace=force)
            typer.echo(f"admitted: {admitted}  (an RX started with --curve-allow {allow_dir} accepts the TX "
                       f"holding {secret.name})")
        elif name.startswith("rx"):
            typer.echo(f"next: make each TX's key and admit it, e.g. `semalign keygen --out {out} --name tx "
                       f"--allow-dir {out / 'allowed-tx'}`, then start the RX with --curve-allow "
                       f"{out / 'allowed-tx'}")
    except (ValueError, OSError) as e:
        fail(str(e))


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
    from semalign.campaigns.pca_lora.soak import run_soak

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


def show(
    directory: Path = typer.Argument(..., help="A campaign directory holding results.json (or the file itself), "
                                     "e.g. runs/demo."),
):
    """Print the per-round table of an existing results.json: pca-lora rounds as the demo shows them, another
    mode's rounds with its own fields."""
    from rich.console import Console

    from common.results.log import load_results, read_jsonl
    from semalign.campaigns.tables import print_results, results_mode

    path = directory / "results.json" if directory.is_dir() else directory
    try:
        if path.exists():
            doc = load_results(path)
        elif path.name == "results.json" and (path.parent / "results.jsonl").exists():
            doc = {"config": {}, "rounds": read_jsonl(path.parent / "results.jsonl")}
        else:
            fail(f"{directory}: no results.json there; give a directory a TX or `semalign demo` wrote "
                 f"(its --out), e.g. runs/demo")
    except (ValueError, OSError) as e:
        fail(f"{path}: cannot read it ({e})")
    if not isinstance(doc, dict) or not isinstance(doc.get("rounds", []), list):
        fail(f"{path}: not a semalign results file (no list of rounds)")
    rounds = doc.get("rounds") or []
    config = doc.get("config") or {}
    mode = results_mode(doc)
    console = Console()
    print_results(doc, f"{path}: {mode}", console)
    by_status: dict[str, int] = {}
    for r in rounds:
        by_status[r.get("status", "?")] = by_status.get(r.get("status", "?"), 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "no rounds yet"
    typer.echo(f"{len(rounds)} rounds: {counts}; session {config.get('session_id', '?')}, "
               f"connect {config.get('connect', '?')}")


def load(
    workers: str = typer.Option("1,2", help="RX worker counts W to compare, comma-separated (--mix: the largest "
                                "is W; --interference: always 2)."),
    txs: str = typer.Option("1,4,8", help="Session counts N, comma-separated (e.g. 1,2,4,8,16,32,64)."),
    rounds: int = typer.Option(30, help="Rounds each session runs (--mix: each session of every mode; "
                               "--interference: the pca-lora rounds of each condition, in 3 interleaved blocks)."),
    generator: str = typer.Option("replay", help="Who sends: replay (N connections from this process "
                                  "replaying PAYLOADs encoded before the run, so its CPU stays out of the "
                                  "figures) or tx (N semalign tx processes, each encoding its rounds)."),
    out: Path = typer.Option(Path("runs/load"), help="Directory for load.json, load.csv and each pair's logs."),
    dataset: str = typer.Option("digits", help="Dataset: digits (fast) or mnist."),
    artifacts: Optional[Path] = ArtifactsOpt,
    trace: str = typer.Option("deep", help="Channel trace: deep (constant 64-QAM MCS 1, ~9.4 Mb/s) or a CSV path."),
    mix: Optional[str] = typer.Option(None, help="Mixed modes on ONE RX (--mode of those modes, the largest of "
                                      "--workers as W), e.g. pca-lora,slf,fed-lora: --pca-sessions replayed "
                                      "pca-lora sessions, --slf-sessions slf TX processes aligning every round "
                                      "and a federation of --fed-devices device processes, all at once; per mode "
                                      "rounds/s, p50/p90/p99 round latency (ms), rounds lost, the RX's RSS (MiB) "
                                      "in mixed.json, mixed.csv, mixed.png. --txs is not used."),
    pca_sessions: int = typer.Option(4, help="With --mix: replayed pca-lora sessions (each --rounds rounds)."),
    slf_sessions: int = typer.Option(1, help="With --mix: slf TX processes, each --rounds rounds, every one an "
                                     "alignment (decoder download, fine-tuning at the TX, upload)."),
    fed_devices: int = typer.Option(2, help="With --mix or --interference: fed-lora devices (processes) of the "
                                    "federation on worker 0, each --rounds rounds (--interference: until stopped)."),
    slf_finetune_images: int = typer.Option(256, help="With --mix/--interference: training images each slf "
                                            "alignment fine-tunes on (images)."),
    slf_finetune_epochs: float = typer.Option(1.0, help="With --mix/--interference: fine-tuning passes over "
                                              "those images per alignment (passes)."),
    slf_trx: Optional[Path] = typer.Option(None, help="slf artifacts directory both ends use [default: an 8x8 "
                                           "digits transceiver with the paper's 171 kB decoder, pre-trained into "
                                           "OUT/slf-artifacts once]."),
    interference: bool = typer.Option(False, help="Instead: what an slf alignment or a fed-lora aggregation on "
                                      "worker 0 adds to a pca-lora session's round on worker 1 (W = 2; --rounds "
                                      "pca-lora rounds per condition: worker 0 idle, serving one slf TX's "
                                      "alignments, aggregating a federation's rounds; again with worker 0 and "
                                      "that work pinned to CPU 0 where possible); rtt and worker 1's CPU and "
                                      "run-queue time per round, median/p90, ms, with /proc/loadavg, in "
                                      "interference.json and interference.csv."),
    log_level: str = LogOpt,
):
    """Load an RX: N sessions against W workers in deep fade; rounds/s, p50/p90/p99 latency, rounds lost and
    the RX's RSS per (N, W), side by side in one run (load.json, load.csv, load.png). --mix: several modes on
    one RX at once; --interference: what another mode's work on worker 0 adds to a pca-lora round on worker 1."""
    from semalign.campaigns.pca_lora.load import run_load, table

    setup_logging(log_level, "load")
    if mix or interference:
        try:
            if interference:
                from semalign.campaigns.interference import interference_table, run_interference

                s = run_interference(out, rounds, dataset=dataset, artifacts=artifacts, slf_dir=slf_trx,
                                     fed_devices=fed_devices, slf_finetune_images=slf_finetune_images,
                                     slf_finetune_epochs=slf_finetune_epochs)
                typer.echo(interference_table(s["conditions"]))
                typer.echo(f"workers: {s['workers']}")
            else:
                from semalign.campaigns import mixed_load
                from semalign.campaigns.mixed_rx import parse_mix

                ws = [int(w) for w in workers.split(",") if w.strip()]
                s = mixed_load.run_mixed(out, parse_mix(mix), max(ws) if ws else 2, pca_sessions,
                                         slf_sessions, fed_devices, rounds, dataset=dataset, artifacts=artifacts,
                                         slf_dir=slf_trx, slf_finetune_images=slf_finetune_images,
                                         slf_finetune_epochs=slf_finetune_epochs)
                typer.echo(mixed_load.mixed_table(s["rows"]))
        except (ValueError, RuntimeError) as e:
            fail(str(e))
        typer.echo(f"load average: {s['uptime']}; files in {out}")
        return
    try:
        ws = [int(w) for w in workers.split(",") if w.strip()]
        ns = [int(n) for n in txs.split(",") if n.strip()]
        s = run_load(out, ws, ns, rounds, dataset, artifacts, trace, generator=generator,
                     progress=lambda done, total, row: typer.echo(
                         f"[{done}/{total}] N={row['n_tx']} W={row['workers']}: {row['rounds_ok']} ok, "
                         f"{row['rounds_failed']} not ok", err=True))
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    typer.echo(table(s["rows"]))
    typer.echo(f"load average: {s['uptime']}; load.json and load.csv in {out}")

