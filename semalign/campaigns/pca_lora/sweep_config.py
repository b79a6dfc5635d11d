"""``semalign sweep``'s settings: the methods it compares (:data:`METHODS`, the RX recipes they measure),
:class:`SweepConfig` (budget ``B_max`` in bytes, rate in bit/s, deadline in s) and :class:`E2EConfig`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from common.modes.pca_lora.adapt_config import DEFAULT_RECIPE
from common.modes.pca_lora.budget import budget_bytes
from semalign.campaigns.pca_lora.runner import reference_rate_bps

METHODS = ("pretrained", "lora", "first_layer", "staged", "lora_bank", "lora_nobudget", "end_to_end", "full_ft",
           "last_layer")
# sweep method -> the RX's --adapt-recipe it measures
RECIPE_METHODS = {"lora": "lora", "first_layer": "first-layer", "staged": "staged"}
DEFAULT_METHOD = next(m for m, r in RECIPE_METHODS.items() if r == DEFAULT_RECIPE)


@dataclass(frozen=True)
class E2EConfig:
    """End-to-End training: Adam at ``lr``, ``batch`` vectors, early stop after ``patience``
    epochs without a better validation accuracy (``val_fraction`` of the training set)."""

    max_epochs: int = 30
    patience: int = 3
    batch: int = 128
    lr: float = 1e-3
    val_fraction: float = 0.1
    threads: int = 1

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self) | {"threads": 0}, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class SweepConfig:
    dims: tuple[int, ...]
    seeds: int = 3
    methods: tuple[str, ...] = METHODS
    b_max_bytes: int | None = None
    rate_bps: float | None = None
    deadline_s: float = 0.05
    n_test: int = 500
    value_dtype: str = "float16"
    ft_steps: int = 150
    table_fractions: tuple[float, ...] = (0.05, 0.2, 0.5)
    e2e: E2EConfig = field(default_factory=E2EConfig)
    live: bool = False
    steps_from: str | None = None  # a previous sweep.json: replay its step counts (replay.py)

    def __post_init__(self):
        if not self.dims or any(a < 1 for a in self.dims):
            raise ValueError(f"dims must be positive integers, got {self.dims}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")

    @property
    def rate(self) -> float:
        return self.rate_bps or reference_rate_bps()

    @property
    def budget(self) -> int:
        return self.b_max_bytes or budget_bytes(self.rate, self.deadline_s)
