"""``semalign sweep --steps-from PATH``: rerun a sweep with the step counts a previous one recorded.

A sweep's adaptation rows record the steps each stage ran (``stage_steps``) and the frozen layers'
precision; on another CPU the deadline calibration would plan other counts. A replay runs every
recipe, alpha and seed with exactly the recorded steps per stage (fixed-steps mode: no calibration,
no epoch cap, and no wall-clock cap, ``budget_ms`` None), so its accuracies depend on the payload,
the step counts and the precision only. Timings (``adapt_ms``) are this machine's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from common.modes.pca_lora.alignment import AdaptConfig, LoraAlignment, requested_precision
from common.modes.pca_lora.parts_plan import Stretch

log = logging.getLogger("semalign.sweep")

# what a payload depends on: a replay must build the same payloads
PAYLOAD_KEYS = ("dataset", "fingerprint", "b_max_bytes", "n_test", "value_dtype")
# sweep methods whose rows are adaptations with a step plan
PLANNED = ("lora", "first_layer", "staged", "lora_bank", "lora_nobudget", "default_subset")


def recorded_plans(rows: list[dict]) -> dict:
    """``(method, alpha, seed, n_train) -> {"stage_steps": [...], "stage_plan": [...] or None, "precision":
    str, "cut_by_cap": bool}`` for the adaptation rows of a sweep (``stage_steps``: steps run per stage,
    ``stage_plan``: steps planned per stage, ints; a sweep before ``stage_plan`` was recorded has None)."""
    out = {}
    for r in rows:
        if r.get("mode") == "in-process" and r.get("method") in PLANNED:
            out[(r["method"], int(r["alpha"]), int(r["seed"]), int(r["n_train"]))] = {
                "stage_steps": [int(k) for k in r["stage_steps"]],
                "stage_plan": [int(k) for k in r["stage_plan"]] if r.get("stage_plan") else None,
                "precision": r.get("precision") or "fp32", "cut_by_cap": bool(r.get("cut_by_cap"))}
    return out


def step_counts(rows: list[dict]) -> dict:
    """The step plans of :func:`recorded_plans` as JSON: ``{method: {alpha: {seed: stage_steps}}}``
    (the default recipe's subsets as ``default_subset`` keyed ``"seed/n_train"``)."""
    out: dict = {}
    for (method, alpha, seed, n), p in sorted(recorded_plans(rows).items()):
        key = f"{seed}/{n}" if method == "default_subset" else str(seed)
        out.setdefault(method, {}).setdefault(str(alpha), {})[key] = p["stage_steps"]
    return out


class StepsFrom:
    """The step plans recorded in a previous ``sweep.json``, checked against this run's payload settings.

    Raises ValueError (one line, naming the file) when the file is missing, not a sweep's JSON, has no
    adaptation rows, or was recorded with other payload settings than ``expect`` (:data:`PAYLOAD_KEYS`).
    """

    def __init__(self, path: Path, expect: dict):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise ValueError(f"--steps-from {self.path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--steps-from {self.path}: unreadable ({e})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"--steps-from {self.path}: not JSON ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise ValueError(f"--steps-from {self.path}: not a sweep.json (no 'rows' list)")
        try:
            self.plans = recorded_plans(data["rows"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"--steps-from {self.path}: a row without its step counts ({e!r})") from None
        if not self.plans:
            raise ValueError(f"--steps-from {self.path}: no adaptation rows with step counts")
        for k in PAYLOAD_KEYS:
            if data.get(k) != expect[k]:
                raise ValueError(f"--steps-from {self.path}: recorded with {k} {data.get(k)!r}, this run has "
                                 f"{expect[k]!r} (the payloads would differ)")
        self.machine = data.get("machine")

    def check_covers(self, methods: list[str], dims: list[int], seeds: int) -> None:
        """Before the run: ValueError naming the first (method, alpha, seed) this run needs that the
        file lacks (the subsets' n_train are checked as they come)."""
        have = {(m, a, s) for m, a, s, _ in self.plans}
        for method in (m for m in methods if m in PLANNED):
            for alpha in dims:
                for seed in range(seeds):
                    if (method, alpha, seed) not in have:
                        raise ValueError(f"--steps-from {self.path}: no recorded steps for {method} at alpha "
                                         f"{alpha}, seed {seed}")

    def plan(self, method: str, alpha: int, seed: int, n_train: int) -> dict:
        p = self.plans.get((method, alpha, seed, n_train))
        if p is None:
            raise ValueError(f"--steps-from {self.path}: no recorded steps for {method} at alpha {alpha}, "
                             f"seed {seed}, n_train {n_train}")
        if p["cut_by_cap"] and p["stage_plan"] is None:
            log.warning("%s: %s at alpha %d seed %d was cut by the wall-clock cap when recorded, and the file "
                        "does not say for how many steps its schedule was planned (recorded before "
                        "stage_plan), so the replay is not the same run", self.path, method, alpha, seed)
        return p


class Replay(LoraAlignment):
    """A :class:`LoraAlignment` in fixed-steps mode: each adaptation runs the plan set in :attr:`plan`
    (steps per stage) in :attr:`precision` (the recorded one, unless ``SEMALIGN_PRECISION`` forces
    one), with no wall-clock cap (``budget_ms`` None) and no recalibration."""

    def __init__(self, adapt: AdaptConfig = AdaptConfig(), **kw):
        super().__init__(adapt=replace(adapt, budget_ms=None, deep_budget_ms=None), **kw)
        self.plan: list[int] | None = None
        self.cut_from: list[int] | None = None
        self.precision: str | None = None

    def set(self, recorded: dict) -> None:
        """Use a plan of :meth:`StepsFrom.plan` for the next adaptation(s): the steps run per stage, and for
        a run the cap cut, the plan it was cut from (its first ``sum(stage_steps)`` steps, as a stretch)."""
        forced = requested_precision(self.config)
        self.plan = recorded["stage_steps"]
        self.cut_from = recorded["stage_plan"] if recorded["cut_by_cap"] else None
        self.precision = forced if forced != "auto" else recorded["precision"]

    def calibrate(self, model, codec) -> dict:
        return {"recipe": self.config.recipe, "steps_by": "replayed"}

    def adapt_state(self, model, z, y, codec, **kw):
        if self.plan is None:
            raise RuntimeError("Replay.adapt_state before set(): no recorded plan")
        if self.cut_from and "stretch" not in kw:  # the recorded run's schedule, stopped where the cap stopped it
            kw["stretch"] = Stretch(self.cut_from, "fixed", None, 0, sum(self.plan))
        else:
            kw.setdefault("plan_steps", self.plan)
        kw.setdefault("_precision", self.precision)
        return super().adapt_state(model, z, y, codec, **kw)
