"""Options from a TOML file, overridden by the command line.

A config file has one table per part, keys named like the command-line
options with ``_`` for ``-`` (see ``deploy/*.toml``)::

    [tx]
    connect = "tcp://10.0.0.2:5555"
    deadline_s = 0.05
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load_toml(path: str | Path | None) -> dict:
    """The parsed file, or {} when ``path`` is None; ValueError names a bad file."""
    if path is None:
        return {}
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {p}: {e}") from e


def merged_options(config: dict, table: str, cli: dict, allowed: set[str]) -> dict:
    """``config[table]`` updated with the CLI values that were given (not None).

    Keys outside ``allowed`` in the file raise ValueError naming them.
    """
    section = dict(config.get(table, {}))
    unknown = set(section) - allowed
    if unknown:
        raise ValueError(f"config table [{table}]: unknown keys {sorted(unknown)}; "
                         f"known keys are {sorted(allowed)}")
    section.update({k: v for k, v in cli.items() if v is not None})
    return section
