"""Alpha policies: given the budget, choose how many PCA dimensions to send.

A policy is a function ``(BudgetView) -> alpha``; register it in ``POLICIES``.
Policies that need a table (``lookahead``) are built by :func:`get_policy`
from ``table``; ``fixed:N`` always sends ``N`` dimensions (measurement sweeps).
How many training vectors then travel is the TX's payload rule: all that fit
(eq. 2, ``fill_payload``), or, when there is nothing to align, only as many
as :func:`lean_n_train` says still pay.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from common.modes.pca_lora.budget import BudgetError, PayloadLayout, largest_alpha, n_train_max


@dataclass(frozen=True)
class BudgetView:
    """What a policy may look at: budget (bytes), codec limit, vector counts, sizes."""

    b_max_bytes: int
    d_max: int
    n_test: int
    n_min_train: int
    layout: PayloadLayout


AlphaPolicy = Callable[[BudgetView], int]


def largest_fitting(view: BudgetView) -> int:
    """The paper's rule: the largest ``alpha <= d_max`` with ``n_test`` test and
    ``n_min_train`` training vectors inside ``B_max``."""
    return largest_alpha(view.b_max_bytes, view.d_max, view.n_test, view.n_min_train, view.layout)


class PolicyTableError(ValueError):
    """A policy table that cannot be used (missing, malformed, other format)."""


POLICY_TABLE_VERSION = 1


class AccuracyTable:
    """Expected adapted accuracy by alpha and training-vector count (written by ``semalign sweep``).

    File: ``{"format_version": 1, "method": ..., "alphas": {"20": [[n_train, accuracy], ...], ...}}``
    with accuracies in [0, 1]; ``n_train = 0`` is the unadapted (pre-trained) accuracy.
    Between measured counts the accuracy is interpolated linearly in ``log(1 + n)``;
    beyond the largest it is held (no extrapolation upward), below the smallest
    it falls linearly towards the ``n = 0`` point when there is one.
    """

    def __init__(self, points: dict[int, list[tuple[int, float]]], source: str = "table"):
        if not points:
            raise PolicyTableError(f"{source}: no alphas in the policy table")
        self.points = {}
        for alpha, rows in points.items():
            rows = sorted((int(n), float(a)) for n, a in rows)
            if int(alpha) < 1 or not rows or any(not 0 <= a <= 1 or n < 0 for n, a in rows):
                raise PolicyTableError(f"{source}: alpha {alpha}: need [n_train >= 0, accuracy in [0, 1]] rows")
            self.points[int(alpha)] = rows
        self.source = source

    @classmethod
    def load(cls, path: str | Path) -> "AccuracyTable":
        p = Path(path)
        try:
            raw = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise PolicyTableError(f"policy table {p}: unreadable ({e})") from e
        if not isinstance(raw, dict) or raw.get("format_version") != POLICY_TABLE_VERSION:
            raise PolicyTableError(f"policy table {p}: format version "
                                   f"{raw.get('format_version') if isinstance(raw, dict) else None!r}, "
                                   f"expected {POLICY_TABLE_VERSION}; re-run `semalign sweep`")
        try:
            return cls({int(a): [tuple(r) for r in rows] for a, rows in raw["alphas"].items()}, str(p))
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyTableError(f"policy table {p}: malformed ({e})") from e

    @property
    def alphas(self) -> list[int]:
        return sorted(self.points)

    def expected(self, alpha: int, n_train: int) -> float:
        """Expected accuracy at a tabulated ``alpha`` with ``n_train`` training vectors."""
        rows = self.points[alpha]
        x = math.log1p(max(n_train, 0))
        xs = [math.log1p(n) for n, _ in rows]
        if x >= xs[-1]:
            return rows[-1][1]
        if x <= xs[0]:
            return rows[0][1] if rows[0][0] == 0 or len(rows) == 1 else rows[0][1] * x / xs[0]
        for (x0, (_, a0)), (x1, (_, a1)) in zip(zip(xs, rows), zip(xs[1:], rows[1:])):
            if x <= x1:
                return a0 + (a1 - a0) * (x - x0) / (x1 - x0)
        return rows[-1][1]


class LookaheadPolicy:
    """The alpha (of those tabulated, ``<= d_max``) whose expected adapted accuracy is highest
    with the training vectors that then fit in ``B_max`` (eq. 2); ties go to the larger alpha.

    Falls back to :func:`largest_fitting` when no tabulated alpha fits at all.
    """

    def __init__(self, table: AccuracyTable):
        self.table = table

    def scores(self, view: BudgetView) -> dict[int, tuple[int, float]]:
        """alpha -> (n_train that fits, expected accuracy), for the alphas that fit."""
        out = {}
        for alpha in self.table.alphas:
            if alpha > view.d_max:
                continue
            try:
                n = n_train_max(view.b_max_bytes, alpha, view.n_test, view.layout)
            except BudgetError:
                continue
            out[alpha] = (n, self.table.expected(alpha, n))
        return out

    def __call__(self, view: BudgetView) -> int:
        scores = self.scores(view)
        if not scores:
            return largest_fitting(view)
        return max(scores, key=lambda a: (round(scores[a][1], 6), a))


def lean_n_train(table: AccuracyTable | None, alpha: int, n_max: int, tolerance: float = 0.001) -> int:
    """Training vectors still worth sending at an alpha with nothing to align.

    0 without a table or when ``alpha`` is not tabulated; else the fewest
    (of 0, the tabulated counts and ``n_max``) whose expected accuracy is
    within ``tolerance`` (0.1 pp) of what all ``n_max`` would give.
    """
    if table is None or alpha not in table.points or n_max <= 0:
        return 0
    best = table.expected(alpha, n_max)
    for n in sorted({0, n_max, *(k for k, _ in table.points[alpha] if k < n_max)}):
        if table.expected(alpha, n) >= best - tolerance:
            return n
    return n_max


def fixed_alpha(alpha: int) -> AlphaPolicy:
    """Always ``alpha`` (capped at ``d_max``); for sweeps that measure one alpha at a time."""
    if alpha < 1:
        raise ValueError(f"fixed alpha must be >= 1, got {alpha}")
    return lambda view: min(alpha, view.d_max)


POLICIES: dict[str, AlphaPolicy] = {"largest": largest_fitting}
TABLE_POLICIES: dict[str, Callable[[AccuracyTable], AlphaPolicy]] = {"lookahead": LookaheadPolicy}


def get_policy(name: str, table: str | Path | None = None) -> AlphaPolicy:
    """A policy by name: ``largest``, ``lookahead`` (needs ``table``), or ``fixed:N``."""
    if name.startswith("fixed:"):
        try:
            return fixed_alpha(int(name.split(":", 1)[1]))
        except ValueError as e:
            raise ValueError(f"policy {name!r}: expected fixed:N with an integer N >= 1") from e
    if name in TABLE_POLICIES:
        if not table:
            raise ValueError(f"policy {name!r} needs --policy-table (the policy_table.json a "
                             "`semalign sweep` writes)")
        return TABLE_POLICIES[name](AccuracyTable.load(table))
    try:
        return POLICIES[name]
    except KeyError:
        known = sorted([*POLICIES, *TABLE_POLICIES, "fixed:N"])
        raise ValueError(f"unknown alpha policy {name!r}; choose one of {known}") from None
