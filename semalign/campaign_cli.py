"""``semalign sweep``, ``semalign bench`` and ``semalign fading``: measurement campaigns."""

from __future__ import annotations

import dataclasses

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
    steps_from: Optional[Path] = typer.Option(None, help="A previous sweep.json: run each recipe, alpha and "
                                                        "seed with exactly the step counts (and precision) it "
                                                        "recorded, without the deadline calibration or the "
                                                        "wall-clock cap, so the accuracies repeat on any CPU."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    log_level: str = LogOpt,
):
    """Accuracy and latency vs alpha for Pre-Trained, LoRA, End-to-End, full and last-layer fine-tuning."""
    from semalign.campaigns.pca_lora.runner import ensure_artifacts
    from semalign.campaigns.pca_lora.sweep import run_sweep
    from semalign.campaigns.pca_lora.sweep_config import E2EConfig, SweepConfig
    from semalign.campaigns.pca_lora.sweep_live import live_rounds
    from semalign.campaigns.pca_lora.sweep_report import print_summary, print_targets

    setup_logging(log_level, "sweep")
    try:
        cfg = SweepConfig(dims=_ints(dims, "--dims"), seeds=seeds,
                          methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                          b_max_bytes=b_max_bytes, deadline_s=deadline_s, n_test=n_test, value_dtype=value_dtype,
                          e2e=E2EConfig(max_epochs=e2e_max_epochs, patience=e2e_patience, threads=e2e_threads),
                          live=live, steps_from=str(steps_from) if steps_from else None)
        if steps_from and live:
            raise ValueError("--steps-from replays in-process rows; it does not combine with --live")
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
    from semalign.campaigns.pca_lora.bench import run_bench
    from semalign.campaigns.pca_lora.bench_report import print_bench
    from semalign.campaigns.pca_lora.runner import ensure_artifacts

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
    from semalign.campaigns.pca_lora.fading import print_fading, run_fading
    from semalign.campaigns.pca_lora.runner import ensure_artifacts

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
    devices: int = typer.Option(4, help="Devices (TX daemons, or SuperNodes with --engine flower), one "
                                        "Dirichlet shard each."),
    rounds: int = typer.Option(8, help="Federated rounds each device runs."),
    task: str = typer.Option("mlp", help="mlp (digits MLP, no extra data), sst2 or agnews (all-MiniLM-L6-v2; "
                                         "AG News stands in for the paper's QNLI); text tasks need --data-dir."),
    policy: str = typer.Option("ours", help="Base-station policies to run one after the other, comma-separated: "
                                            "ours (online drift-plus-penalty), fixed (fixed-rank FedAvg, equal "
                                            "power and bandwidth), random (random module switching)."),
    out: Path = typer.Option(Path("runs/fed"), help="Output directory: fed.json, fed.csv, the figures "
                                                    "fed_accuracy.png, fed_accuracy_energy.png, fed_energy.png, "
                                                    "fed_queues.png, and per policy the daemon logs, device "
                                                    "results and the base station's log. A sweep (several "
                                                    "seeds or budgets): one such folder per run under "
                                                    "OUT/seed<s>/budget<b>/, and fed_sweep.json, .csv, .md, "
                                                    ".png in OUT."),
    data_dir: Optional[str] = typer.Option(None, help="Directory with <task>/*.tsv for the text tasks."),
    seed: str = typer.Option("0", "--seed", "--seeds", help="Seed(s) of the split, the models, the fading and "
                                                         "the loss draws; comma-separated for a sweep (0,1,2)."),
    beta: float = typer.Option(0.5, help="Dirichlet concentration of the label-skewed split."),
    pool_size: int = typer.Option(0, help="Training samples split among the devices; 0 = mlp: all 1437 "
                                          "digits, text: 150 per device."),
    aggregation: str = typer.Option("stack-svd", help="stack-svd, zero-pad or fedavg."),
    eval_size: Optional[int] = typer.Option(None, help="Test samples the base station evaluates on "
                                                       "[default: mlp all 360, text 200]."),
    epochs: Optional[float] = typer.Option(None, help="Local epochs per round [default: mlp 5, text 2]."),
    budget_j: Optional[str] = typer.Option(None, help="Reference energy budget per round, J: devices get "
                                                      "2, 1, 0.6 and 1.2 times it (cycled) [default: mlp "
                                                      "0.01, text 2]. Comma-separated for a sweep: the online "
                                                      "policy runs at each, fixed and random (which ignore "
                                                      "budgets) once per seed."),
    reference: str = typer.Option("none", help="central: also train the centralised-LoRA upper reference "
                                               "in-process (the fixed module on the union of the shards, the "
                                               "devices' epochs per round, as many rounds); none: skip it."),
    engine: str = typer.Option("daemons", help="daemons: our base-station RX daemon and N device TX daemons "
                                               "over ZeroMQ; flower: Flower's deployment engine on this "
                                               "machine (a SuperLink, one SuperNode per device and `flwr run` "
                                               "on loopback; needs pip install 'semalign[flower]'; OUT/<policy>/ "
                                               "then holds base_station.jsonl, summary.json, flower_logs/). "
                                               "Same settings, tables, files and figures."),
    insecure: bool = typer.Option(False, "--insecure", help="Plain TCP instead of CURVE with throwaway keys "
                                                            "(daemons), or plain HTTP without SuperNode "
                                                            "authentication instead of TLS with throwaway "
                                                            "certificates and node keys (--engine flower)."),
    timeout_s: float = typer.Option(1800.0, help="Wall-clock cap per policy, s."),
    silent_slack_s: Optional[float] = typer.Option(
        None, help="Wall-clock slack of the base station's silent-device deadline (the devices' real training "
                   "and transport on this machine, on top of the plan's emulated times), s [default: the task "
                   "preset's; raise it on a slow or loaded machine, where a device's real training can miss it]."),
    log_level: str = LogOpt,
):
    """A fed-lora federation on loopback: a base station and N devices per policy, as our daemons or under
    Flower (--engine); per-round tables and figures. Several --seeds or --budget-j values make a sweep with a
    summary table per budget."""
    from semalign.campaigns.fed_lora.fed import run_fed, run_fed_sweep
    from semalign.campaigns.fed_lora.fed_config import FedCampaign
    from semalign.campaigns.fed_lora.fed_output import format_tables
    from semalign.campaigns.fed_lora.fed_report import format_sweep

    setup_logging(log_level, "fed")
    seeds = _ints(seed, "--seed")
    budgets = _floats(budget_j, "--budget-j") if budget_j is not None else ()
    if budget_j is not None and not budgets:
        fail("--budget-j: empty")
    if reference not in ("none", "central"):
        fail(f"--reference: choose none or central, got {reference!r}")
    try:
        campaign = FedCampaign(
            devices=devices, rounds=rounds, task=task,
            policies=tuple(p.strip() for p in policy.split(",") if p.strip()), data_dir=data_dir, seed=seeds[0],
            beta=beta, pool_size=pool_size, aggregation=aggregation, budget_j=budgets[0] if budgets else None,
            secure=not insecure, timeout_s=timeout_s, engine=engine,
            rx_options={k: v for k, v in (("fed_eval_size", eval_size), ("fed_silent_slack_s", silent_slack_s))
                        if v is not None},
            tx_options={"fed_epochs": epochs} if epochs is not None else {}, reference=reference == "central")
        if len(seeds) > 1 or len(budgets) > 1:
            from common.modes.fed_lora.spec import preset

            sweep = run_fed_sweep(campaign, budgets or (preset(task).energy_budget_j,), seeds, out)
        else:
            result = run_fed(campaign, out)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    if len(seeds) > 1 or len(budgets) > 1:
        typer.echo(format_sweep(sweep))
        typer.echo(f"results in {out}: fed_sweep.json, fed_sweep.csv, fed_sweep.md, fed_sweep.png, and one "
                   "folder per run (seed<s>/budget<b>/) with its fed.json, fed.csv and figures")
        return
    typer.echo(format_tables(result))
    typer.echo(f"results in {out}: fed.json, fed.csv, {', '.join(Path(f).name for f in result.get('figures', []))}")


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        fail(f"{what}: expected comma-separated numbers, got {text!r}")


