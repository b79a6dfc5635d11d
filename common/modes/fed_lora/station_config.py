"""fed-lora's base-station settings (:class:`BaseStationConfig`), torch-free: ``mode.py`` takes the
option defaults from it without loading the base station (:mod:`.base_station`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.modes.fed_lora.aggregation import AGGREGATIONS

POLICIES: tuple[str, ...] = ("ours", "fixed", "random")


@dataclass(frozen=True)
class BaseStationConfig:
    """The base station's settings (units in the names).

    ``policy``: ours, fixed or random; ``aggregation``: one of
    :data:`AGGREGATIONS`; ``fixed_module``: the module of the fixed baseline
    (None: the largest); ``round_timeout_s``: wall-clock time from planning
    after which a round forms without the devices still missing, at the
    latest; ``silent_margin``/``silent_slack_s``: the round forms without a
    silent device earlier, ``silent_slack_s + silent_margin x max over the
    participants of the plan's compute_s + upload_s`` after planning
    (:meth:`BaseStation.silent_deadline_s`); ``clip_factor``: every delivered
    update's norm is clipped to ``clip_factor x`` the median of the round's
    delivered update norms (0: no clipping; :mod:`aggregation`);
    ``join_timeout_s``: wall-clock time from the first HELLO after which
    round 0 is planned with the devices known by then; ``eval_size``: test
    samples the global model is evaluated on (0 = all); ``k_factor``,
    ``speed_mps``, ``round_s``: each device's Rician block fading (one block
    per round, Jakes correlation over ``round_s``); ``seed``: fading, loss
    draws and the random policy; ``out``: directory for the per-round log and
    the saved state (None: nothing written); ``resume``: start from the state
    saved in ``out``.
    """

    policy: str = "ours"
    aggregation: str = "stack-svd"
    fixed_module: str | None = None
    round_timeout_s: float = 60.0
    silent_margin: float = 3.0
    silent_slack_s: float = 10.0
    clip_factor: float = 1.0
    join_timeout_s: float = 30.0
    eval_size: int = 0
    k_factor: float = 1.0
    speed_mps: float = 1.0
    round_s: float = 1.0
    seed: int = 0
    out: str | None = None
    resume: bool = False

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        for name in ("round_timeout_s", "join_timeout_s", "round_s", "silent_margin", "silent_slack_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)!r}")
        if not (self.clip_factor == 0 or (math.isfinite(self.clip_factor) and self.clip_factor >= 1)):
            raise ValueError(f"clip_factor must be 0 (no clipping) or finite and >= 1, got {self.clip_factor!r}")
        if self.eval_size < 0:
            raise ValueError(f"eval_size must be >= 0, got {self.eval_size}")
        if self.aggregation == "fedavg" and self.policy != "fixed":
            raise ValueError("aggregation fedavg averages factors of equal rank only: use it with policy fixed "
                             "(ours and random switch between modules of different ranks)")
        if self.resume and not self.out:
            raise ValueError("resume needs the directory of the saved state (out)")
