"""fed-lora's RX half (:class:`FedLoraRx`): the daemon's sessions speaking to the one :class:`BaseStation`.

It checks a device's HELLO (the federation's parameters; under CURVE the key bound to the device id,
``dev<N>.key`` in the allow-list), numbers each session's polls (:func:`check_attempt`), and hands
FED_POLL / FED_UPDATE to the base station under its lock: a poll that finds a round being formed in the
background is answered ``FED_WAIT forming`` at once. The base station itself: :mod:`.base_station`
(HELLO, polls, updates and their emulated uplink) and :mod:`.station_rounds` (planning, forming, records,
restart and resume).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from common.modes.base import Reply, RoundContext, RoundError, RxHalf
from common.modes.fed_lora.messages import (
    FED_VERSION,
    MAX_POLLS,
    RETRY_GROWTH,
    FedPoll,
    FedUpdate,
    FedWait,
)
from common.modes.fed_lora.base_station import BaseStation
from common.modes.fed_lora.station_rounds import FORMING_RETRY_MS, HISTORY_ROUNDS
from common.wire.protocol import Result

log = logging.getLogger("semalign.rx")


DEVICE_KEY_FILE = "dev{}.key"  # in the allow-list directory: the one CURVE key that speaks for device N


def device_key(allow_dir: Path, k: int) -> str | None:
    """The z85 public key in ``allow_dir/dev<k>.key`` (None: no such readable certificate); read on every
    HELLO, so a key admitted or replaced while the RX runs takes effect at once."""
    import zmq.auth

    try:
        public, _ = zmq.auth.load_certificate(str(Path(allow_dir) / DEVICE_KEY_FILE.format(k)))
    except (OSError, ValueError):
        return None
    return public.decode() if isinstance(public, bytes) else str(public)


def check_attempt(store: dict, msg: FedPoll, continuing: bool = False) -> None:
    """A session numbers its polls of a round 0, 1, 2, ... (plan and result polls together): ``attempt``
    must be the next number, or the last one again (a repeat the replay record no longer holds); anything
    else is ``bad_message``. ``continuing``: the round began before the base station restarted, so the
    first poll of it the session shows may carry any number. ``store``: the session's store (keeps the
    last attempt of its recent rounds)."""
    seen = store.setdefault("fed_attempts", {})
    last = seen.get(msg.seq, msg.attempt - 1 if continuing else -1)
    if msg.attempt not in (last, last + 1):
        raise RoundError("bad_message", f"round {msg.seq}: poll attempt {msg.attempt}, but this session's last "
                                        f"poll of the round was {last} (polls count 0, 1, 2, ...)")
    seen[msg.seq] = msg.attempt
    for old in [r for r in seen if r < msg.seq - HISTORY_ROUNDS]:
        del seen[old]


class FedLoraRx(RxHalf):
    """The RX half: the base station behind the daemon's handlers.

    ``replay_errors`` is False: the daemon keeps none of this mode's ERRORs in its replay record; the base
    station answers a repeated request itself from its round state (the same update: the same FED_ACK or
    refusal), so an early or wrong request never turns a later valid one into a recorded ERROR.
    """

    mode = "fed-lora"
    replay_errors = False
    fingerprint_hint = ("devices and the base station must build the same task model: the same --fed-task and "
                        "--seed, the same MLP code or MiniLM weights")

    def __init__(self, station: BaseStation, fingerprint: str, allow_dir: str | Path | None = None):
        self.station = station
        station.background_forming = True  # a served base station never holds a request for its aggregation
        self.fingerprint = fingerprint
        self.allow_dir = Path(allow_dir) if allow_dir else None
        log.info("fed-lora session fingerprint %s", fingerprint)

    def hello_params(self) -> dict:
        s = self.station
        return {**s.spec.params(), "fed_version": FED_VERSION, "modules": s.modules, "policy": s.config.policy,
                "aggregation": s.config.aggregation, "deadline_s": float(s.opt.deadline_s),
                "max_polls": MAX_POLLS}

    @property
    def hello_param_keys(self) -> frozenset[str]:
        """The federation's spec (compared) and the device's own parameters, all required."""
        return frozenset(self.station.spec.params()) | {"fed_version", "device_id", "n_samples", "modules", "profile",
                                                        "train_flops"}

    def check_hello(self, params: dict) -> str | None:
        return self.station.check_device(params, register=False)

    def check_hello_owner(self, params: dict, owner: str | None) -> tuple[str, str] | None:
        """A device id is bound to the CURVE key in ``dev<N>.key`` of the allow-list (``--curve-allow``):
        a HELLO for device N from any other key is refused with ``device_key`` (and logged). On a plain
        socket (``owner`` None, ``--insecure``) nothing is authenticated and nothing is bound."""
        k = params["device_id"]
        if owner is not None:
            bound = device_key(self.allow_dir, k) if self.allow_dir else None
            if bound != owner:
                why = (f"no {DEVICE_KEY_FILE.format(k)} in the allow-list {self.allow_dir}" if bound is None
                       else f"{DEVICE_KEY_FILE.format(k)} holds another key")
                log.warning("HELLO for device %d from CURVE key %s REFUSED: %s", k, owner, why)
                return ("device_key", f"this CURVE key may not speak for device {k}: {why}")
        with self.station.lock:  # a joining device waits for a round being formed (rare; HELLO has no FED_WAIT)
            self.station.register(params)
        return None

    def handlers(self) -> dict:
        return {FedPoll.TYPE: self.on_poll, FedUpdate.TYPE: self.on_update}

    def on_poll(self, msg: FedPoll, ctx: RoundContext) -> Reply:
        s = self.station
        if not s.lock.acquire(blocking=False):  # a round is being formed: answered at once, never held
            return self._forming_wait(msg, ctx)
        try:
            now = s.clock()
            s.tick(now)
            if s.forming:  # this poll closed a round at its deadline: the thread forms it once we return
                return self._forming_wait(msg, ctx)
            return self._on_poll(msg, ctx, now)
        finally:
            s.lock.release()

    def _forming_wait(self, msg: FedPoll, ctx: RoundContext) -> Reply:
        check_attempt(ctx.session, msg, self.station.continuing(msg.seq))
        if msg.attempt >= MAX_POLLS - 1:
            raise RoundError("wait", f"round {msg.seq}: still forming after {MAX_POLLS} polls; giving up on "
                                     "this round")
        # 20 ms, growing with the time the device has waited (a long aggregation, e.g. MiniLM's on a loaded
        # machine, must not use up its MAX_POLLS)
        hint = max(FORMING_RETRY_MS, math.ceil(RETRY_GROWTH * max(0, msg.waited_ms)))
        return Reply(FedWait(msg.session_id, msg.seq, msg.device_id, "forming", hint, 0), final=False)

    def _on_poll(self, msg: FedPoll, ctx: RoundContext, now: int) -> Reply:
        s = self.station
        dev = s.bind(ctx, msg.device_id)
        check_attempt(ctx.session, msg, self.station.continuing(msg.seq))
        if msg.want == "plan":
            return Reply(s.on_plan_poll(dev, msg.seq, msg, now), final=False)
        if msg.want == "result":
            got = s.on_result_poll(dev, msg.seq, msg, now)
            if isinstance(got, FedWait):
                return Reply(got, final=False)
            t = s.clock()
            return Reply(Result(msg.session_id, msg.seq, got, b"", {}, ctx.rx_pid, ctx.received_ns, t, t, t))
        raise RoundError("bad_message", f"want must be 'plan' or 'result', got {msg.want[:32]!r}")

    def on_update(self, msg: FedUpdate, ctx: RoundContext) -> Reply:
        s = self.station
        with s.lock:  # an update waits for a round being formed (it comes before its own round can form)
            now = s.clock()
            s.tick(now)
            dev = s.bind(ctx, msg.device_id)
            return Reply(s.on_update(dev, msg, now), final=False)

    def close(self) -> None:
        self.station.finish_forming()
