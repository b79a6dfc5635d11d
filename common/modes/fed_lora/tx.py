"""fed-lora's TX half: one device of the federation.

The device holds part ``device_id`` of the federation's Dirichlet split
(:func:`~common.modes.fed_lora.spec.split_pool`), the task model with its
LoRA modules, and a profile it announces in HELLO: distance to the base
station, emulated compute speed (FLOP/s), transmit power cap and long-term
energy budget per round, plus its shard size and the FLOPs of one round of
local training per module. Compute time and energy are *emulated* from those
FLOPs (the device does not sleep); the local training itself is real and its
wall time is recorded.

Round ``seq = r`` (messages in :mod:`~common.modes.fed_lora.messages`):

1. poll for the plan (``FED_POLL`` number ``a``, want "plan"), sleeping ``retry_after_ms``
   on every ``FED_WAIT``;
2. if a module is planned: load the global starting factors and head from
   the plan, train the module on the shard (:meth:`AdapterTask.train_adapter`),
   send ``FED_UPDATE`` and read ``FED_ACK`` (delivered or lost);
3. poll for the result (want "result") until the round's RESULT: the
   aggregate's test accuracy, the device's energy and queue.

The record's ``status`` is ``ok`` when the round ended with its RESULT
(whether the upload was delivered, lost or skipped: see ``outcome``), and
``failed`` with the base station's ERROR (a refused update, a round this
device missed) otherwise.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from common.learn.train import TrainConfig
from common.modes.base import RoundFailed, RoundIO, TxHalf
from common.modes.fed_lora.device_config import DeviceConfig
from common.modes.fed_lora.messages import (
    FED_VERSION,
    MAX_POLLS,
    FedAck,
    FedPlan,
    FedUpdate,
    FedWait,
    adapter_from_wire,
    adapter_to_wire,
    poll,
)
from common.wire.tensors import TensorError
from common.modes.fed_lora.spec import FedSpec
from common.results.log import RoundRecord
from common.wire.protocol import Result

log = logging.getLogger("semalign.tx")
MAX_SLEEP_S = 30.0  # longest single wait between polls, whatever the hint says


class FedLoraTx(TxHalf):
    """A device: its shard, its model and its profile; trains the module the base station picks."""

    mode = "fed-lora"

    def __init__(self, spec: FedSpec, task, x, y: np.ndarray, config: DeviceConfig, fingerprint: str):
        if not 0 <= config.device_id < spec.n_devices:
            raise ValueError(f"device_id {config.device_id} outside 0..{spec.n_devices - 1} "
                             f"(--fed-devices {spec.n_devices})")
        self.spec, self.task, self.x, self.y, self.config = spec, task, x, np.asarray(y, np.int64), config
        self.fingerprint = fingerprint
        self.modules = list(task.modules)
        self.train_flops = {m: float(task.train_flops(m, x, config.epochs)) for m in self.modules}
        self.shapes = {m: {k: v.shape for k, v in task.get_adapter(m).items()} for m in self.modules}
        self.sleep = time.sleep  # tests may pass a faster clock

    def hello_params(self) -> dict:
        return {**self.spec.params(), "fed_version": FED_VERSION, "device_id": self.config.device_id,
                "n_samples": len(self.y), "modules": self.modules, "profile": self.config.profile(),
                "train_flops": self.train_flops}

    def check_hello_reply(self, params: dict) -> str | None:
        problem = self.spec.mismatch(params)
        if problem:
            return problem
        if params.get("fed_version") != FED_VERSION:
            return f"the base station speaks fed-lora version {params.get('fed_version')!r}, this device {FED_VERSION}"
        if params.get("modules") != self.modules:
            return f"the base station's modules {params.get('modules')!r} != this device's {self.modules}"
        return None

    def config_record(self) -> dict:
        return {**self.spec.params(), "device_id": self.config.device_id, "n_samples": len(self.y),
                "profile": self.config.profile(), "epochs": self.config.epochs,
                "batch_size": self.config.batch_size, "lr": self.config.lr, "train_flops": self.train_flops,
                "fingerprint": self.fingerprint}

    # ------------------------------------------------------------ a round

    def run_round(self, seq: int, channel, rec: RoundRecord, io: RoundIO) -> None:
        k = self.config.device_id
        f = rec.fields
        f.update(device_id=k, fed_round=seq)
        polls = [0]  # the round's next poll number

        def ask(want: str):
            t0 = time.monotonic()
            while True:
                if polls[0] >= MAX_POLLS:
                    raise RoundFailed(f"round {seq}: no {want} after {MAX_POLLS} polls")
                msg = poll(polls[0], io.session_id, seq, k, want, int((time.monotonic() - t0) * 1e3))
                polls[0] += 1
                reply = io.exchange(msg, (FedPlan.TYPE, FedWait.TYPE, Result.TYPE))
                f["polls"] = polls[0]
                if not isinstance(reply, FedWait):
                    f[f"wait_{want}_s"] = time.monotonic() - t0
                    return reply
                self.sleep(min(max(reply.retry_after_ms, 0) / 1e3, MAX_SLEEP_S))

        plan = ask("plan")
        if not isinstance(plan, FedPlan):
            raise RoundFailed(f"expected FED_PLAN for round {seq}, got {plan.TYPE}")
        rec.deadline_s = plan.deadline_s
        f.update(planned_module=plan.module or "skip", planned_energy_j=plan.energy_j,
                 planned_success_prob=plan.success_prob, local_train_s=0.0, train_loss=None)
        if plan.module:
            self._train_and_send(seq, plan, rec, io)
        result = ask("result")
        if not isinstance(result, Result):
            raise RoundFailed(f"expected RESULT for round {seq}, got {result.TYPE}")
        f.update(result.fields)
        rec.rx_pid = result.rx_pid
        rec.status = "ok"
        log.info("round %d: %s %s, energy %.4g J (budget %.4g), queue %.4g, global accuracy %.4f", seq,
                 f.get("module"), f.get("outcome"), f.get("energy_j", 0.0), f.get("energy_budget_j", 0.0),
                 f.get("queue_j", 0.0), f.get("global_acc", float("nan")))

    def _train_and_send(self, seq: int, plan: FedPlan, rec: RoundRecord, io: RoundIO) -> None:
        module, f = plan.module, rec.fields
        if module not in self.shapes:
            raise RoundFailed(f"the base station planned module {module!r}, unknown to this device")
        try:
            start = adapter_from_wire(plan.tensors, self.shapes[module])
        except TensorError as e:
            raise RoundFailed(f"the plan's global factors are unusable: {e.code}: {e}") from e
        arrays, loss, f["local_train_s"] = self.train_module(seq, module, start)
        f["train_loss"] = loss if math.isfinite(loss) else None
        msg = FedUpdate(io.session_id, seq, self.config.device_id, module, len(self.y),
                        loss if math.isfinite(loss) else -1.0, float(f["local_train_s"]), adapter_to_wire(arrays))
        ack = io.exchange(msg, (FedAck.TYPE,))
        f.update(ack_outcome=ack.outcome, ack_reason=ack.reason)

    def train_module(self, seq: int, module: str, start: dict) -> tuple[dict, float, float]:
        """Round ``seq``'s local training of ``module`` from the global ``start`` factors and head.

        ``start``: name -> float32 array, as :func:`adapter_from_wire` returns it
        for ``self.shapes[module]``. Trains on this device's shard with its
        epochs, batch and learning rate, batches seeded by (federation seed,
        round, device). Returns ``(arrays, loss, train_s)``: the adapter to
        upload (name -> float32 array, :meth:`update_arrays`), the mean loss of
        the last epoch (may be NaN) and the local training wall time in s.
        Raises :class:`RoundFailed` for an unknown module or a failed training.
        (The daemon's round and Flower's ClientApp both train through here.)
        """
        if module not in self.shapes:
            raise RoundFailed(f"the base station planned module {module!r}, unknown to this device")
        self.task.set_adapter(module, start)
        cfg = TrainConfig(epochs=self.config.epochs, batch_size=self.config.batch_size, lr=self.config.lr,
                          seed=int(np.random.default_rng([self.spec.seed, seq, self.config.device_id])
                                   .integers(2**31)))
        t0 = time.perf_counter()
        try:
            report = self.task.train_adapter(module, self.x, self.y, cfg)
        except (ValueError, RuntimeError) as e:  # recorded; the base station closes the round at its deadline
            raise RoundFailed(f"local training of {module} failed: {type(e).__name__}: {e}") from e
        train_s = time.perf_counter() - t0
        return self.update_arrays(seq, self.task.get_adapter(module)), float(report.mean_loss), train_s

    def update_arrays(self, seq: int, arrays: dict) -> dict:
        """The adapter to upload in round ``seq`` (the trained one; a test subclass may alter it)."""
        return arrays
