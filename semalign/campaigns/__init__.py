"""The campaigns: one package per mode (``semalign/campaigns/<mode>/``), and what they share.

Shared here: :mod:`.processes` (the one daemon launcher), :mod:`.machine`
(what a result records of the machine), :mod:`.tables` (the generic results
table and the dispatch to a mode's own), :mod:`.probes` (what benchmarks read
of a running RX: its processes' memory, a CURVE TX socket). A mode's campaigns package is found
by its name (``fed-lora`` -> ``semalign.campaigns.fed_lora``) and imported
only when used; it may define, each optional (named apart from its submodules, which
become attributes of the package once imported):

- ``pretrain_command(opts: dict, progress: bool) -> None``: ``semalign pretrain --mode <mode>``
  (``opts``: the given options of the pretrain command, None-free);
- ``demo_command(given: dict, config, demo_table) -> None``: ``semalign demo --mode <mode>``
  (``given``: every option of the demo command; ``demo_table(config, given)``: the
  ``[demo]`` table's values the command line did not give);
- ``rounds_table(rounds, title, width) -> rich.table.Table``: its rounds as ``semalign show``
  prints them (else :func:`semalign.campaigns.tables.generic_table`).

A mode without a campaigns package still runs as daemons (``semalign rx/tx``).
"""

from __future__ import annotations

import importlib
from types import ModuleType


def campaigns_module(mode: str) -> str:
    """The module path of mode ``mode``'s campaigns package."""
    return f"{__name__}.{mode.replace('-', '_')}"


def campaigns_of(mode: str) -> ModuleType | None:
    """Mode ``mode``'s campaigns package, imported on first use; None when the mode has none."""
    name = campaigns_module(mode)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise


def modes_with(entry: str) -> list[str]:
    """The known modes whose campaigns package defines ``entry`` (e.g. ``pretrain_command``), sorted."""
    from common.modes.base import mode_names

    return [m for m in mode_names() if hasattr(campaigns_of(m), entry)]


def campaign(mode: str, entry: str, what: str):
    """Mode ``mode``'s ``entry`` (``pretrain_command``, ``demo_command``) for command ``what``; ValueError
    naming the modes that have one."""
    from common.modes.base import mode_names

    if mode not in mode_names():
        raise ValueError(f"--mode {mode!r}: not one semalign knows; choose one of {', '.join(mode_names())}")
    fn = getattr(campaigns_of(mode), entry, None)
    if fn is None:
        raise ValueError(f"--mode {mode}: {what} knows {', '.join(modes_with(entry))}")
    return fn
