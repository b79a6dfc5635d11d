"""Options from a TOML file, overridden by the command line.

A config file has one table per part, keys named like the command-line
options with ``_`` for ``-`` (see ``deploy/*.toml``)::

    [tx]
    connect = "tcp://10.0.0.2:5555"
    deadline_s = 0.05

Every value is checked against the type of its option (:class:`common.options.Option`)
before anything uses it: ``insecure = "false"`` (a string) is an error that names the key
and says to write ``insecure = false``, never a truthy value. A wrong type, an unknown key
or a part that is not a table raises :class:`ConfigError` (a ``ValueError``) with one line
that names the file, the table, the key and the fix.
"""

from __future__ import annotations

import datetime
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from common.files import toml_value
from common.options import UNSET, Option


class ConfigError(ValueError):
    """A config file or an option value that cannot be used; the message names the key and the fix."""


def load_toml(path: str | Path | None) -> dict:
    """The parsed file, or {} when ``path`` is None; ValueError names a bad file."""
    if path is None:
        return {}
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"--config {p}: the file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {p}: a directory, not a TOML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {p}: cannot read it ({e})") from e
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p}: not valid TOML ({e})") from e
    for key, value in doc.items():
        if not isinstance(value, dict):
            raise ConfigError(f"config file {p}: {key} = {_toml(value)} is not a table; options go in tables, "
                              f"one per command: write [{key}] on its own line and the options under it "
                              f"(see deploy/*.toml)")
    return doc


def merged_options(config: dict, table: str, cli: dict, allowed: set[str],
                   specs: Mapping[str, Option] | None = None, source: str | Path | None = None) -> dict:
    """``config[table]`` updated with the CLI values that were given (not None).

    Keys outside ``allowed`` in the file raise ValueError naming them. With
    ``specs`` (option name -> :class:`Option`) every value from the file is
    type-checked (:func:`check_value`); ``source`` names the file in messages.
    """
    section = config.get(table, {})
    where = f"config file {source}, table [{table}]" if source else f"config table [{table}]"
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: not a table; write [{table}] on its own line and the options under it")
    section = dict(section)
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(f"config table [{table}]: unknown keys {sorted(unknown)}; "
                          f"known keys are {sorted(allowed)}")
    if specs:
        section = {k: check_value(specs[k], v, where) if k in specs else v for k, v in section.items()}
    section.update({k: v for k, v in cli.items() if v is not None})
    return section


# ---------------------------------------------------------------- types


def _toml(value: Any) -> str:
    """``value`` written the way it reads in a TOML file (for messages)."""
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        return "[...]"
    return toml_value(value) if isinstance(value, (bool, int, float, str)) else str(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction" if math.isfinite(value) and value != int(value) else "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (datetime.date, datetime.time)):
        return "a date/time"
    return type(value).__name__


def _example(option: Option, value: Any = None) -> str:
    d = option.default
    if option.type is bool:
        meant = str(value).strip().lower() if isinstance(value, (str, int)) else ""
        if meant in ("false", "no", "off", "0"):
            return f"{option.name} = false (no quotes)"
        if meant in ("true", "yes", "on", "1"):
            return f"{option.name} = true (no quotes)"
        return f"{option.name} = true or {option.name} = false (no quotes)"
    if option.type is int:
        return f"{option.name} = {d if isinstance(d, int) and not isinstance(d, bool) else 10}"
    if option.type is float:
        return f"{option.name} = {d if isinstance(d, (int, float)) and not isinstance(d, bool) else 0.5}"
    if d is UNSET or d is None:
        return f'{option.name} = "..." (in quotes)'
    return f"{option.name} = {_toml(str(d))}"


def check_value(option: Option, value: Any, where: str) -> Any:
    """``value`` for ``option`` (a float option takes an integer too; a Path option a string), or ConfigError.

    The message names the key, says what was found and shows a correct line.
    """
    t = option.type
    ok = False
    if t is bool:
        ok = isinstance(value, bool)
    elif t is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            value = float(value)
    elif t is str:
        ok = isinstance(value, str)
    elif t is Path:
        ok = isinstance(value, str) and value != ""
        if ok:
            value = Path(value)
    else:  # pragma: no cover - Option types are the five above
        ok = isinstance(value, t)
    if ok:
        return value
    wanted = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string",
              Path: "a path (a non-empty string)"}.get(t, t.__name__)
    return _raise(f"{where}: {option.name} = {_toml(value)} is {_kind(value)}; {option.name} must be "
                  f"{wanted}: write {_example(option, value)}")


def _raise(message: str):
    raise ConfigError(message)
