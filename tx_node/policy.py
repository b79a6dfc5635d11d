"""Alpha policies: given the budget, choose how many PCA dimensions to send.

A policy is a function ``(BudgetView) -> alpha``; register it in ``POLICIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from common.budget import PayloadLayout, largest_alpha


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


POLICIES: dict[str, AlphaPolicy] = {"largest": largest_fitting}


def get_policy(name: str) -> AlphaPolicy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown alpha policy {name!r}; choose one of {sorted(POLICIES)}") from None
