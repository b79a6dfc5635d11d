"""A round's adaptation spread over its parts: which steps each part trains (:class:`Stretch`), the
plan cut to a cap, and one report summed over the parts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from common.learn import fastlora
from common.modes.pca_lora.adapt_config import AdaptReport
from common.modes.pca_lora.calibration import Calibration


@dataclass
class Stretch:
    """What one part of a round in parts trains: steps ``[start, end)`` of the round's ``plan`` (steps per
    stage, in order), with one :class:`fastlora.Resume` per stage carrying Adam and the schedule."""

    plan: list[int]
    steps_by: str
    cal: Calibration | None
    start: int = 0
    end: int = 0
    resumes: dict = field(default_factory=dict)

    def spans(self) -> list[tuple[int, int]]:
        """(offset within the stage, steps) this stretch runs of each stage."""
        out, first = [], 0
        for k in self.plan:
            lo, hi = max(self.start, first), min(self.end, first + k)
            out.append((lo - first, max(0, hi - lo)))
            first += k
        return out

    def resume(self, stage: int) -> fastlora.Resume:
        return self.resumes.setdefault(stage, fastlora.Resume(self.plan[stage]))


def summed_report(reports: list[AdaptReport], requested: int) -> AdaptReport:
    """One report for a round's parts: steps, stage steps and time summed, the last part's verdict."""
    first, last = reports[0], reports[-1]
    steps = sum(r.steps for r in reports)
    stages = [sum(x) for x in itertools.zip_longest(*(r.stage_steps for r in reports), fillvalue=0)]
    return replace(last, steps=steps, steps_requested=requested, complete=steps == requested,
                   duration_ms=sum(r.duration_ms for r in reports), stage_steps=stages,
                   cut_by_cap=any(r.cut_by_cap for r in reports), warm_start=first.warm_start,
                   warm_from_alpha=first.warm_from_alpha)


def cap_plan(plan: list[int], cap: int) -> list[int]:
    """``plan`` with at most ``cap`` steps in all: later stages give way first."""
    out, left = [], cap
    for n in plan:
        out.append(min(n, left))
        left -= out[-1]
    while len(out) > 1 and out[-1] == 0:
        out.pop()
    return out
