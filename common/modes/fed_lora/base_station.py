"""fed-lora's base station (:class:`BaseStation`): the federation's one owner of its state, and what the
devices ask of it (its RX half, :mod:`.rx`, adapts it to sessions).

One :class:`BaseStation` lives in the RX half and is shared by every session
(each device is one TX session; ``ctx.session`` only binds a session to its
device id). Its state and rounds (planning, forming, saved state, restart and
resume) are :class:`~common.modes.fed_lora.station_rounds.StationRounds`'; here:

- **HELLO**: a device's parameters are checked (:mod:`.device_checks`) and
  the device registered, with its block-fading channel.
- **Collecting**: each participating device fetches its plan (and the
  global factors of its module), trains, and sends ``FED_UPDATE``. The
  update is validated (:func:`~.device_checks.check_update`); its emulated upload time
  is its raw bits over the planned rate; it is lost when compute + upload
  time exceeds the round's ``deadline_s`` or when a seeded draw
  ``U(0, 1) < PER(SINR)`` says so. A delivered update is kept; a lost one is
  dropped from aggregation (its energy still counts).
- **Polls**: a device that asks too early gets ``FED_WAIT`` with a retry
  hint (handlers never wait); a plan poll for the next round, once the
  previous one has formed, plans it (:meth:`StationRounds.plan`); a result
  poll of a formed round gets the device's RESULT fields.
"""

from __future__ import annotations

import logging

import numpy as np

from common.modes.base import RoundContext, RoundError
from common.modes.fed_lora.device_checks import (
    check_update,
    hello_problem,
    profile_from_hello,
    train_flops_from_claim,
)
from common.modes.fed_lora.messages import MAX_POLLS, FedAck, FedPlan, FedPoll, FedUpdate, FedWait, retry_after_ms
from common.modes.fed_lora.optimizer import SKIP, DeviceDecision
from common.modes.fed_lora.records import Device, FedRound, Report, db, finite
from common.modes.fed_lora.station_rounds import StationRounds
from common.modes.fed_lora.uplink import uplink_outcome
from common.modes.fed_lora.wireless import DeviceChannels
from common.wire.protocol import Result
from common.wire.tensors import TensorError, wire_tensor_bytes

log = logging.getLogger("semalign.rx")


