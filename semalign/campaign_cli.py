"""``semalign sweep``, ``semalign bench`` and ``semalign fading``: measurement campaigns."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from semalign.cli_support import ArtifactsOpt, DataDirOpt, LogOpt, fail, setup_logging


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        fail(f"{what}: expected comma-separated integers, got {text!r}")
    if not vals:
        fail(f"{what}: empty")
    return vals


def sweep(
    dims: str = typer.Option("10,20,40,60,80,100,140,180,200", help="Comma-separated alphas (capped at d_pre)."),
    seeds: int = typer.Option(3, help="Seeds per alpha (payload sample, E2E init)."),
    out: Path = typer.Option(Path("runs/sweep"), help="Output directory: sweep.csv, sweep.json, "
                                                     "policy_table.json, accuracy_vs_alpha.png, latency_vs_alpha.png."),
    dataset: str = typer.Option("mnist", help="Dataset: mnist or digits."),
    data_dir: Optional[str] = DataDirOpt,
    artifacts: Optional[Path] = ArtifactsOpt,
    methods: str = typer.Option("pretrained,lora,first_layer,staged,lora_bank,lora_nobudget,end_to_end,full_ft,last_layer",
                                help="Methods to run (comma-separated)."),
    b_max_bytes: Optional[int] = typer.Option(None, help="Reference payload budget B_max, bytes "
                                                         "[default: 64-QAM top-MCS rate x deadline]."),
    deadline_s: float = typer.Option(0.05, help="TX deadline for the default budget, s."),
    n_test: int = typer.Option(500, help="Test vectors per payload (t in eq. 2)."),
    value_dtype: str = typer.Option("float16", help="Bytes per value on the wire: float32, float16, int8."),
    e2e_max_epochs: int = typer.Option(30, help="End-to-End: most epochs."),
    e2e_patience: int = typer.Option(3, help="End-to-End: epochs without validation gain before stopping."),
    e2e_threads: int = typer.Option(1, help="End-to-End: torch threads (LoRA always runs on 1)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where trained End-to-End models are cached "
                                                        "[default: OUT/cache]."),
    live: bool = typer.Option(False, "--live", help="Run the pretrained/lora rows through real RX and TX "
                                                   "daemons on loopback (else in-process)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    log_level: str = LogOpt,
):
    """Accuracy and latency vs alpha for Pre-Trained, LoRA, End-to-End, full and last-layer fine-tuning."""
    from semalign.runner import ensure_artifacts
    from semalign.sweep import E2EConfig, SweepConfig, live_rounds, run_sweep
    from semalign.sweep_report import print_summary, print_targets

    setup_logging(log_level, "sweep")
    try:
        cfg = SweepConfig(dims=_ints(dims, "--dims"), seeds=seeds,
                          methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                          b_max_bytes=b_max_bytes, deadline_s=deadline_s, n_test=n_test, value_dtype=value_dtype,
                          e2e=E2EConfig(max_epochs=e2e_max_epochs, patience=e2e_patience, threads=e2e_threads),
                          live=live)
        path = ensure_artifacts(dataset, artifacts, data_dir, progress)
        runner = live_rounds(path, dataset, out, data_dir) if live else None
        result = run_sweep(path, dataset, cfg, out, cache_dir, data_dir, progress, runner)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    print_summary(result)
    print_targets(result)
    typer.echo(f"mode: {result['mode']}; results in {out}/sweep.csv, sweep.json, policy_table.json, "
               "accuracy_vs_alpha.png, latency_vs_alpha.png")


def bench(
    out: Path = typer.Option(Path("runs/bench"), help="Output directory for bench.json."),
    dataset: str = typer.Option("mnist", help="Dataset: mnist or digits."),
    data_dir: Optional[str] = DataDirOpt,
    artifacts: Optional[Path] = ArtifactsOpt,
    repeats: int = typer.Option(7, help="Repetitions per figure (medians are reported)."),
    live: bool = typer.Option(True, help="Also run the daemons once to read their peak RSS."),
    log_level: str = LogOpt,
):
    """Micro-benchmarks next to their physical floors; writes OUT/bench.json and prints a table."""
    from semalign.bench import print_bench, run_bench
    from semalign.runner import ensure_artifacts

    setup_logging(log_level, "bench")
    try:
        path = ensure_artifacts(dataset, artifacts, data_dir)
        result = run_bench(path, dataset, out, data_dir, repeats, live)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    print_bench(result)
    typer.echo(f"bench figures in {out / 'bench.json'}")


def fading(
    out: Path = typer.Option(Path("runs/fading"), help="Output directory for fading.json."),
    rounds: int = typer.Option(40, help="Rounds of the trace."),
    trace: str = typer.Option("fading", help="Channel trace (see `semalign demo --help`)."),
    policy_table: Path = typer.Option(..., help="policy_table.json from `semalign sweep`."),
    dataset: str = typer.Option("mnist", help="Dataset: mnist or digits."),
    data_dir: Optional[str] = DataDirOpt,
    artifacts: Optional[Path] = ArtifactsOpt,
    threshold: float = typer.Option(0.95, help="Accuracy below which a round counts as degraded."),
    n_test: int = typer.Option(500, help="Test vectors per payload."),
    deadline_s: float = typer.Option(0.05, help="TX deadline, s."),
    seed: int = typer.Option(0, help="Trace and sampling seed."),
    log_level: str = LogOpt,
):
    """Compare the alpha policies (largest, lookahead) with and without the adapter bank over a trace."""
    from semalign.fading import print_fading, run_fading
    from semalign.runner import ensure_artifacts

    setup_logging(log_level, "fading")
    try:
        path = ensure_artifacts(dataset, artifacts, data_dir)
        result = run_fading(path, dataset, out, policy_table, trace, rounds, threshold, n_test, deadline_s,
                            seed, data_dir)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    print_fading(result)
    typer.echo(f"results in {out / 'fading.json'}")


def fed(
    devices: int = typer.Option(4, help="Device processes (TX daemons), one Dirichlet shard each."),
    rounds: int = typer.Option(8, help="Federated rounds each device runs."),
    task: str = typer.Option("mlp", help="mlp (digits MLP, no extra data), sst2 or agnews (all-MiniLM-L6-v2; "
                                         "AG News stands in for the paper's QNLI); text tasks need --data-dir."),
    policy: str = typer.Option("ours", help="Base-station policies to run one after the other, comma-separated: "
                                            "ours (online drift-plus-penalty), fixed (fixed-rank FedAvg, equal "
                                            "power and bandwidth), random (random module switching)."),
    out: Path = typer.Option(Path("runs/fed"), help="Output directory: fed.json, fed.csv, and per policy the "
                                                    "daemon logs, device results and the base station's log."),
    data_dir: Optional[str] = typer.Option(None, help="Directory with <task>/*.tsv for the text tasks."),
    seed: int = typer.Option(0, help="Seed of the split, the models, the fading and the loss draws."),
    beta: float = typer.Option(0.5, help="Dirichlet concentration of the label-skewed split."),
    pool_size: int = typer.Option(0, help="Training samples split among the devices; 0 = mlp: all 1437 "
                                          "digits, text: 150 per device."),
    aggregation: str = typer.Option("stack-svd", help="stack-svd, zero-pad or fedavg."),
    eval_size: Optional[int] = typer.Option(None, help="Test samples the base station evaluates on "
                                                       "[default: mlp all 360, text 200]."),
    epochs: Optional[float] = typer.Option(None, help="Local epochs per round [default: mlp 5, text 2]."),
    budget_j: Optional[float] = typer.Option(None, help="Reference energy budget per round, J: devices get "
                                                        "2, 1, 0.6 and 1.2 times it (cycled) [default: mlp "
                                                        "0.005, text 2]."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain TCP instead of CURVE with throwaway keys."),
    timeout_s: float = typer.Option(1800.0, help="Wall-clock cap per policy, s."),
    log_level: str = LogOpt,
):
    """A fed-lora federation on loopback: a base station and N device processes per policy; per-round tables."""
    from semalign.fed import FedCampaign, format_tables, run_fed

    setup_logging(log_level, "fed")
    try:
        campaign = FedCampaign(
            devices=devices, rounds=rounds, task=task,
            policies=tuple(p.strip() for p in policy.split(",") if p.strip()), data_dir=data_dir, seed=seed,
            beta=beta, pool_size=pool_size, aggregation=aggregation, budget_j=budget_j, secure=not insecure,
            timeout_s=timeout_s,
            rx_options={"fed_eval_size": eval_size} if eval_size is not None else {},
            tx_options={"fed_epochs": epochs} if epochs is not None else {})
        result = run_fed(campaign, out)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    typer.echo(format_tables(result))
    typer.echo(f"results in {out / 'fed.json'} and {out / 'fed.csv'}")


def register(app: typer.Typer) -> None:
    for command in (sweep, bench, fading, fed):
        app.command()(command)
