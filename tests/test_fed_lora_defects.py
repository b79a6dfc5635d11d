"""fed-lora defects of issue 19, each over real ZeroMQ sockets (an in-process RX served by ``ServedRx``,
a raw DEALER speaking the wire protocol as a device would).

- a second, different FED_UPDATE of a round is ``duplicate`` (same session and a new session of the
  device), the same update again gets its FED_ACK again; an update after its round closed is ``late``;
- FED_POLL's ``attempt`` is 0..63 and counts 0, 1, 2, ... within a round (else ``bad_message``);
- an early or wrong request never poisons a later valid one (no fed-lora ERROR in the replay record);
  an update before its plan is ``not_planned``;
- ``train_flops`` is derived at the base station (a device cannot steer its compute time).
"""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from common.link.sidelink import create_sidelink
from common.modes.base import get_mode
from common.modes.fed_lora.messages import FedAck, FedPlan, FedUpdate, FedWait, adapter_from_wire, adapter_to_wire, poll
from common.wire.protocol import PROTOCOL_VERSION, Channel, Error, Hello, Result, decode, encode
from rx_node.daemon import RxNode
from tests.helpers import ServedRx

MODE = get_mode("fed-lora")


class Device:
    """A raw DEALER that speaks for one device: one request, its reply (CHANNELs skipped)."""

    def __init__(self, address: str, half, session_id: int):
        self.half, self.sid, self.k, self.address = half, session_id, half.config.device_id, address
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.attempt = {}

    def send(self, msg_or_frame, timeout_s: float = 10.0):
        frame = msg_or_frame if isinstance(msg_or_frame, bytes) else encode(msg_or_frame)
        self.sock.send(frame)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.sock.poll(100):
                m = decode(self.sock.recv())
                if not isinstance(m, Channel):
                    return m
        raise TimeoutError("no reply")

    def hello(self, params=None):
        params = self.half.hello_params() if params is None else params
        return self.send(Hello("tx", self.sid, "fed-lora", self.half.fingerprint, params, 0, 0, 1, 0))

    def poll(self, seq: int, want: str, through_forming: bool = True):
        """One poll; with ``through_forming`` polled again (as a device does) while a round is being formed."""
        while True:
            a = self.attempt.get(seq, 0)
            self.attempt[seq] = a + 1
            reply = self.send(poll(a, self.sid, seq, self.k, want))
            if not (through_forming and isinstance(reply, FedWait) and reply.reason == "forming"):
                return reply
            time.sleep(reply.retry_after_ms / 1e3)

    def update(self, seq: int, module: str, arrays: dict):
        return self.send(FedUpdate(self.sid, seq, self.k, module, len(self.half.y), 1.0, 0.1,
                                   adapter_to_wire(arrays)))

    def close(self):
        self.sock.close()


@pytest.fixture
def federation():
    """A served base station of ``n`` devices (policy fixed) and its devices, each with a HELLO said."""
    served, socks = [], []

    def start(n=2, hello=True, **opts):
        half = MODE.build_rx({"fed_devices": n, "fed_policy": "fixed", **opts})
        node = RxNode({"fed-lora": half}, create_sidelink("loopback", trace="demo"))
        served.append(ServedRx(node, 1 << 26))
        devs = [Device(served[-1].address, MODE.build_tx({"fed_devices": n, "device_id": k}), 100 + k)
                for k in range(n)]
        socks.extend(devs)
        if hello:
            for d in devs:
                assert isinstance(d.hello(), Hello)
        return half, devs

    yield start
    for d in socks:
        d.close()
    for s in served:
        s.stop()


def trained(dev: Device, plan: FedPlan, shift: float = 0.0) -> dict:
    arrays = adapter_from_wire(plan.tensors, dev.half.shapes[plan.module])
    return {k: (v + np.float32(shift)).astype(np.float32) for k, v in arrays.items()}


# ------------------------------------------------------------------ duplicate and late


