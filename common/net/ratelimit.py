"""Rate-limit repeated log lines, so a flood of refusals cannot flood the log.

:class:`RateLimitFilter` is a :class:`logging.Filter`. Records are grouped by
logger name and message *template* (``record.msg`` before ``%`` formatting,
so ``"TX %s REFUSED"`` from a thousand addresses is one group). In each group
the first ``burst`` records of a ``window_s`` window pass; the rest are
counted and dropped, and when the group logs again after its window (or at
:meth:`RateLimitFilter.flush`) one summary line goes out at the level of the
dropped records::

    semalign.security: suppressed 4211 similar messages in the last 10 s
    (last: TX 10.0.0.7 REFUSED (CURVE key ...): ...)

``select(record)`` (optional) limits the filter to some records, e.g. those
logged once per connection attempt; the others pass untouched.

Attach it to a logger (``rate_limit("semalign.security")``): the summary is
handed to that logger's handlers directly (``Logger.callHandlers``), so it is
not itself filtered. Thread-safe (ZeroMQ's ZAP handler logs from its own
thread); ``clock`` is injectable for tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

DEFAULT_BURST = 5
DEFAULT_WINDOW_S = 10.0
MAX_GROUPS = 1024  # distinct (logger, template) groups remembered; oldest forgotten first

SUMMARY_TEMPLATE = "%s: suppressed %d similar messages in the last %.0f s (last: %s)"


@dataclass
class _Group:
    start: float
    passed: int = 0
    suppressed: int = 0
    last: logging.LogRecord | None = None


class RateLimitFilter(logging.Filter):
    """First ``burst`` records per (logger, template) per ``window_s`` pass, then a summary line.

    ``select(record)``: only records it returns true for are limited (default:
    all). ``sink(record)`` delivers a summary; the default hands it to the
    handlers of the record's logger (``logging.getLogger(name).callHandlers``).
    :attr:`suppressed_total` counts every dropped record.
    """

    def __init__(self, burst: int = DEFAULT_BURST, window_s: float = DEFAULT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic,
                 sink: Callable[[logging.LogRecord], None] | None = None,
                 select: Callable[[logging.LogRecord], bool] | None = None):
        super().__init__()
        if burst < 1 or window_s <= 0:
            raise ValueError(f"rate limit needs burst >= 1 and window_s > 0, got {burst}, {window_s}")
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self.sink = sink or _to_handlers
        self.select = select
        self.suppressed_total = 0
        self._groups: OrderedDict[tuple[str, str], _Group] = OrderedDict()
        self._lock = threading.Lock()
        self._next_sweep = float("-inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_semalign_summary", False) or (self.select and not self.select(record)):
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            due = []
            if now >= self._next_sweep:  # other groups' summaries, at most once per window
                due = self._due(now, exclude=key)
                self._next_sweep = now + self.window_s
            group = self._groups.get(key)
            if group is not None and now - group.start >= self.window_s:
                if group.suppressed:
                    due.append(self._summary(group, now))
                group = None
            if group is None:
                group = self._groups[key] = _Group(now)
                while len(self._groups) > MAX_GROUPS:
                    self._groups.popitem(last=False)
            self._groups.move_to_end(key)
            group.passed += 1
            keep = group.passed <= self.burst
            if not keep:
                group.suppressed += 1
                group.last = record
                self.suppressed_total += 1
        for summary in due:
            self.sink(summary)
        return keep

    def flush(self, force: bool = False) -> int:
        """Emit the summaries of groups whose window is over (all of them when ``force``); returns how many."""
        now = self.clock()
        with self._lock:
            due = self._due(now, force=force)
        for summary in due:
            self.sink(summary)
        return len(due)

    def _due(self, now: float, exclude=None, force: bool = False) -> list[logging.LogRecord]:
        """Summaries of other groups whose window ended; such groups are forgotten. Caller holds the lock."""
        out = []
        for key in [k for k, g in self._groups.items()
                    if k != exclude and (force or now - g.start >= self.window_s)]:
            group = self._groups.pop(key)
            if group.suppressed:
                out.append(self._summary(group, now))
        return out

    def _summary(self, group: _Group, now: float) -> logging.LogRecord:
        last = group.last
        try:
            text = last.getMessage()
        except Exception:  # a bad format string must not break logging
            text = str(last.msg)
        record = logging.makeLogRecord({
            "name": last.name, "levelno": last.levelno, "levelname": last.levelname,
            "pathname": last.pathname, "lineno": last.lineno, "funcName": last.funcName,
            "msg": SUMMARY_TEMPLATE,
            "args": (last.name, group.suppressed, max(now - group.start, self.window_s), text),
            "_semalign_summary": True, "suppressed": group.suppressed,
        })
        group.suppressed, group.last = 0, None
        return record


def _to_handlers(record: logging.LogRecord) -> None:
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.callHandlers(record)


def rate_limit(logger: str | logging.Logger, burst: int = DEFAULT_BURST,
               window_s: float = DEFAULT_WINDOW_S,
               select: Callable[[logging.LogRecord], bool] | None = None) -> RateLimitFilter:
    """Attach a :class:`RateLimitFilter` to ``logger`` (once: an attached one is returned as is)."""
    lg = logging.getLogger(logger) if isinstance(logger, str) else logger
    for f in lg.filters:
        if isinstance(f, RateLimitFilter):
            return f
    f = RateLimitFilter(burst, window_s, select=select)
    lg.addFilter(f)
    return f
