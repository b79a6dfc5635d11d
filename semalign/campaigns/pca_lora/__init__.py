"""pca-lora's campaigns: ``demo`` (two daemons), ``sweep`` (+ ``sweep_report``), ``bench``, ``fading``,
``soak``; ``runner`` is their in-process set-up (pre-training, artifacts, payloads). What the CLI calls
(see :mod:`semalign.campaigns`) is below; each imports its module when called."""

from __future__ import annotations

from pathlib import Path


def pretrain_command(opts: dict, progress: bool) -> None:
    """``semalign pretrain``: fit the PCA basis and pre-train the classifier; prints one summary line."""
    import typer

    from common.modes.pca_lora.artifacts import DEFAULT_D_PRE
    from common.modes.pca_lora.pretrain import PretrainConfig
    from semalign.campaigns.pca_lora.runner import run_pretrain

    slf_only = sorted(k for k in ("trx", "max_pool", "head_epochs") if k in opts)
    if slf_only:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in slf_only)}: slf options; add --mode slf")
    name = opts.pop("dataset", "mnist")
    data_dir, out = opts.pop("data_dir", None), opts.pop("out", None)
    opts.setdefault("d_pre", DEFAULT_D_PRE.get(name, 200))
    meta = run_pretrain(name, Path(out) if out else None, PretrainConfig(**opts), data_dir, progress)
    typer.echo(f"test accuracy at alpha=d_pre={meta.d_pre}: {meta.test_accuracy:.4f} "
               f"(trained in {meta.train_seconds:.1f} s); fingerprint {meta.fingerprint[:16]}")


def demo_command(given: dict, config, demo_table) -> None:
    """``semalign demo``: the RX and the TX as processes over the trace; prints the rounds table."""
    import typer

    from semalign.campaigns.pca_lora.demo import check_demo, run_demo
    from semalign.campaigns.pca_lora.tables import print_rounds

    keys = ("rounds", "out", "dataset", "data_dir", "artifacts", "trace", "n_test", "deadline_s", "value_dtype",
            "adapt_steps")
    g = {k: given[k] for k in keys}
    g.update({k: v for k, v in demo_table(config, g).items() if k in g})
    check_demo(g, config)
    tx_options = {"config": config, "n_test": g["n_test"], "deadline_s": g["deadline_s"],
                  "value_dtype": g["value_dtype"]}
    rx_options = {"config": config, "adapt_steps": g["adapt_steps"]}
    out = Path(g["out"])
    results = run_demo(g["rounds"], out, g["dataset"], g["trace"], g["artifacts"], g["data_dir"], tx_options,
                       rx_options)
    print_rounds(results["rounds"], f"semalign demo: {g['dataset']}, trace {g['trace']}")
    typer.echo(f"results: {out / 'results.json'}  (`semalign show {out}` prints this table again)")


def rounds_table(rounds: list[dict], title: str, width: int):
    """pca-lora rounds as the demo shows them (:func:`semalign.campaigns.pca_lora.tables.rounds_table`)."""
    from semalign.campaigns.pca_lora.tables import rounds_table as table

    return table(rounds, title, width)