def test_a_second_different_update_is_duplicate_from_the_same_and_a_new_session(federation):
    half, (d0, d1) = federation(2)
    p0, p1 = d0.poll(0, "plan"), d1.poll(0, "plan")
    assert isinstance(p0, FedPlan) and isinstance(p1, FedPlan)
    first = d0.update(0, p0.module, trained(d0, p0, 0.01))
    assert isinstance(first, FedAck)
    other = d0.update(0, p0.module, trained(d0, p0, 0.02))  # a different update, same session
    assert isinstance(other, Error) and other.code == "duplicate", other
    again = d0.update(0, p0.module, trained(d0, p0, 0.01))  # the same update again: the same answer
    assert isinstance(again, FedAck) and again == first
    # the device's new session (a restarted device): the same rules
    new = Device(d0.address, d0.half, 777)
    try:
        assert isinstance(new.hello(), Hello)
        other2 = new.update(0, p0.module, trained(d0, p0, 0.03))
        assert isinstance(other2, Error) and other2.code == "duplicate", other2
        same2 = new.update(0, p0.module, trained(d0, p0, 0.01))
        assert isinstance(same2, FedAck) and same2.outcome == first.outcome and same2.draw == first.draw
    finally:
        new.close()
    assert half.station.rounds[0].reports[0].outcome == first.outcome  # the first update stands


def test_an_update_after_its_round_closed_is_late(federation):
    half, (d0, d1) = federation(2, fed_round_timeout_s=0.5)
    p0, p1 = d0.poll(0, "plan"), d1.poll(0, "plan")
    assert isinstance(d0.update(0, p0.module, trained(d0, p0)), FedAck)
    time.sleep(0.6)  # past round 0's wall-clock deadline; device 1 never reported
    res = d0.poll(0, "result")
    assert isinstance(res, Result) and res.fields["closed_by"] == "deadline"
    late = d1.update(0, p1.module, trained(d1, p1))
    assert isinstance(late, Error) and late.code == "late", late
    rec = half.station.history[0]["devices"][1]
    assert rec["outcome"] == "missing"
    # a round long gone from the base station's memory is late too (not "round")
    half.station.next_round = 50
    gone = d1.update(3, p1.module, trained(d1, p1))
    assert isinstance(gone, Error) and gone.code == "late", gone


# ------------------------------------------------------------------ poll numbers


def raw_poll(sid, seq, k, attempt, want="plan"):
    return msgpack.packb({"v": PROTOCOL_VERSION, "type": "FED_POLL", "session_id": sid, "seq": seq, "device_id": k,
                          "attempt": attempt, "want": want, "waited_ms": 0})


@pytest.mark.parametrize("attempt", [64, -1, 1000])
def test_a_poll_attempt_outside_0_63_is_bad_message(federation, attempt):
    _, (d0, _) = federation(2)
    err = d0.send(raw_poll(d0.sid, 0, 0, attempt))
    assert isinstance(err, Error) and err.code == "bad_message" and "attempt" in err.message, err


def test_a_request_seq_past_the_last_round_is_bad_message(federation):
    """seq 2**63 - 1 decodes (CHANNEL carries a round's seq + 1) but names no round: bad_message, seq -1, and
    no CHANNEL 2**63 (which no int64 holds) follows."""
    _, (d0, _) = federation(2)
    err = d0.send(raw_poll(d0.sid, 2**63 - 1, 0, 0))
    assert isinstance(err, Error) and (err.code, err.seq) == ("bad_message", -1) and "outside" in err.message, err
    assert isinstance(d0.poll(0, "plan"), FedPlan)  # the session goes on


def test_polls_count_0_1_2_within_a_round(federation):
    _, (d0, _) = federation(2)
    err = d0.send(raw_poll(d0.sid, 0, 0, 5))  # the first poll of a round is number 0
    assert isinstance(err, Error) and err.code == "bad_message", err
    zero = d0.send(raw_poll(d0.sid, 0, 0, 0))
    assert isinstance(zero, (FedPlan, FedWait))
    err = d0.send(raw_poll(d0.sid, 0, 0, 40))  # no jumping ahead
    assert isinstance(err, Error) and err.code == "bad_message", err
    one = d0.send(raw_poll(d0.sid, 0, 0, 1))
    assert isinstance(one, (FedPlan, FedWait))
    assert d0.send(raw_poll(d0.sid, 0, 0, 1)) == one  # a re-sent poll: from the record
    assert d0.send(raw_poll(d0.sid, 0, 0, 0)) == zero
    assert isinstance(d0.send(raw_poll(d0.sid, 1, 0, 0)), (FedPlan, FedWait))  # each round counts from 0


# ------------------------------------------------------------------ no poisoned replay record


