"""``semalign``: pretrain, rx, tx and demo sub-commands (typer).

Options may also come from a TOML file (``--config``), one table per command
(``[pretrain]``, ``[rx]``, ``[tx]``, ``[demo]``, plus ``[link]`` for the
sidelink backend); the command line wins over the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from semalign.cli_support import (
    RX,
    TX,
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
)
from common.data.datasets import DATASET_NAMES
from common.modes.pca_lora.pretrain import PretrainConfig
from semalign.rx_cli import rx
from semalign.campaign_cli import register as register_campaigns
from semalign.ops_cli import keygen, soak
from semalign.tx_cli import tx

app = make_app("Semantic alignment between a drifted TX and RX: PCA payloads over ZeroMQ, "
               "LoRA adaptation at the RX.")
app.command()(rx)
app.command()(tx)
app.command()(keygen)
app.command()(soak)
register_campaigns(app)  # sweep, bench, fading (semalign/campaign_cli.py)

# ---------------------------------------------------------------- pretrain


@app.command()
def pretrain(
    mode: Optional[str] = typer.Option(None, help="What to pre-train: pca-lora (PCA basis + MLP classifier) or "
                                       "slf (VQ-VAE transceivers + task heads) [default: pca-lora]."),
    trx: Optional[str] = typer.Option(None, help="slf: transceiver configs to train, comma-separated: trx1 (MNIST, "
                                      "eps 1e-5), trx2 (MNIST, eps 0.1), trx3 (Fashion-MNIST, eps 1e-5) "
                                      "[default: trx1,trx2,trx3]."),
    max_pool: Optional[int] = typer.Option(None, help="slf: images per transceiver (its shard of the training set "
                                           "cut to this many, then split 8:2 into train/test) [default: the whole "
                                           "shard]."),
    head_epochs: Optional[float] = typer.Option(None, help="slf: task-head epochs over the training split "
                                                "[default: 10]."),
    dataset: Optional[str] = DatasetOpt,
    data_dir: Optional[str] = DataDirOpt,
    d_pre: Optional[int] = typer.Option(None, help="PCA components kept and used for pre-training [default: 200 for mnist, 40 for digits]."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs over the training set [default: 8; slf: 10]."),
    batch_size: Optional[int] = typer.Option(None, help="Mini-batch size in vectors [default: 512; slf: 128]."),
    lr: Optional[float] = typer.Option(None, help="Peak Adam learning rate of the one-cycle schedule [default: 3e-3; "
                                       "slf: constant 1e-3]."),
    seed: Optional[int] = SeedOpt,
    out: Optional[Path] = typer.Option(None, help="Output directory [default: artifacts/<dataset>-d<d_pre>; slf: "
                                       "artifacts/slf-<trx>, one --trx only when given]."),
    config: Optional[Path] = ConfigOpt,
    progress: bool = typer.Option(True, help="Show a progress bar."),
    log_level: str = LogOpt,
):
    """Fit the PCA basis and pre-train the RX classifier on d_pre-dim reconstructions (--mode slf: train
    the named VQ-VAE transceivers and their task heads)."""
    from common.artifacts import DEFAULT_D_PRE
    from semalign.runner import run_pretrain

    setup_logging(log_level, "pretrain")
    opts, _ = options_from(config, "pretrain", dict(mode=mode, trx=trx, max_pool=max_pool, head_epochs=head_epochs,
                                                dataset=dataset, data_dir=data_dir, d_pre=d_pre, epochs=epochs,
                                                batch_size=batch_size, lr=lr, seed=seed, out=out))
    mode = opts.pop("mode", "pca-lora")
    if mode == "slf":
        _pretrain_slf(opts, progress)
        return
    if mode != "pca-lora":
        fail(f"--mode {mode}: pretrain knows pca-lora and slf")
    slf_only = sorted(k for k in ("trx", "max_pool", "head_epochs") if k in opts)
    if slf_only:
        fail(f"{', '.join('--' + k.replace('_', '-') for k in slf_only)}: slf options; add --mode slf")
    name = opts.pop("dataset", "mnist")
    data_dir, out = opts.pop("data_dir", None), opts.pop("out", None)
    opts.setdefault("d_pre", DEFAULT_D_PRE.get(name, 200))
    try:
        meta = run_pretrain(name, Path(out) if out else None, PretrainConfig(**opts), data_dir, progress)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    typer.echo(f"test accuracy at alpha=d_pre={meta.d_pre}: {meta.test_accuracy:.4f} "
               f"(trained in {meta.train_seconds:.1f} s); fingerprint {meta.fingerprint[:16]}")


def _pretrain_slf(opts: dict, progress: bool) -> None:
    """``pretrain --mode slf``: each named transceiver on its own data split, saved to artifacts/slf-<trx>."""
    from common.data.datasets import load_dataset
    from common.modes.slf.configs import get_config
    from common.modes.slf.messages import arch_fingerprint
    from common.modes.slf.pretrain import default_slf_artifacts, pretrain_and_save, progress_steps, with_overrides
    from semalign.progress import progress_bar

    pca_only = sorted(k for k in ("dataset", "d_pre") if k in opts)
    if pca_only:
        fail(f"{', '.join('--' + k.replace('_', '-') for k in pca_only)}: not an slf option (each transceiver "
             "config names its dataset)")
    names = [n.strip() for n in str(opts.pop("trx", "trx1,trx2,trx3")).split(",") if n.strip()]
    out, data_dir = opts.pop("out", None), opts.pop("data_dir", None)
    if out and len(names) != 1:
        fail(f"--out names one directory; give one --trx with it (got {', '.join(names)})")
    try:
        configs = [with_overrides(get_config(n), opts) for n in names]
        data = {c.dataset: load_dataset(c.dataset, data_dir) for c in configs}  # every dataset before training
        for c in configs:
            path = Path(out) if out else default_slf_artifacts(c.name)
            with progress_bar(f"pretrain slf {c.name}", progress_steps(c), progress) as advance:
                meta = pretrain_and_save(c, data[c.dataset], path, advance)
            m = meta.metrics
            typer.echo(f"{c.name}: {c.dataset}, eps {c.eps:g}, {m['train_images']:.0f}/{m['test_images']:.0f} "
                       f"train/test images; head accuracy {m['head_accuracy_clean']:.4f} (clean), own link "
                       f"accuracy {m['link_accuracy']:.4f}, MSE {m['link_mse']:.4f}; {m['seconds']:.1f} s; saved "
                       f"{path} (session fingerprint {arch_fingerprint(c.shape)[:16]})")
    except (ValueError, RuntimeError) as e:
        fail(str(e))


# ---------------------------------------------------------------- demo


@app.command()
def demo(
    mode: str = typer.Option("pca-lora", help="Alignment mode to demonstrate: pca-lora, slf or fed-lora."),
    rounds: int = typer.Option(9, help="Rounds to run."),
    out: Path = typer.Option(Path("runs/demo"), help="Directory for results.json and the daemons' logs."),
    dataset: str = typer.Option("mnist", help=f"pca-lora: dataset, one of {', '.join(DATASET_NAMES)}."),
    data_dir: Optional[str] = DataDirOpt,
    artifacts: Optional[Path] = ArtifactsOpt,
    trace: str = typer.Option("demo", help="Channel trace: demo (256-QAM, 64-QAM, deep fade), paper, fading, stress, or a CSV path."),
    n_test: Optional[int] = typer.Option(None, help=TX["n_test"].help_text),
    deadline_s: Optional[float] = typer.Option(None, help=TX["deadline_s"].help_text),
    value_dtype: Optional[str] = typer.Option(None, help=TX["value_dtype"].help_text),
    adapt_steps: Optional[int] = typer.Option(None, help=RX["adapt_steps"].help_text),
    tx_trx: str = typer.Option("trx2", help="slf: the TX's transceiver (a config name or an artifacts directory)."),
    rx_trx: str = typer.Option("trx1", help="slf: the RX's transceiver (a config name or an artifacts directory)."),
    n_frozen: int = typer.Option(2, help="slf: decoder layers frozen during fine-tuning, counted from the last (l)."),
    devices: int = typer.Option(4, help="fed-lora: device (TX) processes."),
    task: str = typer.Option("mlp", help="fed-lora: mlp (no extra data), sst2 or agnews (MiniLM; --data-dir)."),
    policy: str = typer.Option("ours", help="fed-lora: the base station's policy: ours, fixed or random."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file passed to both daemons."),
    log_level: str = LogOpt,
):
    """Loopback demo: start the RX and the TX (or the base station and devices) as processes, print a table."""
    setup_logging(log_level, "demo")
    try:
        if mode == "slf":
            from semalign.slf_demo import run_slf_demo

            run_slf_demo(rounds=rounds, out=out, tx_trx=tx_trx, rx_trx=rx_trx, n_frozen=n_frozen, trace=trace,
                         data_dir=data_dir, config=config)
            return
        if mode == "fed-lora":
            from semalign.fed import run_fed_demo

            run_fed_demo(rounds=rounds, out=out, devices=devices, task=task, policy=policy, data_dir=data_dir,
                         config=config)
            return
        if mode != "pca-lora":
            fail(f"--mode {mode!r}: choose pca-lora, slf or fed-lora")
        _pca_lora_demo(rounds, out, dataset, data_dir, artifacts, trace, n_test, deadline_s, value_dtype,
                       adapt_steps, config)
    except (ValueError, RuntimeError) as e:
        fail(str(e))


def _pca_lora_demo(rounds, out, dataset, data_dir, artifacts, trace, n_test, deadline_s, value_dtype,
                   adapt_steps, config) -> None:
    from semalign.demo import run_demo
    from semalign.tables import print_rounds

    if rounds < 3 and trace == "demo":
        fail(f"--rounds {rounds}: the demo trace needs at least 3 rounds")
    tx_options = {"config": config, "n_test": n_test, "deadline_s": deadline_s, "value_dtype": value_dtype}
    rx_options = {"config": config, "adapt_steps": adapt_steps}
    results = run_demo(rounds, out, dataset, trace, artifacts, data_dir, tx_options, rx_options)
    print_rounds(results["rounds"], f"semalign demo: {dataset}, trace {trace}")
    typer.echo(f"results: {out / 'results.json'}")


def main() -> None:
    app()
