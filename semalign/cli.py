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
from common.modes.base import DEFAULT_MODE
from semalign.campaigns import modes_with
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
                                                "[default: 20]."),
    dataset: Optional[str] = DatasetOpt,
    data_dir: Optional[str] = DataDirOpt,
    d_pre: Optional[int] = typer.Option(None, help="PCA components kept and used for pre-training [default: 200 for mnist, 40 for digits]."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs over the training set [default: 8; slf: 20]."),
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
    from semalign.campaigns import campaign

    setup_logging(log_level, "pretrain")
    opts, _ = options_from(config, "pretrain", dict(mode=mode, trx=trx, max_pool=max_pool, head_epochs=head_epochs,
                                                dataset=dataset, data_dir=data_dir, d_pre=d_pre, epochs=epochs,
                                                batch_size=batch_size, lr=lr, seed=seed, out=out),
                          _signature_options(pretrain))
    try:
        campaign(opts.pop("mode", DEFAULT_MODE), "pretrain_command", "pretrain")(opts, progress)
    except (ValueError, RuntimeError) as e:
        fail(str(e))


# ---------------------------------------------------------------- demo


@app.command()
def demo(
    mode: str = typer.Option(DEFAULT_MODE, help="Alignment mode to demonstrate: "
                             f"{', '.join(modes_with('demo_command'))}."),
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
    from semalign.campaigns import campaign

    setup_logging(log_level, "demo")
    given = dict(rounds=rounds, out=out, dataset=dataset, data_dir=data_dir, artifacts=artifacts, trace=trace,
                 n_test=n_test, deadline_s=deadline_s, value_dtype=value_dtype, adapt_steps=adapt_steps,
                 tx_trx=tx_trx, rx_trx=rx_trx, n_frozen=n_frozen, devices=devices, task=task, policy=policy)
    try:
        campaign(mode, "demo_command", "demo")(given, config, _demo_table)
    except (ValueError, RuntimeError) as e:
        fail(str(e))


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
    if from_file.get("mode", DEFAULT_MODE) != DEFAULT_MODE:
        raise ConfigError(f"config file {config}, table [demo]: mode = \"{from_file['mode']}\": choose the demo's "
                          f"mode on the command line (--mode {from_file['mode']}); the table's other keys apply")
    return from_file


def main() -> None:
    app()
