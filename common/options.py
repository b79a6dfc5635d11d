"""Declarative option specs: the daemons and every mode declare their options once, here-shaped.

An :class:`Option` is data (name, type, help with units, default); the
command-line layer (``semalign/options.py``) turns the specs into ``--flags``,
and ``--config`` TOML tables are checked against the same names. A mode
declares its own in ``Mode.rx_options`` / ``Mode.tx_options``, so adding a
mode adds its options without touching the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNSET = object()  # no single default: the help says what happens when the option is not given


@dataclass(frozen=True)
class Option:
    """``name``: snake_case (``--kebab-case`` on the command line, the key in TOML); ``type``: int,
    float, str, Path, or bool for a flag; ``help``: what it is, with units; ``default``: the value the
    code applies when the option is not given (shown as ``[default: ...]``), or :data:`UNSET`."""

    name: str
    type: type
    help: str
    default: Any = UNSET

    @property
    def help_text(self) -> str:
        if self.default is UNSET or self.type is bool:
            return self.help
        return f"{self.help} [default: {self.default}]"
