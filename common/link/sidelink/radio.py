"""Radio control adapters: read a radio's channel state and set its MCS.

No public API of the SIRIUS 5G-V2X platform is known, so the ``sirius`` backend
does not talk to the radio directly: it goes through a :class:`RadioControl`,
a two-method adapter that a site wires to whatever its unit offers. Two
implementations are configured from the ``[link.radio]`` TOML table:

- ``control = "http"`` (:class:`HttpRadioControl`): GET a JSON state document,
  POST/PUT ``{set_mcs_key: mcs}`` to set the MCS (stdlib ``urllib``, proxies
  ignored).
- ``control = "command"`` (:class:`CommandRadioControl`): run an argv template
  (no shell) that prints a JSON state document; another argv template, with
  ``{mcs}`` substituted, sets the MCS.

A state document is any JSON object; ``fields`` maps each reading name to its
key there (dots walk nested objects, e.g. ``"phy.sinr"``). Reading names and
units: ``rsrp_dbm`` (dBm), ``sinr_db`` (dB), ``cqi`` (int 0..15), ``mcs``
(int MCS index). Any of them may be missing or ``null``; numbers may be JSON
numbers or numeric strings. Everything that goes wrong talking to the radio
raises :class:`RadioError` naming the endpoint.
"""

from __future__ import annotations

import http.client
import json
import math
import shlex
import subprocess
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from typing import Any

from common.link.sidelink.base import UnsupportedOperation

READING_FIELDS: tuple[str, ...] = ("rsrp_dbm", "sinr_db", "cqi", "mcs")
_INT_FIELDS = ("cqi", "mcs")
MAX_CQI = 15  # TS 38.214 Tables 5.2.2.1-2..4: CQI index 0..15


class RadioError(RuntimeError):
    """The radio did not answer, or answered something unusable; the message names the endpoint."""


class RadioControl(ABC):
    """Adapter to one radio. ``endpoint`` names it in error messages (a URL, a command line)."""

    endpoint: str

    @abstractmethod
    def read_state(self) -> dict[str, float | int]:
        """Current reading: a subset of ``READING_FIELDS`` (``cqi`` and ``mcs`` ints); raises RadioError."""

    @abstractmethod
    def set_mcs(self, mcs: int) -> None:
        """Ask the radio to use MCS index ``mcs``; raises RadioError, or UnsupportedOperation if not wired."""

    def close(self) -> None:
        """Release whatever the adapter holds."""


def _check_timeout(timeout_s: float) -> None:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
        math.isfinite(timeout_s) and timeout_s > 0
    ):
        raise ValueError(f"radio timeout_s must be finite and > 0, got {timeout_s!r}")


def _check_fields(fields: dict[str, str] | None) -> dict[str, str]:
    """Reading name -> document key path; defaults to the reading names themselves."""
    if fields is None:
        return {name: name for name in READING_FIELDS}
    if not isinstance(fields, dict):
        raise ValueError(f"radio fields must be a table of reading name -> key, got {fields!r}")
    unknown = sorted(set(fields) - set(READING_FIELDS))
    if unknown:
        raise ValueError(f"unknown radio fields {unknown}; choose from {list(READING_FIELDS)}")
    for name, key in fields.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ValueError(f"radio field {name!r} needs a key like 'sinr' or 'phy.sinr', got {key!r}")
    return dict(fields)


def parse_reading(doc: Any, fields: dict[str, str], endpoint: str) -> dict[str, float | int]:
    """Pick the reading out of a state document (module docstring); RadioError on bad values."""
    if not isinstance(doc, dict):
        raise RadioError(f"radio at {endpoint} sent {type(doc).__name__} {doc!r:.80}, expected a JSON object")
    reading: dict[str, float | int] = {}
    for name, path in fields.items():
        value: Any = doc
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            continue
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise RadioError(f"radio at {endpoint}: {path!r} ({name}) is {value!r}, not a number") from None
        if not math.isfinite(number):
            raise RadioError(f"radio at {endpoint}: {path!r} ({name}) is {value!r}, not finite")
        if name in _INT_FIELDS:
            if number != int(number) or number < 0 or (name == "cqi" and number > MAX_CQI):
                limit = f"0..{MAX_CQI}" if name == "cqi" else ">= 0"
                raise RadioError(f"radio at {endpoint}: {path!r} ({name}) is {value!r}, not an int {limit}")
            reading[name] = int(number)
        else:
            reading[name] = number
    return reading