def test_an_early_update_does_not_poison_the_real_one(federation):
    half, (d0,) = federation(1)
    arrays = d0.half.task.get_adapter("all-r8")
    early = d0.update(1, "all-r8", arrays)  # round 1 is two rounds ahead
    assert isinstance(early, Error) and early.code == "round", early
    before_plan = d0.update(0, "all-r8", arrays)  # round 0 is not planned yet
    assert isinstance(before_plan, Error) and before_plan.code == "not_planned", before_plan
    for r in (0, 1):
        plan = d0.poll(r, "plan")
        assert isinstance(plan, FedPlan) and plan.module == "all-r8"
        ack = d0.update(r, "all-r8", arrays)  # the very same frame as the early one for r = 1
        assert isinstance(ack, FedAck), ack
        res = d0.poll(r, "result")
        assert isinstance(res, Result) and res.fields["fed_round"] == r
    assert [h["delivered"] for h in half.station.history] == [[0], [0]]


def test_an_update_before_its_plan_poll_is_not_planned_and_the_round_goes_on(federation):
    half, (d0, d1) = federation(2)
    p1 = d1.poll(0, "plan")  # round 0 is planned for both; device 0 has not fetched its plan
    assert isinstance(p1, FedPlan)
    arrays = d0.half.task.get_adapter(p1.module)
    err = d0.update(0, p1.module, arrays)
    assert isinstance(err, Error) and err.code == "not_planned", err
    assert 0 not in half.station.rounds[0].reports  # nothing recorded: the round is not lost
    p0 = d0.poll(0, "plan")
    assert isinstance(p0, FedPlan)
    assert isinstance(d0.update(0, p0.module, trained(d0, p0)), FedAck)


# ------------------------------------------------------------------ train_flops


def test_train_flops_are_derived_at_the_base_station(federation):
    half, devs = federation(2, hello=False)
    d0, d1 = devs
    honest = d0.half.hello_params()
    station = half.station
    # a device that claims its training is almost free (or very costly) is refused
    for scale in (1e-6, 1e3):
        params = {**honest, "train_flops": {m: v * scale for m, v in honest["train_flops"].items()}}
        err = d0.hello(params)
        assert isinstance(err, Error) and err.code == "params" and "epochs" in err.message, err
    # one module claimed cheaper than the others
    flops = dict(honest["train_flops"])
    flops["all-r8"] *= 0.1
    err = d0.hello({**honest, "train_flops": flops})
    assert isinstance(err, Error) and err.code == "params" and "different epoch counts" in err.message, err
    # the old [0, 1e21] trust: a huge claim is refused, not planned with
    err = d0.hello({**honest, "train_flops": {m: 1e21 for m in honest["train_flops"]}})
    assert isinstance(err, Error) and err.code == "params"
    assert 0 not in station.devices
    assert isinstance(d0.hello(), Hello) and isinstance(d1.hello(), Hello)
    x, _ = station.data.shard(0)
    for m in station.modules:  # what is planned with: the base station's FLOPs x the claimed epochs (5)
        assert station.devices[0].train_flops[m] == pytest.approx(station.task.train_flops(m, x, 5.0))


# ------------------------------------------------------------------ forming off the request path


def test_a_poll_while_a_round_forms_gets_fed_wait_forming_and_the_last_update_is_not_held(federation):
    """The update that completes a round is acknowledged while the aggregation still runs (held here on an
    event, so nothing depends on the CPU's speed); a result poll meanwhile gets FED_WAIT forming; once the
    round has formed the same session's next poll gets its RESULT."""
    import threading

    half, (d0, d1) = federation(2)
    station, release, entered = half.station, threading.Event(), threading.Event()
    evaluate = station.evaluate

    def held_evaluate():
        entered.set()
        assert release.wait(60)
        return evaluate()

    station.evaluate = held_evaluate
    p0, p1 = d0.poll(0, "plan"), d1.poll(0, "plan")
    assert isinstance(d0.update(0, p0.module, trained(d0, p0, 0.01)), FedAck)
    ack = d1.update(0, p1.module, trained(d1, p1, 0.01))  # completes the round
    assert isinstance(ack, FedAck) and entered.wait(60) and station.forming  # acked while forming
    wait = d0.poll(0, "result", through_forming=False)
    assert isinstance(wait, FedWait) and wait.reason == "forming" and wait.retry_after_ms == 20, wait
    release.set()
    station.finish_forming()
    assert not station.forming and isinstance(d0.poll(0, "result"), Result)