class BaseStation(StationRounds):
    """The base station (:class:`StationRounds`) and the requests of its devices: HELLO checks and
    registration, the session a device speaks through, plan and result polls, updates (no sockets)."""

    def check_device(self, params: dict, register: bool = True) -> str | None:
        """Why a device's HELLO ``params`` cannot join (None: it can; it is then registered, unless
        ``register`` is False: :meth:`register` does it once the sender's key was checked)."""
        problem = hello_problem(self.spec, self.data, self.modules, params)
        if problem:
            return problem
        k = params["device_id"]
        try:
            self.derive_train_flops(k, params["train_flops"])
        except ValueError as e:
            return str(e)
        known = self.devices.get(k)
        if known is not None and known.hello != params:
            return (f"device {k} is registered with other parameters (a second device with --device-id {k}?); "
                    "restart the base station to change a device's profile")
        if known is None and register:
            self.register(params)
        return None

    def epoch_flops(self, k: int) -> dict[str, float]:
        """FLOPs of one epoch of local training of each module on device ``k``'s part of the split,
        computed here from the module's shapes and the part's samples (``task.train_flops``)."""
        cache = self.__dict__.setdefault("_epoch_flops", {})
        if k not in cache:
            x, _ = self.data.shard(k)
            cache[k] = {m: float(self.task.train_flops(m, x, 1.0)) for m in self.modules}
        return cache[k]

    def derive_train_flops(self, k: int, claimed: dict) -> dict[str, float]:
        """The FLOPs per round the base station plans device ``k`` with (:func:`train_flops_from_claim`
        of its ``claimed`` HELLO ``train_flops`` and :meth:`epoch_flops`)."""
        return train_flops_from_claim(k, claimed, self.epoch_flops(k), self.modules, self.spec.task)

    def register(self, params: dict) -> None:
        """Register the device of HELLO ``params`` (checked by :meth:`check_device`); idempotent."""
        k = params["device_id"]
        if k in self.devices:
            return
        profile = profile_from_hello(params["profile"])
        channel = DeviceChannels(self.cell, [profile], k_factor=self.config.k_factor,
                                 speed_mps=self.config.speed_mps, round_s=self.config.round_s,
                                 seed=int(np.random.default_rng([self.config.seed, 31, k]).integers(2**31)))
        self.devices[k] = Device(k, params, profile, int(params["n_samples"]),
                                 self.derive_train_flops(k, params["train_flops"]), channel,
                                 queue_j=self.saved_queues.get(k, 0.0))
        if self.first_hello_ns is None:
            self.first_hello_ns = self.clock()
        log.info("device %d joined: %.0f m, %.3g FLOP/s, budget %.4g J/round, %d samples (%d of %d known)",
                 k, profile.distance_m, profile.flops_per_s, profile.energy_budget_j, self.devices[k].n_samples,
                 len(self.devices), self.spec.n_devices)

    def bind(self, ctx: RoundContext, device_id: int) -> Device:
        """The device a session speaks for; a session speaks for one device only."""
        bound = ctx.session.get("device_id")
        if bound is None:
            if device_id not in self.devices:
                raise RoundError("device", f"device {device_id} has not said HELLO to this base station")
            ctx.session["device_id"] = bound = device_id
            self.devices[device_id].session_id = ctx.session_id
        if device_id != bound:
            raise RoundError("device", f"this session speaks for device {bound}, not {device_id}")
        return self.devices[device_id]

    def on_plan_poll(self, dev: Device, r: int, msg: FedPoll, now_ns: int) -> FedPlan | FedWait:
        rnd = self.rounds.get(r)
        if rnd is None:
            if r < self.next_round:
                raise RoundError("round_closed", self._over(r))
            previous = self.rounds.get(r - 1)
            if r > self.next_round or (previous is not None and not previous.formed):
                until = previous.deadline_ns if previous is not None and not previous.formed else None
                return self._wait(dev, msg, "previous_round", until, now_ns)
            if r == self.first_round and not self._joined(now_ns):
                until = self.first_hello_ns + int(self.config.join_timeout_s * 1e9)
                return self._wait(dev, msg, "joining", until, now_ns)
            rnd = self.plan(r, now_ns)
        skip = rnd.decisions.get(dev.device_id)
        if rnd.formed and skip is not None and skip.module is None:  # told to skip: that stands, formed or not
            return self._plan_msg(msg, rnd, dev, skip, "policy")
        if rnd.formed and dev.device_id in rnd.decisions:
            raise RoundError("round_closed", f"round {r} closed ({rnd.record.get('closed_by')}) before this "
                                             "device fetched its plan")
        dev.active = True
        d = rnd.decisions.get(dev.device_id)
        if d is None:  # joined (or came back) after the round was planned: planned from the next round on
            return self._plan_msg(msg, rnd, dev, SKIP, "joined_late")
        if d.module is None:
            return self._plan_msg(msg, rnd, dev, d, "policy")
        if dev.device_id not in rnd.fetched:
            log.info("round %d: device %d fetched its plan (%s)", r, dev.device_id, d.module)
            rnd.fetched.add(dev.device_id)
        return self._plan_msg(msg, rnd, dev, d, "")

    def _plan_msg(self, msg: FedPoll, rnd: FedRound, dev: Device, d: DeviceDecision, reason: str) -> FedPlan:
        tensors = self.start_factors(rnd, d.module) if d.module else []
        gain = rnd.gains.get(dev.device_id, 0.0)
        return FedPlan(msg.session_id, msg.seq, dev.device_id, d.module or "", reason,
                       self.ranks.get(d.module, 0) if d.module else 0, float(d.power_w), float(d.bandwidth_hz),
                       float(self.opt.deadline_s), finite(d.compute_s), finite(d.upload_s, -1.0),
                       finite(d.energy_j, -1.0), float(d.success_prob), db(gain),
                       float(rnd.queues_before.get(dev.device_id, dev.queue_j)), rnd.deadline_ns,
                       self.config.policy, len(rnd.participants), tensors)

    def _wait(self, dev: Device, msg: FedPoll, reason: str, until_ns: int | None, now_ns: int) -> FedWait:
        if msg.attempt >= MAX_POLLS - 1:
            raise RoundError("wait", f"round {msg.seq}: still {reason} after {MAX_POLLS} polls; giving up on "
                                     "this round")
        return FedWait(msg.session_id, msg.seq, dev.device_id, reason,
                       retry_after_ms(msg.waited_ms, msg.attempt, until_ns, now_ns), until_ns or 0)

    def on_result_poll(self, dev: Device, r: int, msg: FedPoll, now_ns: int) -> Result | FedWait:
        rnd = self.rounds.get(r)
        if rnd is None and r in self.kept:  # formed before the base station restarted
            rec = self.kept[r]["devices"].get(str(dev.device_id))
            if rec is None:
                raise RoundError("round_closed", f"round {r} formed without device {dev.device_id}")
            return rec
        if rnd is None:
            if r < self.next_round:
                raise RoundError("round_closed", self._over(r))
            raise RoundError("round", f"round {r} is not known to the base station (planned rounds: "
                                      f"{sorted(self.rounds)})")
        if not rnd.formed:
            return self._wait(dev, msg, "collecting", rnd.deadline_ns, now_ns)
        return self.result_fields(rnd, dev)

    def on_update(self, dev: Device, msg: FedUpdate, now_ns: int) -> FedAck:
        """Check, emulate the uplink of, and record ``dev``'s update (see the module docstring).

        Refusals, in order: a round already over (formed, or dropped from the history) -> ``late``; a
        round not planned yet, or planned without this device, or whose plan this device has not
        fetched -> ``not_planned`` (nothing recorded: the device's real update is still welcome); a
        round beyond the next one -> ``round``; a second, different update -> ``duplicate`` (the same
        update again gets the same answer); then the update's own checks."""
        r, k = msg.seq, dev.device_id
        rnd = self.rounds.get(r)
        if rnd is None:
            if r < self.next_round:
                raise RoundError("late", self._over(r) if r == self.abandoned else
                                 f"round {r} closed before the update came (the base station is at round "
                                 f"{self.next_round})")
            if r == self.next_round:
                raise RoundError("not_planned", f"round {r} is not planned yet: poll for its plan first")
            raise RoundError("round", f"round {r} is not open at the base station (next round to plan: "
                                      f"{self.next_round})")
        d = rnd.decisions.get(k)
        if d is None or d.module is None:
            raise RoundError("not_planned", f"device {k} is not planned to train in round {r}")
        rep = rnd.reports.get(k)
        if rep is not None:
            if rep.digest and rep.digest != msg.digest:
                raise RoundError("duplicate", f"device {k} already reported another update in round {r} "
                                              f"({rep.outcome}{': ' + rep.reason if rep.reason else ''})")
            if rep.ack is not None:
                return rep.ack  # the same update again (its reply was lost): the same answer
            code, text = rep.error or ("duplicate", f"device {k} already reported in round {r} ({rep.outcome})")
            raise RoundError(code, text)
        if rnd.formed:  # its energy was spent all the same: charge the planned energy to its queue
            dev.queue_j += finite(d.energy_j)
            text = f"round {r} closed ({rnd.record.get('closed_by')}) before the update came"
            rnd.reports[k] = Report("late", "round closed", compute_s=d.compute_s, train_s=msg.train_s,
                                    digest=msg.digest, error=("late", text))
            raise RoundError("late", text)
        if k not in rnd.fetched:
            raise RoundError("not_planned", f"device {k} has not fetched its plan for round {r}: poll for it "
                                            "first")
        try:
            arrays, norm = check_update(msg, d.module, dev.n_samples, k, self.shapes[d.module],
                                        self.global_adapter.state())
        except TensorError as e:
            text = f"round {r}, device {k}: {e}"
            self.refuse(dev, rnd, e.code, now_ns, train_s=msg.train_s, digest=msg.digest, message=text)
            raise RoundError(e.code, text) from e
        bits = 8 * wire_tensor_bytes(msg.tensors)
        u = uplink_outcome(self.cell, dev.profile, d.power_w, d.bandwidth_hz, rnd.gains[k], bits,
                           dev.train_flops[d.module], self.opt.deadline_s, self.config.seed, r, k)
        outcome, reason, compute_e, per, sinr_db, draw = (u.outcome, u.reason, u.compute_energy_j,
                                                          u.packet_error, u.uplink_sinr_db, u.draw)
        ack = FedAck(msg.session_id, r, k, u.outcome, u.reason, bits, u.upload_s, u.compute_s,
                     u.transmit_energy_j, u.compute_energy_j, u.packet_error, u.uplink_sinr_db, u.draw)
        compute_s = u.compute_s
        rnd.reports[k] = Report(outcome, reason, bits, ack.upload_s, compute_s, ack.transmit_energy_j, compute_e,
                                per, sinr_db, draw, msg.train_s, ack, norm, 1.0, msg.digest)
        if outcome == "delivered":
            rnd.updates[k] = (arrays, dev.n_samples)
        log.info("round %d: device %d update %s%s (%d bits, %.3g s up, PER %.3g)", r, k, outcome,
                 f" ({reason})" if reason else "", bits, ack.upload_s, per)
        self._maybe_form(rnd, now_ns)
        return ack

    def refuse(self, dev: Device, rnd: FedRound, code: str, now_ns: int, train_s: float = 0.0,
               digest: bytes = b"", message: str = "") -> None:
        """Record ``dev``'s update in ``rnd`` as ``refused`` (``code``: why, e.g. a :class:`TensorError`
        code); the planned module's compute energy (J) is charged, as the device did train."""
        d = rnd.decisions[dev.device_id]
        rnd.reports[dev.device_id] = Report(
            "refused", code, compute_s=d.compute_s, train_s=train_s,
            compute_energy_j=float(dev.profile.compute_energy_j(dev.train_flops[d.module])), digest=digest,
            error=(code, message or code))
        self._maybe_form(rnd, now_ns)

    def fail(self, dev: Device, rnd: FedRound, reason: str, now_ns: int) -> None:
        """Record that ``dev``, planned to train in ``rnd``, reported a failure instead of an update
        (``reason``: its error, at most 200 characters kept); no energy is charged (unknown)."""
        if dev.device_id not in rnd.reports:
            rnd.reports[dev.device_id] = Report("failed", reason[:200])
        self._maybe_form(rnd, now_ns)