class HttpRadioControl(RadioControl):
    """JSON over HTTP.

    url:         base URL of the radio's management endpoint, "http://host:port".
    state_path:  GET path of the state document (default "/state").
    mcs_path:    path that sets the MCS (default "/mcs"); ``None`` or "" when
                 the radio cannot (set_mcs then raises UnsupportedOperation).
    mcs_method:  "POST" (default) or "PUT"; body ``{set_mcs_key: mcs}`` as JSON.
    fields:      reading name -> key path in the state document (module docstring).
    headers:     extra request headers (e.g. an auth token), default none.
    timeout_s:   per-request timeout, s (default 1.0).
    """

    def __init__(self, url: str, state_path: str = "/state", mcs_path: str | None = "/mcs",
                 mcs_method: str = "POST", set_mcs_key: str = "mcs", fields: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None, timeout_s: float = 1.0):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"radio url must start with http:// or https://, got {url!r}")
        if not isinstance(state_path, str) or not state_path.startswith("/"):
            raise ValueError(f"radio state_path must start with '/', got {state_path!r}")
        if mcs_path is not None and mcs_path != "" and not (isinstance(mcs_path, str) and mcs_path.startswith("/")):
            raise ValueError(f"radio mcs_path must start with '/' (or be empty: no MCS control), got {mcs_path!r}")
        if mcs_method not in ("POST", "PUT"):
            raise ValueError(f"radio mcs_method must be 'POST' or 'PUT', got {mcs_method!r}")
        if not isinstance(set_mcs_key, str) or not set_mcs_key:
            raise ValueError(f"radio set_mcs_key must be a non-empty string, got {set_mcs_key!r}")
        if headers is not None and not (
            isinstance(headers, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise ValueError(f"radio headers must be a table of strings, got {headers!r}")
        _check_timeout(timeout_s)
        self.url = url.rstrip("/")
        self.state_path, self.mcs_path, self.mcs_method = state_path, mcs_path or None, mcs_method
        self.set_mcs_key = set_mcs_key
        self.fields = _check_fields(fields)
        self.headers = dict(headers or {})
        self.timeout_s = float(timeout_s)
        self.endpoint = self.url
        # A radio on a local link must not be reached through an http_proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        url = self.url + path
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", **self.headers}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            raise RadioError(f"radio at {url} answered {method} with HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # refused, unreachable, timed out
            reason = getattr(e, "reason", e)
            raise RadioError(f"radio at {url} did not answer {method} within {self.timeout_s} s: {reason}") from e

    def read_state(self) -> dict[str, float | int]:
        raw = self._request("GET", self.state_path)
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise RadioError(f"radio at {self.url + self.state_path} sent invalid JSON: {raw[:80]!r}") from e
        return parse_reading(doc, self.fields, self.url + self.state_path)

    def set_mcs(self, mcs: int) -> None:
        if self.mcs_path is None:
            raise UnsupportedOperation(f"radio at {self.url} has no mcs_path configured")
        self._request(self.mcs_method, self.mcs_path, {self.set_mcs_key: int(mcs)})


def _check_argv(name: str, argv: Any) -> list[str]:
    if not isinstance(argv, (list, tuple)) or not argv or not all(isinstance(a, str) and a for a in argv):
        raise ValueError(f"radio {name} must be a non-empty list of non-empty strings, got {argv!r}")
    return list(argv)


class CommandRadioControl(RadioControl):
    """Argv templates run without a shell.

    state_argv:   command printing the JSON state document on stdout,
                  e.g. ``["radioctl", "get-state"]``.
    set_mcs_argv: command setting the MCS; ``{mcs}`` in any argument is replaced
                  by the index, e.g. ``["radioctl", "set-mcs", "{mcs}"]``;
                  ``None`` when the radio cannot (set_mcs then raises
                  UnsupportedOperation).
    fields:       reading name -> key path in the state document.
    timeout_s:    per-command timeout, s (default 2.0).

    A command fails (RadioError) if it cannot start, times out, or exits non-zero.
    """

    def __init__(self, state_argv: list[str], set_mcs_argv: list[str] | None = None,
                 fields: dict[str, str] | None = None, timeout_s: float = 2.0):
        self.state_argv = _check_argv("state_argv", state_argv)
        self.set_mcs_argv = None if set_mcs_argv is None else _check_argv("set_mcs_argv", set_mcs_argv)
        if self.set_mcs_argv is not None and not any("{mcs}" in a for a in self.set_mcs_argv):
            raise ValueError(f"radio set_mcs_argv must contain '{{mcs}}' in an argument, got {set_mcs_argv!r}")
        self.fields = _check_fields(fields)
        _check_timeout(timeout_s)
        self.timeout_s = float(timeout_s)
        self.endpoint = shlex.join(self.state_argv)

    def _call(self, argv: list[str]) -> str:
        command = shlex.join(argv)
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired as e:
            raise RadioError(f"radio command `{command}` did not finish within {self.timeout_s} s") from e
        except OSError as e:
            raise RadioError(f"radio command `{command}` could not run: {e}") from e
        if done.returncode != 0:
            raise RadioError(f"radio command `{command}` exited {done.returncode}: {done.stderr.strip()[-200:]}")
        return done.stdout

    def read_state(self) -> dict[str, float | int]:
        out = self._call(self.state_argv)
        try:
            doc = json.loads(out)
        except ValueError as e:
            raise RadioError(f"radio command `{self.endpoint}` printed invalid JSON: {out[:80]!r}") from e
        return parse_reading(doc, self.fields, f"`{self.endpoint}`")

    def set_mcs(self, mcs: int) -> None:
        if self.set_mcs_argv is None:
            raise UnsupportedOperation(f"radio command `{self.endpoint}` has no set_mcs_argv configured")
        self._call([a.replace("{mcs}", str(int(mcs))) for a in self.set_mcs_argv])


RADIO_CONTROLS: dict[str, type[RadioControl]] = {"http": HttpRadioControl, "command": CommandRadioControl}


def create_radio_control(control: str | None = None, **options: Any) -> RadioControl:
    """Build the adapter named by ``control`` ("http" | "command") from the ``[link.radio]`` table."""
    if control not in RADIO_CONTROLS:
        raise ValueError(f"unknown radio control {control!r}; choose one of {sorted(RADIO_CONTROLS)}")
    try:
        return RADIO_CONTROLS[control](**options)
    except TypeError as e:
        raise ValueError(f"radio control {control!r}: bad options {sorted(options)} ({e})") from e
