"""fed-lora's base station: the federation's one owner of its state (its RX half, :mod:`.rx`, adapts it to sessions).

One :class:`BaseStation` lives in the RX half and is shared by every session
(each device is one TX session; ``ctx.session`` only binds a session to its
device id). It holds the global adapter (:class:`GlobalAdapter`), the
devices that said HELLO (profile, shard size, training FLOPs per module,
their block-fading channel and virtual energy queue) and the open round.

Round ``r`` (= ``seq`` of every device's session) goes through:

1. **Planning**, on the first ``FED_POLL (want plan)`` for ``r`` once round
   ``r - 1`` has formed (round 0, and the first round after a resume: once all
   ``n_devices`` have said HELLO or ``join_timeout_s`` after the first HELLO). Every *active* known device gets
   a decision from the policy (``ours``: :func:`plan_round`, drift-plus-
   penalty with the Lyapunov queues; ``fixed``: :func:`fixed_plan`;
   ``random``: :func:`random_plan`), with this round's channel gain drawn
   from its fading process. The round's wall-clock deadline is set to
   ``round_timeout_s`` from now.
2. **Collecting**: each participating device fetches its plan (and the
   global factors of its module), trains, and sends ``FED_UPDATE``. The
   update is validated (:func:`adapter_from_wire`); its emulated upload time
   is its raw bits over the planned rate; it is lost when compute + upload
   time exceeds the round's ``deadline_s`` or when a seeded draw
   ``U(0, 1) < PER(SINR)`` says so. A delivered update is kept; a lost one is
   dropped from aggregation (its energy still counts).
3. **Forming**, as soon as every participating device has reported (its
   update delivered, lost or refused) -- or, failing that, on the first
   message of *any* device that arrives after the round's wall-clock
   deadline (there are no timers or threads: the deadline is checked on
   every message, :meth:`BaseStation.tick`). The delivered updates are
   aggregated (``stack-svd``, ``zero-pad`` or ``fedavg``), each device's
   queue advances ``Q = max(Q + E - Ebar, 0)``, the global model is
   evaluated on the test subset and the round's record is written. A device
   that never reported is recorded ``missing`` and left out of planning
   until it polls again.

Handlers never wait: a device that asks too early gets ``FED_WAIT`` with a
retry hint. In the daemon (:class:`FedLoraRx`) forming runs in a thread that
holds the base station's lock, so the request that completed the round is
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
of a round up to that one may carry any attempt number (:func:`check_attempt`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
import numpy as np

from common.modes.base import RoundContext, RoundError
from common.modes.fed_lora.aggregation import AGGREGATIONS, GlobalAdapter, update_norm
from common.modes.fed_lora.messages import (
    FED_VERSION,
    MAX_POLLS,
    RESULT_FIELDS,
    FedAck,
    FedPlan,
    FedPoll,
    FedUpdate,
    FedWait,
    adapter_from_wire,
    adapter_to_wire,
    retry_after_ms,
)
from common.wire.tensors import TensorError, wire_tensor_bytes
from common.modes.fed_lora.optimizer import (
    SKIP,
    DeviceDecision,
    DeviceState,
    OptimizerConfig,
    fixed_plan,
    module_costs,
    plan_round,
    random_plan,
)
from common.modes.fed_lora.records import (
    Device,
    FedRound,
    Report,
    db,
    finite,
    formed_records,
    load_state,
    save_state,
)
from common.modes.fed_lora.spec import FedData, FedSpec, eval_subset, module_ranks, preset, take
from common.modes.fed_lora.uplink import uplink_outcome
from common.modes.fed_lora.wireless import CellConfig, DeviceChannels, DeviceProfile
from common.wire.protocol import Result

log = logging.getLogger("semalign.rx")

POLICIES: tuple[str, ...] = ("ours", "fixed", "random")
HISTORY_ROUNDS = 8  # formed rounds kept in memory (devices fetch their RESULT from them)
FORMING_RETRY_MS = 20  # a poll while a round is being aggregated (FED_WAIT forming) tries again this soon
PROFILE_KEYS = ("distance_m", "max_power_w", "flops_per_s", "flops_per_cycle", "kappa", "energy_budget_j")
PROFILE_LIMITS = {"distance_m": (1.0, 1e6), "max_power_w": (1e-6, 10.0), "flops_per_s": (1e3, 1e18),
                  "flops_per_cycle": (0.01, 1e4), "kappa": (1e-40, 1e-20), "energy_budget_j": (1e-9, 1e6)}
# train_flops: the base station recomputes each module's FLOPs per epoch on the device's part of the split;
# the claim only tells the epoch count, which must be the same for every module and within these factors
# of the task preset's epochs (docs/modes/fed_lora.md, "Checks")
EPOCHS_RANGE = (0.1, 4.0)
# an update whose delta from the global (product space, float64) is above float32's range (or not finite)
# is refused ``non_finite``: its product would overflow the float32 global adapter
MAX_UPDATE_NORM = float(np.finfo(np.float32).max)
EPOCHS_RTOL = 1e-3


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


class BaseStation:
    """The federation's server state and round logic, shared by all sessions (no sockets).

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

    # ------------------------------------------------------------ devices

    def check_device(self, params: dict, register: bool = True) -> str | None:
        """Why a device's HELLO ``params`` cannot join (None: it can; it is then registered, unless
        ``register`` is False: :meth:`register` does it once the sender's key was checked)."""
        problem = self.spec.mismatch(params)
        if problem:
            return problem
        if params.get("fed_version") != FED_VERSION:
            return (f"fed_version {params.get('fed_version')!r}: this base station speaks fed-lora version "
                    f"{FED_VERSION} (docs/protocol.md); upgrade the device")
        k = params.get("device_id")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < self.spec.n_devices:
            return f"device_id {k!r} must be an int in 0..{self.spec.n_devices - 1}"
        expected = len(self.data.parts[k])
        if params.get("n_samples") != expected:
            return (f"device {k}: n_samples={params.get('n_samples')!r}, but part {k} of the agreed split "
                    f"holds {expected} samples (other data?)")
        if params.get("modules") != self.modules:
            return f"modules {params.get('modules')!r} != the base station's {self.modules}"
        profile = params.get("profile")
        if not isinstance(profile, dict) or sorted(profile) != sorted(PROFILE_KEYS):
            return f"profile must be a map with keys {list(PROFILE_KEYS)}"
        for key, (lo, hi) in PROFILE_LIMITS.items():
            v = profile[key]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (math.isfinite(v) and lo <= v <= hi):
                return f"profile {key}={v!r} outside [{lo:g}, {hi:g}]"
        flops = params.get("train_flops")
        if not isinstance(flops, dict) or sorted(flops) != sorted(self.modules) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 1e21
                for v in flops.values()):
            return f"train_flops must map each of {self.modules} to a finite FLOP count in (0, 1e21]"
        try:
            self.derive_train_flops(k, flops)
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
        """The FLOPs per round the base station plans device ``k`` with: its own per-epoch count
        (:meth:`epoch_flops`) times the epoch count the claim implies, which must be one number for all
        modules (relative spread <= :data:`EPOCHS_RTOL`) within :data:`EPOCHS_RANGE` x the task
        preset's epochs; ``ValueError`` names what does not hold. A device therefore cannot make
        one module look cheaper than another, nor its training arbitrarily fast or slow."""
        per_epoch = self.epoch_flops(k)
        epochs = {m: float(claimed[m]) / per_epoch[m] for m in self.modules if per_epoch[m] > 0}
        if not epochs:
            raise ValueError(f"device {k}: no module has a positive FLOP count")
        lo_e, hi_e = min(epochs.values()), max(epochs.values())
        if hi_e > lo_e * (1 + EPOCHS_RTOL):
            raise ValueError(f"device {k}: train_flops {claimed} imply different epoch counts per module "
                             f"({', '.join(f'{m} {e:.4g}' for m, e in epochs.items())}); the base station "
                             "computes each module's FLOPs itself")
        base = preset(self.spec.task).epochs
        lo, hi = EPOCHS_RANGE[0] * base, EPOCHS_RANGE[1] * base
        e = sum(epochs.values()) / len(epochs)
        if not lo <= e <= hi:
            raise ValueError(f"device {k}: train_flops imply {e:.4g} epochs per round, outside [{lo:g}, {hi:g}] "
                             f"({EPOCHS_RANGE[0]:g}..{EPOCHS_RANGE[1]:g} x the task's {base:g})")
        return {m: per_epoch[m] * e for m in self.modules}

    def register(self, params: dict) -> None:
        """Register the device of HELLO ``params`` (checked by :meth:`check_device`); idempotent."""
        k = params["device_id"]
        if k in self.devices:
            return
        p = params["profile"]
        profile = DeviceProfile(distance_m=float(p["distance_m"]), max_power_w=float(p["max_power_w"]),
                                cpu_hz=float(p["flops_per_s"]) / float(p["flops_per_cycle"]),
                                flops_per_cycle=float(p["flops_per_cycle"]), kappa=float(p["kappa"]),
                                energy_budget_j=float(p["energy_budget_j"]))
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
            if msg.module != d.module:
                raise TensorError("module", f"update trains module {msg.module!r}, the plan says {d.module!r}")
            if msg.n_samples != dev.n_samples:
                raise TensorError("n_samples", f"n_samples={msg.n_samples}, device {k} holds {dev.n_samples}")
            arrays = adapter_from_wire(msg.tensors, self.shapes[d.module])
            norm = update_norm(arrays, self.global_adapter.state())
            if not norm <= MAX_UPDATE_NORM:  # finite float32 values whose product overflows: this update alone goes
                raise TensorError("non_finite", f"the update's delta from the global model has norm {norm} "
                                                "(its factors' product overflows)")
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
