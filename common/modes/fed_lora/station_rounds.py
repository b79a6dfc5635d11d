"""fed-lora's base station, its state and rounds (:class:`StationRounds`): planning, forming, saved state.

:class:`~common.modes.fed_lora.base_station.BaseStation` adds what the
devices ask of it (HELLO, polls, updates). It holds the global adapter
(:class:`GlobalAdapter`), the devices that said HELLO (profile, shard size,
training FLOPs per module, their block-fading channel and virtual energy
queue) and the open round. Round ``r`` (= ``seq`` of every device's session):

1. **Planning**, on the first ``FED_POLL (want plan)`` for ``r`` once round
   ``r - 1`` has formed (round 0, and the first round after a resume: once all
   ``n_devices`` have said HELLO or ``join_timeout_s`` after the first
   HELLO). Every *active* known device gets a decision from the policy (``ours``: :func:`plan_round`, drift-plus-
   penalty with the Lyapunov queues; ``fixed``: :func:`fixed_plan`;
   ``random``: :func:`random_plan`), with this round's channel gain drawn
   from its fading process. The round's wall-clock deadline is set to
   ``round_timeout_s`` from now.
2. **Collecting**: the devices' plans and updates (:mod:`.base_station`).
3. **Forming**, as soon as every participating device has reported (its
   update delivered, lost or refused) -- or, failing that, on the first
   message of *any* device that arrives after the round's wall-clock
   deadline (there are no timers or threads: the deadline is checked on
   every message, :meth:`StationRounds.tick`). The delivered updates are
   aggregated (``stack-svd``, ``zero-pad`` or ``fedavg``), each device's
   queue advances ``Q = max(Q + E - Ebar, 0)``, the global model is
   evaluated on the test subset and the round's record is written. A device
   that never reported is recorded ``missing`` and left out of planning
   until it polls again.

Handlers never wait: a device that asks too early gets ``FED_WAIT`` with a
retry hint. In the daemon (:class:`~common.modes.fed_lora.rx.FedLoraRx`)
forming runs in a thread that holds the base station's lock, so the request that completed the round is
answered at once and a poll that arrives while a round forms gets
``FED_WAIT`` ``forming`` within the serving loop's own time (updates and
joining HELLOs, which cannot be answered "wait", take the lock and wait).

**Restart and resume** (``docs/modes/fed_lora.md``). With ``out`` set, per-round
records go to ``out/base_station.jsonl`` and the state to ``out/state.npz`` +
``out/state.json``, saved at the start, at every planning (``state.json`` only:
``next_round`` moves past the planned round) and at every forming. With
``resume`` the base station starts from that state: a round that was planned
and not formed is *abandoned* (not re-opened: its plans and updates died with
the process); whatever a device sends for it is answered ERROR ``late`` or
``round_closed`` saying so and naming the next round, which the device then
polls. The last :data:`HISTORY_ROUNDS` formed rounds' records are read back so
their RESULTs are still answered; the first round after a resume is planned
like round 0 (once the devices have said HELLO again); a session's first poll
of a round up to that one may carry any attempt number
(:func:`~common.modes.fed_lora.rx.check_attempt`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from common.modes.fed_lora.aggregation import GlobalAdapter
from common.modes.fed_lora.messages import RESULT_FIELDS, adapter_to_wire
from common.modes.fed_lora.optimizer import (
    DeviceDecision,
    DeviceState,
    OptimizerConfig,
    fixed_plan,
    module_costs,
    plan_round,
    random_plan,
)
from common.modes.fed_lora.records import Device, FedRound, Report, db, formed_records, load_state, save_state
from common.modes.fed_lora.spec import FedData, FedSpec, eval_subset, module_ranks, take
from common.modes.fed_lora.station_config import BaseStationConfig
from common.modes.fed_lora.wireless import CellConfig

log = logging.getLogger("semalign.rx")

HISTORY_ROUNDS = 8  # formed rounds kept in memory (devices fetch their RESULT from them)
FORMING_RETRY_MS = 20  # a poll while a round is being aggregated (FED_WAIT forming) tries again this soon


class StationRounds:
    """The federation's server state and round logic, shared by all sessions (no sockets; the devices'
    requests: :class:`~common.modes.fed_lora.base_station.BaseStation`).

    ``spec``/``data``: the federation and its data (test set for evaluation,
    the split for checking shard sizes); ``task``: the model (for module
    shapes and evaluation); ``cell``/``optimizer``: the uplink and the
    drift-plus-penalty settings; ``clock``: wall clock in ns (tests pass a fake);
    ``capacity_exponent``: of the modules' relative capacity (:func:`module_costs`).
    """

    def __init__(self, spec: FedSpec, data: FedData, task, cell: CellConfig, optimizer: OptimizerConfig,
                 config: BaseStationConfig = BaseStationConfig(), clock=time.time_ns,
                 capacity_exponent: float = 0.5):
        self.spec, self.data, self.task = spec, data, task
        self.cell, self.opt, self.config = cell, optimizer, config
        self.clock = clock
        self.modules = list(task.modules)
        self.ranks = module_ranks(task)
        self.shapes = {m: self._shapes(m) for m in self.modules}
        self.costs = module_costs({m: task.upload_bits(m) for m in self.modules}, capacity_exponent)
        fixed = config.fixed_module or max(self.modules, key=task.upload_bits)
        if fixed not in self.modules:
            raise ValueError(f"fixed_module {fixed!r} is not one of {self.modules}")
        self.fixed_module = fixed
        head = {k: v for k, v in task.get_adapter(self.modules[0]).items() if k.startswith("head.")}
        self.global_adapter = GlobalAdapter(config.aggregation, head, seed=config.seed)
        self.devices: dict[int, Device] = {}
        self.rounds: dict[int, FedRound] = {}
        self.next_round = 0  # the round to plan next
        self.formed = -1  # the last round formed
        self.first_round = 0  # planned like round 0, once the devices have (re)joined: 0, or the first after a resume
        self.abandoned: int | None = None  # the round that was open when the base station stopped (resume)
        self.kept: dict[int, dict] = {}  # resume: the last formed rounds' records (their RESULTs), by round
        self.first_hello_ns: int | None = None
        self.saved_queues: dict[int, float] = {}
        self.history: list[dict] = []  # per formed round: the base station's record
        # With background_forming (the daemon's FedLoraRx) a round forms in a thread that takes `lock`, which
        # every handler holds too; polls that find it taken are answered FED_WAIT `forming` at once.
        self.lock = threading.Lock()
        self.background_forming = False
        self._forming: threading.Thread | None = None
        idx = eval_subset(len(data.test_y), config.eval_size, spec.seed)
        self.eval_x, self.eval_y = take(data.test_x, idx), data.test_y[idx]
        self.out = Path(config.out) if config.out else None
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
        if config.resume:
            self._load()
        elif self.out:  # a new federation: a new log
            (self.out / "base_station.jsonl").write_text("")
        self.accuracy = self.evaluate()
        if self.out and not config.resume:  # a base station killed before round 0 formed resumes from here
            self._save()
        log.info("fed-lora base station: task %s, %d devices expected, policy %s, aggregation %s, "
                 "global accuracy %.3f on %d test samples", spec.task, spec.n_devices, config.policy,
                 config.aggregation, self.accuracy, len(self.eval_y))

    def _shapes(self, module: str) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        ranks = self.task.ranks(module)
        for layer, (out, inp) in self.task.layer_shapes(module).items():
            shapes[f"{layer}.lora_A"] = (ranks[layer], inp)
            shapes[f"{layer}.lora_B"] = (out, ranks[layer])
        head = self.task.head
        shapes["head.weight"] = (head.out_features, head.in_features)
        shapes["head.bias"] = (head.out_features,)
        return shapes

    # ------------------------------------------------------------ rounds

    def tick(self, now_ns: int) -> None:
        """Form the open round if its wall-clock deadline has passed (called on every message)."""
        for rnd in list(self.rounds.values()):
            if not rnd.formed and now_ns >= rnd.deadline_ns:
                self._close(rnd, now_ns, "deadline")

    @property
    def forming(self) -> bool:
        """A round is being formed in the background (aggregation, evaluation, save)."""
        return self._forming is not None and self._forming.is_alive()

    def _close(self, rnd: FedRound, now_ns: int, closed_by: str) -> None:
        """Form ``rnd`` now, or with :attr:`background_forming` in a thread that takes :attr:`lock` as soon as
        the handler that closed the round returns, so no request waits for the aggregation."""
        if self.forming:
            return  # one at a time: this round is the one being formed
        if not self.background_forming:
            self.form(rnd, now_ns, closed_by)
            return

        def form_locked():
            with self.lock:
                try:
                    self.form(rnd, now_ns, closed_by)
                except Exception:  # as a handler's would be: logged; the next message's tick tries again
                    log.exception("round %d: forming failed (%s); it is tried again on the next message",
                                  rnd.index, closed_by)

        self._forming = threading.Thread(target=form_locked, name=f"fed-form-{rnd.index}", daemon=True)
        self._forming.start()

    def finish_forming(self, timeout_s: float = 60.0) -> None:
        """Wait for a round being formed in the background (at shutdown)."""
        if self._forming is not None:
            self._forming.join(timeout_s)

    def _joined(self, now_ns: int) -> bool:
        if len(self.devices) >= self.spec.n_devices:
            return True
        return self.first_hello_ns is not None and now_ns - self.first_hello_ns >= self.config.join_timeout_s * 1e9

    def plan(self, r: int, now_ns: int) -> FedRound:
        """Plan round ``r`` for every active known device (see the module docstring)."""
        ids = sorted(k for k, d in self.devices.items() if d.active)
        decisions: dict[int, DeviceDecision] = {}
        gains = {k: float(self.devices[k].channel.sample()[0]) for k in ids}
        queues = {k: self.devices[k].queue_j for k in self.devices}
        risk = objective = 0.0
        if ids:
            states = [DeviceState(self.devices[k].profile, gains[k], self.devices[k].n_samples,
                                  self.devices[k].train_flops) for k in ids]
            q = [queues[k] for k in ids]
            if self.config.policy == "ours":
                plan = plan_round(states, self.costs, q, self.cell, self.opt)
            elif self.config.policy == "fixed":
                plan = fixed_plan(states, next(c for c in self.costs if c.name == self.fixed_module), q,
                                  self.cell, self.opt)
            else:
                plan = random_plan(states, self.costs, q, self.cell, self.opt,
                                   np.random.default_rng([self.config.seed, 41, r]))
            decisions = dict(zip(ids, plan.decisions))
            risk, objective = plan.risk, plan.objective
        rnd = FedRound(r, now_ns, now_ns + int(self.silent_deadline_s(decisions) * 1e9), decisions, gains,
                       queues, risk, objective)
        self.rounds[r] = rnd
        self.next_round = r + 1
        if self.out:  # a base station restarted from here abandons round r
            self._save(state=False)
        log.info("round %d planned (%s): %s", r, self.config.policy,
                 ", ".join(f"dev{k} {d.module or 'skip'} {d.power_w:.3g} W {d.bandwidth_hz / 1e3:.3g} kHz"
                           for k, d in decisions.items()) or "no devices")
        if not rnd.participants:
            self.form(rnd, now_ns, "nobody_planned")
        return rnd

    def silent_deadline_s(self, decisions: dict[int, DeviceDecision]) -> float:
        """Wall-clock seconds from planning after which the round forms without the devices that have not
        reported: ``min(round_timeout_s, silent_slack_s + silent_margin x max_k (compute_s + upload_s))``
        over the devices planned to train (the plan's emulated compute and air time; the slack covers the
        real local training and transport). A device that has not reported by then is ``missing``."""
        planned = [d.compute_s + d.upload_s for d in decisions.values() if d.module is not None
                   and math.isfinite(d.compute_s + d.upload_s)]
        expected = max(planned, default=0.0)
        return min(self.config.round_timeout_s, self.config.silent_slack_s + self.config.silent_margin * expected)

    def start_factors(self, rnd: FedRound, module: str) -> list[dict]:
        """The global adapter's starting factors for ``module`` in ``rnd`` (computed once per round)."""
        if module not in rnd.starts:
            arrays = self.global_adapter.for_module(self.task.layer_shapes(module), self.task.ranks(module))
            rnd.starts[module] = adapter_to_wire(arrays)
        return rnd.starts[module]

    def continuing(self, r: int) -> bool:
        """Round ``r`` may have begun at the devices before this base station was restarted (resume): the
        rounds up to the first one it plans (:func:`check_attempt`)."""
        return self.config.resume and r <= self.first_round

    def _over(self, r: int) -> str:
        """Why round ``r`` (< :attr:`next_round`, no longer kept) cannot be joined."""
        if r == self.abandoned:
            return (f"round {r} was abandoned: the base station restarted while it was open (its plans and "
                    f"updates are lost); the next round is {self.next_round}")
        return f"round {r} is over (the base station is at round {self.next_round}); this device missed it"

    def _maybe_form(self, rnd: FedRound, now_ns: int) -> None:
        if not rnd.formed and rnd.complete():
            self._close(rnd, now_ns, "all_reported")

    def form(self, rnd: FedRound, now_ns: int, closed_by: str) -> None:
        """Aggregate the delivered updates, advance the queues, evaluate, record (see the module docstring)."""
        delivered = sorted(rnd.updates)
        if delivered:
            before = self.global_adapter.state()
            layers, head = dict(self.global_adapter.layers), dict(self.global_adapter.head)
            population = sum(d.n_samples for d in self.devices.values())
            scales = self.clip_scales(rnd, delivered)
            try:
                self.global_adapter.aggregate([rnd.updates[k][0] for k in delivered],
                                              [rnd.updates[k][1] for k in delivered],
                                              population_samples=population, scales=scales)
            except ValueError as e:  # all-or-nothing: the global adapter is unchanged
                log.error("round %d: aggregation failed, the global adapter is unchanged: %s", rnd.index, e)
                closed_by += "+aggregation_failed"
            after = self.global_adapter.state()
            if not all(np.isfinite(v).all() for v in after.values()):  # never keep a non-finite global
                self.global_adapter.layers, self.global_adapter.head = layers, head
                closed_by += "+non_finite_aggregate_dropped"
                log.error("round %d: the aggregate held NaN/Inf; the global adapter is unchanged", rnd.index)
            else:
                changed = set(after) != set(before) or any(not np.array_equal(after[key], before[key])
                                                           for key in after)
                if changed:
                    self.accuracy = self.evaluate()
        energies = {}
        for k, dev in self.devices.items():
            d = rnd.decisions.get(k)
            rep = rnd.reports.get(k)
            if d is None:
                energies[k] = 0.0
                continue
            energies[k] = (rep.compute_energy_j + rep.transmit_energy_j) if rep is not None else 0.0
            if d.module is not None and rep is None:
                dev.active = False  # missing: left out of planning until it polls again
            dev.queue_j = max(dev.queue_j + energies[k] - dev.profile.energy_budget_j, 0.0)
        rnd.formed = True
        self.formed = rnd.index
        devices = {k: self._device_record(rnd, k, energies.get(k, 0.0), closed_by, now_ns) for k in rnd.decisions}
        rnd.record = {"round": rnd.index, "closed_by": closed_by, "global_acc": self.accuracy,
                      "delivered": delivered, "policy": self.config.policy,
                      "aggregation": self.config.aggregation, "risk": rnd.risk, "objective": rnd.objective,
                      "round_wall_s": (now_ns - rnd.planned_ns) / 1e9, "devices": devices,
                      "queues_j": {k: d.queue_j for k, d in self.devices.items()}}
        self.history.append(rnd.record)
        for old in [i for i in self.rounds if i <= rnd.index - HISTORY_ROUNDS]:
            del self.rounds[old]
        if self.out:
            self._save(rnd.record)
        log.info("round %d formed (%s): %d/%d updates delivered, global accuracy %.4f", rnd.index, closed_by,
                 len(delivered), len(rnd.participants), self.accuracy)

    def clip_scales(self, rnd: FedRound, delivered: list[int]) -> list[float]:
        """Clipping factors ``c_k = min(1, clip_factor x median_j ||U_j - G|| / ||U_k - G||)`` of the
        delivered updates (all 1 with ``clip_factor`` 0, or a median of 0); recorded in each report."""
        norms = [rnd.reports[k].update_norm for k in delivered]
        bound = self.config.clip_factor * float(np.median(norms)) if norms else 0.0
        scales = [1.0 if bound <= 0 or n <= bound else bound / n for n in norms]
        for k, c in zip(delivered, scales):
            rnd.reports[k].clip_scale = c
            if c < 1:
                log.warning("round %d: device %d's update clipped: norm %.4g > %.3g x the median %.4g (scale %.3g)",
                            rnd.index, k, rnd.reports[k].update_norm, self.config.clip_factor,
                            bound / self.config.clip_factor, c)
        return scales

    def _device_record(self, rnd: FedRound, k: int, energy_j: float, closed_by: str, now_ns: int) -> dict:
        d = rnd.decisions[k]
        rep = rnd.reports.get(k)
        dev = self.devices[k]
        if d.module is None:
            outcome, reason = "skipped", "policy"
        elif rep is None:
            outcome, reason = "missing", "no update before the round closed"
        else:
            outcome, reason = rep.outcome, rep.reason
        rep = rep or Report(outcome)
        return {"fed_round": rnd.index, "device_id": k, "module": d.module or "skip",
                "rank": self.ranks.get(d.module, 0) if d.module else 0,
                "skip_reason": "policy" if d.module is None else "", "power_w": float(d.power_w),
                "bandwidth_hz": float(d.bandwidth_hz), "upload_bits": rep.upload_bits, "upload_s": rep.upload_s,
                "compute_s": rep.compute_s, "transmit_energy_j": rep.transmit_energy_j,
                "compute_energy_j": rep.compute_energy_j, "energy_j": energy_j,
                "energy_budget_j": dev.profile.energy_budget_j, "queue_j": dev.queue_j, "outcome": outcome,
                "delivered": outcome == "delivered", "loss_reason": reason if outcome != "delivered" else "",
                "packet_error": rep.packet_error, "uplink_sinr_db": rep.uplink_sinr_db,
                "gain_db": db(rnd.gains.get(k, 0.0)), "global_acc": self.accuracy,
                "n_planned": len(rnd.participants), "n_delivered": len(rnd.updates), "closed_by": closed_by,
                "policy": self.config.policy, "aggregation": self.config.aggregation,
                "round_wall_s": (now_ns - rnd.planned_ns) / 1e9, "update_norm": rep.update_norm,
                "clip_scale": rep.clip_scale}

    def result_fields(self, rnd: FedRound, dev: Device) -> dict:
        """The RESULT fields of ``dev`` in the formed round ``rnd``."""
        rec = rnd.record["devices"].get(dev.device_id)
        if rec is None:  # joined after planning: skipped this round
            rec = {**{f: 0 for f in RESULT_FIELDS}, "fed_round": rnd.index, "device_id": dev.device_id,
                   "module": "skip", "skip_reason": "joined_late", "outcome": "skipped", "delivered": False,
                   "loss_reason": "joined_late", "energy_budget_j": dev.profile.energy_budget_j,
                   "queue_j": dev.queue_j, "global_acc": rnd.record["global_acc"],
                   "n_planned": len(rnd.participants), "n_delivered": len(rnd.updates),
                   "closed_by": rnd.record["closed_by"], "policy": self.config.policy,
                   "aggregation": self.config.aggregation, "round_wall_s": rnd.record["round_wall_s"]}
        return rec

    def evaluate(self) -> float:
        """Accuracy (0..1) of the base model plus the global adapter on the evaluation subset."""
        pred = self.task.predict_merged(self.eval_x, self.global_adapter.state())
        return float(np.mean(pred == self.eval_y)) if len(self.eval_y) else float("nan")

    # ------------------------------------------------------------ saved state (records.py)

    def _save(self, record: dict | None = None, state: bool = True) -> None:
        """Save the base station (records.save_state): ``record`` of the round just formed (appended to the
        log), the global adapter unless ``state`` is False (a round was planned: only state.json changes)."""
        queues = {**self.saved_queues, **{k: d.queue_j for k, d in self.devices.items()}}  # J, by device
        meta = {"spec": self.spec.params(), "next_round": self.next_round, "formed": self.formed,
                "accuracy": self.accuracy, "aggregation": self.config.aggregation,
                "layers": sorted(self.global_adapter.layers), "queues_j": {str(k): q for k, q in queues.items()},
                "config": {k: v for k, v in asdict(self.config).items()}}
        save_state(self.out, record, self.global_adapter.state() if state else None, meta)

    def _load(self) -> None:
        """Start from the saved state (see "Restart and resume" in the module docstring)."""
        arrays, meta = load_state(self.out, self.spec, self.config.aggregation)
        self.global_adapter.head = {k: arrays[k].astype(np.float32) for k in ("head.weight", "head.bias")}
        self.global_adapter.layers = {layer: (arrays[f"{layer}.lora_B"], arrays[f"{layer}.lora_A"])
                                      for layer in meta["layers"]}
        self.next_round = self.first_round = int(meta["next_round"])
        self.formed = int(meta.get("formed", self.next_round - 1))  # a state saved only at forming: none open
        self.saved_queues = {int(k): float(v) for k, v in meta.get("queues_j", {}).items()}
        self.kept = {row["round"]: row for row in formed_records(self.out, self.formed)[-HISTORY_ROUNDS:]}
        if self.formed < self.next_round - 1:
            self.abandoned = self.next_round - 1
            log.warning("round %d was open when the base station stopped: abandoned (its plans and updates are "
                        "lost); devices asking for it are told round %d is next", self.abandoned, self.next_round)
        log.info("resumed from %s: next round %d (planned once the devices have said HELLO again)", self.out,
                 self.next_round)
