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
from semalign.rx_cli import rx, rx_worker
from semalign.campaign_cli import register as register_campaigns
from semalign.ops_cli import keygen, load, show, soak
from semalign.tx_cli import tx

app = make_app("Semantic alignment between a drifted TX and RX: PCA payloads over ZeroMQ, "
               "LoRA adaptation at the RX.")
app.command()(rx)
app.command("rx-worker")(rx_worker)
app.command()(tx)
app.command()(keygen)
app.command()(soak)
app.command()(load)
app.command()(show)
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
                                                batch_size=batch_size, lr=lr, seed=seed, out=out),
                          _signature_options(pretrain))
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

    given = dict(rounds=rounds, out=out, dataset=dataset, data_dir=data_dir, artifacts=artifacts, trace=trace,
                 n_test=n_test, deadline_s=deadline_s, value_dtype=value_dtype, adapt_steps=adapt_steps)
    given.update({k: v for k, v in _demo_table(config, given).items() if k in given})
    _check_demo(given, config)
    g = given
    tx_options = {"config": config, "n_test": g["n_test"], "deadline_s": g["deadline_s"],
                  "value_dtype": g["value_dtype"]}
    rx_options = {"config": config, "adapt_steps": g["adapt_steps"]}
    out = Path(g["out"])
    results = run_demo(g["rounds"], out, g["dataset"], g["trace"], g["artifacts"], g["data_dir"], tx_options,
                       rx_options)
    print_rounds(results["rounds"], f"semalign demo: {g['dataset']}, trace {g['trace']}")
    typer.echo(f"results: {out / 'results.json'}  (`semalign show {out}` prints this table again)")


def _demo_options() -> dict:
    """The demo command's options as :class:`Option` specs (name -> spec), read from its signature."""
    return _signature_options(demo)


def _signature_options(command) -> dict:
    """A typer command's options as :class:`Option` specs (name -> spec), read from its signature, so
    its ``--config`` table is type-checked like the daemons' (``progress``-like flags included)."""
    import inspect
    import typing

    from common.options import Option

    hints = typing.get_type_hints(command)
    specs = {}
    for name, param in inspect.signature(command).parameters.items():
        if name in ("config", "log_level"):
            continue
        kind = hints.get(name, str)
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = args[0] if typing.get_origin(kind) is typing.Union and len(args) == 1 else kind
        info = param.default
        specs[name] = Option(name, kind if kind in (bool, int, float, str, Path) else str,
                             getattr(info, "help", None) or "", getattr(info, "default", None))
    return specs


def _given_on_command_line(name: str, value, default) -> bool:
    """Whether option ``name`` came from the command line (click's parameter source; where that cannot be
    read, whether ``value`` differs from the ``default``)."""
    try:  # typer >= 0.2x carries its own copy of click
        from typer._click.core import ParameterSource
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer on plain click
        from click.core import ParameterSource
        from click.globals import get_current_context
    ctx = get_current_context(silent=True)
    if ctx is None or name not in ctx.params:
        return value != default
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)


def _demo_table(config: Optional[Path], given: dict) -> dict:
    """The ``[demo]`` table of ``--config``, type-checked: the values of the options the command line did
    not give (the command line wins)."""
    from semalign.config import ConfigError, load_toml, merged_options

    cfg = load_toml(config)
    if "demo" not in cfg:
        return {}
    specs = _demo_options()
    table = merged_options(cfg, "demo", {}, set(specs), specs, config)
    from_file = {k: v for k, v in table.items()
                 if not _given_on_command_line(k, given.get(k, specs[k].default), specs[k].default)}
    if from_file.get("mode", "pca-lora") != "pca-lora":
        raise ConfigError(f"config file {config}, table [demo]: mode = \"{from_file['mode']}\": choose the demo's "
                          f"mode on the command line (--mode {from_file['mode']}); the table's other keys apply")
    return from_file


def _check_demo(g: dict, config: Optional[Path]) -> None:
    """Every option of a pca-lora demo, checked before a process starts (ValueError naming the option):
    the trace, the dataset, --data-dir, the numbers the daemons' configs check, the --config tables."""
    from common.data.datasets import check_data_dir
    from common.link.channel import build_trace
    from common.modes.pca_lora.alignment import AdaptConfig
    from common.modes.pca_lora.tx import PcaLoraTxConfig
    from semalign.config import load_toml, merged_options
    from semalign.options import check_choices

    if g["rounds"] < 1:
        raise ValueError(f"--rounds {g['rounds']}: the demo needs at least one round")
    check_choices({"dataset": g["dataset"]}, "tx")
    try:
        build_trace(str(g["trace"]), g["rounds"])
    except ValueError as e:
        raise ValueError(f"--trace {g['trace']}: {e}") from e
    check_data_dir(g["data_dir"])
    if g["artifacts"] is not None and Path(g["artifacts"]).exists() and not Path(g["artifacts"]).is_dir():
        raise ValueError(f"--artifacts {g['artifacts']}: a file, not an artifacts directory")
    if Path(g["out"]).exists() and not Path(g["out"]).is_dir():
        raise ValueError(f"--out {g['out']}: a file, not a directory")
    PcaLoraTxConfig(**{k: g[k] for k in ("n_test", "deadline_s", "value_dtype") if g[k] is not None})
    if g["adapt_steps"] is not None:
        AdaptConfig(steps=g["adapt_steps"])
    cfg = load_toml(config)  # the tables the daemons will read: checked here, not after they started
    for table, specs in (("rx", RX), ("tx", TX)):
        if table in cfg:
            merged_options(cfg, table, {}, set(specs), specs, config)
            check_choices(cfg[table], table)


def main() -> None:
    app()
