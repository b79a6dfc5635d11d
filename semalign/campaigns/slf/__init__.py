"""slf's campaigns: ``demo`` (two daemons, one alignment) and ``sweep`` (Table I in-process). What the CLI
calls (see :mod:`semalign.campaigns`) is below; each imports its module when called."""

from __future__ import annotations

from pathlib import Path


def pretrain_command(opts: dict, progress: bool) -> None:
    """``semalign pretrain --mode slf``: each named transceiver on its own data split, saved to
    artifacts/slf-<trx>; one line per transceiver."""
    import typer

    from common.data.datasets import load_dataset
    from common.modes.slf.configs import get_config
    from common.modes.slf.messages import arch_fingerprint
    from common.modes.slf.configs import default_slf_artifacts
    from common.modes.slf.pretrain import pretrain_and_save, progress_steps, with_overrides
    from semalign.progress import progress_bar

    pca_only = sorted(k for k in ("dataset", "d_pre") if k in opts)
    if pca_only:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in pca_only)}: not an slf option (each "
                         "transceiver config names its dataset)")
    names = [n.strip() for n in str(opts.pop("trx", "trx1,trx2,trx3")).split(",") if n.strip()]
    out, data_dir = opts.pop("out", None), opts.pop("data_dir", None)
    if out and len(names) != 1:
        raise ValueError(f"--out names one directory; give one --trx with it (got {', '.join(names)})")
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


def demo_command(given: dict, config, demo_table) -> None:
    """``semalign demo --mode slf``: the RX and the TX with different transceivers, one alignment."""
    from semalign.campaigns.slf.demo import run_slf_demo

    run_slf_demo(rounds=given["rounds"], out=given["out"], tx_trx=given["tx_trx"], rx_trx=given["rx_trx"],
                 n_frozen=given["n_frozen"], trace=given["trace"], data_dir=given["data_dir"], config=config)