def slf_sweep(
    out: Path = typer.Option(Path("runs/slf_sweep"), help="Output directory: slf_sweep.json, table1.csv, "
                             "table1_fp16.csv, fig3_eps.csv, fig3_dissimilarity.csv, deadline.csv, table1.png, "
                             "fig3_eps.png, fig3_dissimilarity.png, reconstructions.png."),
    tx_trx: str = typer.Option("trx1", help="The TX's transceiver (config name or artifacts directory); the "
                               "paper's TX1."),
    rx_trx: str = typer.Option("trx2", help="The RX of Table I and Fig. 3 (channel); the paper's RX2."),
    source_rx_trx: str = typer.Option("trx3", help="The RX of Fig. 3 (source dissimilarity; Fashion-MNIST for the "
                                      "paper's CIFAR-10 RX3); 'none' skips that study."),
    layers: str = typer.Option("0,1,2,3,4", help="Table I's l values (frozen decoder layers)."),
    table_eps: float = typer.Option(1e-5, help="DMC crossover probability of Table I (the paper's eps_12)."),
    table_epochs: float = typer.Option(5.0, help="Table I: fine-tuning passes over the TX's training images."),
    fp16: bool = typer.Option(True, help="Also run Table I (l >= 1) with the download in float16."),
    eps: str = typer.Option("1e-5,1e-3,1e-2,1e-1", help="Fig. 3 (channel): eps_12 values."),
    fig3_layers: str = typer.Option("0,2,4", help="Fig. 3: l values."),
    fig3_epochs: float = typer.Option(2.0, help="Fig. 3: fine-tuning passes per case."),
    dissimilarity: str = typer.Option("0,0.25,0.5,0.75,1", help="Fig. 3 (source): data dissimilarities delta = "
                                      "fraction of the TX's images from its own source instead of the RX's."),
    head_epochs: float = typer.Option(5.0, help="Fig. 3 (source): epochs of the RX's 20-class head."),
    finetune_images: int = typer.Option(0, help="Fine-tuning images, 0 = the TX's whole training split."),
    eval_images: int = typer.Option(0, help="Evaluation images, 0 = the TX's whole test split."),
    finetune_lr: Optional[float] = typer.Option(None, help="Adam learning rate [default: the paper's, 1e-3 for l = 0, "
                                                "else 1e-4]."),
    deadlines: str = typer.Option("auto", help="Recovery-time deadlines, s, for the l choice (item 6b); auto: "
                                  "around and between the predicted recovery times of the l values."),
    rates: str = typer.Option("2e6,170.1e6", help="Link rates, bit/s, for the l choice."),
    device: str = typer.Option("cpu", help="torch device: cpu, or cuda where torch sees a GPU."),
    threads: int = typer.Option(1, help="torch CPU threads."),
    seed: int = typer.Option(0, help="Fine-tuning seed (batch order, channel draws, l = 0 re-initialisation)."),
    quick: bool = typer.Option(False, help="A reduced sweep for a first look: l = 0,2,4, 1 fine-tuning epoch over "
                               "2,000 images, eps 1e-5,1e-1 and l = 0,4 for Fig. 3, dissimilarities 0,1, a 1-epoch "
                               "head, 1,000 evaluation images, no float16 rows (these replace the options of the same "
                               "studies)."),
    data_dir: Optional[str] = DataDirOpt,
    progress: bool = typer.Option(True, help="Show a progress bar."),
    log_level: str = LogOpt,
):
    """Regenerate the SLF paper's Table I and Fig. 3 (plus a Fig. 2-like reconstruction grid), in-process.

    The defaults take about 6 minutes on one core of this machine (measured 364 s: 36 fine-tuning runs over
    10,000 images, 99 epochs at about 3 s each, a 5-epoch head, evaluation and plots; budget up to 10 minutes
    when the cores are shared), not counting the pre-training of missing transceivers (about 45 s each at the
    demo's reduced size). Scale up with --table-epochs, --fig3-epochs, more --eps / --dissimilarity values,
    --finetune-images, --threads, or --device cuda where torch sees a GPU.
    """
    from semalign.campaigns.slf.sweep import run_slf_sweep
    from semalign.campaigns.slf.sweep_config import QUICK, SlfSweepConfig
    from semalign.campaigns.slf.sweep_report import format_tables

    setup_logging(log_level, "slf-sweep")
    try:
        cfg = SlfSweepConfig(
            tx_trx=tx_trx, rx_trx=rx_trx, source_rx_trx=None if source_rx_trx.lower() == "none" else source_rx_trx,
            layers=_ints(layers, "--layers"), table_eps=table_eps, table_epochs=table_epochs, fp16=fp16,
            eps_values=_floats(eps, "--eps"), fig3_layers=_ints(fig3_layers, "--fig3-layers"),
            fig3_epochs=fig3_epochs, dissimilarities=_floats(dissimilarity, "--dissimilarity"),
            head_epochs=head_epochs, finetune_images=finetune_images, eval_images=eval_images,
            finetune_lr=finetune_lr,
            deadlines_s=() if deadlines.strip() == "auto" else _floats(deadlines, "--deadlines"),
            rates_bps=_floats(rates, "--rates"), device=device, threads=threads, seed=seed)
        if quick:
            cfg = dataclasses.replace(cfg, **QUICK)
        result = run_slf_sweep(cfg, out, data_dir, progress)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    typer.echo(format_tables(result))
    typer.echo(f"results in {out}: slf_sweep.json, {', '.join(result['figures'])} and the CSV files")


def register(app: typer.Typer) -> None:
    for command in (sweep, bench, fading, fed):
        app.command()(command)
    app.command("slf-sweep")(slf_sweep)
