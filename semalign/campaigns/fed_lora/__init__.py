"""fed-lora's campaigns: ``fed`` (a federation of processes, also ``semalign demo --mode fed-lora``) and
``fed_report`` (its figures and sweep tables). What the CLI calls (see :mod:`semalign.campaigns`) is below."""

from __future__ import annotations


def demo_command(given: dict, config, demo_table) -> None:
    """``semalign demo --mode fed-lora``: a base station and ``devices`` device processes."""
    from semalign.campaigns.fed_lora.fed import run_fed_demo

    run_fed_demo(rounds=given["rounds"], out=given["out"], devices=given["devices"], task=given["task"],
                 policy=given["policy"], data_dir=given["data_dir"], config=config)
