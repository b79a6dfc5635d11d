"""fed-lora under Flower's deployment engine (flwr 1.41, the ``flower`` extra).

The integration test starts a real ``flower-superlink`` and two real
``flower-supernode`` processes on loopback (TLS and SuperNode authentication with throwaway keys, free ports, private
``FLWR_HOME`` s under ``tmp_path``) and runs two rounds of the mlp task through
``flwr run deploy/flower`` (:func:`run_flower_local`). The other tests drive the
ServerApp's pieces in-process against the real base station: a trained update,
malformed / non-finite updates and a failed node, the run and node configs, and
the ArrayRecord conversion.
"""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

pytest.importorskip("flwr")

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    Metadata,
    RecordDict,
)

from common.modes.base import get_mode
from common.modes.fed_lora.flower.config import (
    RUN_OPTIONS,
    device_options,
    flower_key,
    run_options,
)
from common.modes.fed_lora.flower.local import (
    APP_DIR,
    FlowerRunError,
    alive,
    run_flower_local,
)
from common.modes.fed_lora.flower.records import (
    arrayrecord_from_wire,
    plan_content,
    plan_from_content,
    update_content,
    update_from_content,
    wire_from_arrayrecord,
)
from common.modes.fed_lora.flower.server import receive
from common.modes.fed_lora.messages import adapter_from_wire, adapter_to_wire
from common.wire.tensors import TensorError

MODE = get_mode("fed-lora")
PROFILES = [  # two of semalign fed's device profiles (distance m, FLOP/s, budget J)
    {"device-id": 0, "fed-distance-m": 150.0, "fed-flops-per-s": 4e10, "fed-energy-budget-j": 0.01},
    {"device-id": 1, "fed-distance-m": 400.0, "fed-flops-per-s": 2.4e10, "fed-energy-budget-j": 0.005},
]


# ------------------------------------------------------------------ real SuperLink + SuperNodes


def test_a_supernode_whose_key_is_not_registered_is_refused(tmp_path):
    """TLS + SuperNode authentication: a SuperNode signing in with a key nobody registered is refused by the
    SuperLink (412, "No SuperNode found with the given public key") and gives up (Flower's exit code 305)."""
    import os
    import subprocess
    import sys

    from common.files import free_port
    from common.modes.fed_lora.flower.local import flower_command, stop_all, throwaway_pki

    pki = throwaway_pki(tmp_path / "keys", 1, "127.0.0.1")
    port = free_port("127.0.0.1")
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
    procs = []

    def start(name, argv):
        env = dict(os.environ, FLWR_HOME=str(tmp_path / name), PATH=path)
        procs.append(subprocess.Popen(argv, stdout=open(tmp_path / f"{name}.log", "w"), stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True))
        return procs[-1]

    try:
        start("superlink", [flower_command("flower-superlink"), "--ssl-ca-certfile", str(pki["ca"]), "--ssl-certfile",
                            str(pki["server_cert"]), "--ssl-keyfile", str(pki["server_key"]), "--enable-supernode-auth",
                            "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"])
        node = start("supernode", [flower_command("flower-supernode"), "--root-certificates", str(pki["ca"]),
                                   "--auth-supernode-private-key", str(pki["node0"]), "--superlink",
                                   f"127.0.0.1:{port}", "--port", str(free_port("127.0.0.1")), "--max-retries", "20",
                                   "--max-wait-time", "60"])
        code = node.wait(120)
    finally:
        stop_all(procs)
    node_log = (tmp_path / "supernode.log").read_text()
    assert code != 0 and "Exit Code: 305" in node_log, (code, node_log[-2000:])
    assert "No SuperNode found with the given public key" in (tmp_path / "superlink.log").read_text()


def test_two_rounds_over_superlink_and_two_supernodes_with_tls_and_node_auth(tmp_path):
    """Secured as for many hosts: TLS on the SuperLink (throwaway CA), SuperNode authentication (each node's
    P-384 key registered with `flwr supernode register` and signing in with it)."""
    t0 = time.monotonic()
    try:
        run = run_flower_local(tmp_path / "run", PROFILES, {"rounds": 2, "fed-join-timeout-s": 60.0},
                               timeout_s=240.0, secure=True)
    except FlowerRunError as e:
        pytest.fail(f"the Flower run failed: {e}")
    logs = "".join(f"\n----- {name} -----\n{p.read_text(errors='replace')[-3000:]}" for name, p in run.logs.items())
    text = {name: p.read_text(errors="replace") for name, p in run.logs.items()}
    assert "Uvicorn running on https://" in text["superlink"], logs  # TLS
    registered = set(re.findall(r"Created node_id=(\d+)", text["superlink"]))
    joined = {re.search(r"SuperNode ID: (\d+)", text[f"supernode{k}"]).group(1) for k in range(2)}
    assert len(registered) == 2 and joined == registered, logs  # each SuperNode is the key that was registered
    assert not any("insecure" in text[f"supernode{k}"].lower() for k in range(2)), logs
    s = run.summary
    assert [rec["round"] for rec in run.records] == [0, 1], logs
    assert [n["joined"] for n in s["nodes"]] == [True, True], logs
    assert sorted(n["device_id"] for n in s["nodes"]) == [0, 1], logs
    for rec in run.records:
        assert math.isfinite(rec["global_acc"]) and rec["global_acc"] > s["initial_acc"] + 0.2, (rec, logs)
        assert sorted(rec["devices"]) == ["0", "1"], logs
        for k, dev in rec["devices"].items():
            assert dev["outcome"] in ("delivered", "lost"), (dev, logs)
            assert math.isfinite(dev["energy_j"]) and dev["energy_j"] > 0, (dev, logs)
            assert dev["module"] != "skip" and dev["power_w"] > 0 and dev["bandwidth_hz"] > 0, dev
            assert dev["energy_budget_j"] == PROFILES[int(k)]["fed-energy-budget-j"], dev
        assert set(rec["queues_j"]) == {"0", "1"}
    assert s["global_acc"] == [rec["global_acc"] for rec in run.records]
    assert (run.out / "state.npz").exists() and (run.out / "flower_nodes.json").exists()
    assert len(run.pids) >= 4, run.pids  # SuperLink, 2 SuperNodes, flwr run (and what ran below them)
    assert not [pid for pid in run.pids if alive(pid)], f"processes left running: {run.pids}"
    print(f"flower run: {run.wall_s:.1f} s, rounds {s['round_wall_s']} s, accuracy {s['initial_acc']:.3f} -> "
          f"{s['global_acc']} (test {time.monotonic() - t0:.1f} s)")


# ------------------------------------------------------------------ the ServerApp's pieces in-process


def _station(policy="fixed"):
    rx = MODE.build_rx({"fed_devices": 2, "fed_policy": policy})
    rx.station.background_forming = False  # as run_federation does: the ServerApp forms each round itself
    txs = [MODE.build_tx({"fed_devices": 2, "device_id": k}) for k in range(2)]
    for tx in txs:
        assert rx.station.check_device(tx.hello_params()) is None
    return rx.station, txs


def _reply(content_or_error, node: int, r: int = 0) -> Message:
    meta = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="m",
                    group_id=str(r), created_at=time.time(), ttl=60.0, message_type="train")
    if isinstance(content_or_error, Error):
        return Message(error=content_or_error, metadata=meta)
    return Message(content=content_or_error, metadata=meta)


def _trained(station, tx, rnd, k):
    module = rnd.decisions[k].module
    start = adapter_from_wire(station.start_factors(rnd, module), tx.shapes[module])
    arrays, loss, train_s = tx.train_module(rnd.index, module, start)
    return module, arrays, loss, train_s


def test_trained_updates_form_the_round_and_raise_accuracy():
    station, txs = _station()
    before = station.accuracy
    rnd = station.plan(0, station.clock())
    assert rnd.participants == [0, 1]
    for k, tx in enumerate(txs):
        module, arrays, loss, train_s = _trained(station, tx, rnd, k)
        receive(station, rnd, station.devices[k], _reply(update_content(module, len(tx.y), loss, train_s, arrays), k))
    assert rnd.formed and rnd.record["closed_by"] == "all_reported"
    assert station.accuracy > before + 0.2
    for dev in rnd.record["devices"].values():
        assert dev["outcome"] in ("delivered", "lost") and dev["energy_j"] > 0


def _bad_updates():
    def nan(arrays):
        arrays = dict(arrays)
        key = next(iter(arrays))
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] = np.nan
        return arrays

    def as_dtype(dtype):
        def edit(content):
            adapter = content["adapter"]
            content["adapter"] = ArrayRecord({k: Array(v.numpy().astype(dtype)) for k, v in adapter.items()})
            return content
        return edit

    def drop_update(content):
        del content["update"]
        return content

    def wrong_shape(content):
        adapter = content["adapter"]
        content["adapter"] = ArrayRecord({k: Array(v.numpy().reshape(-1)) for k, v in adapter.items()})
        return content

    def bad_n(content):
        content["update"]["n-samples"] = 3
        return content

    return [  # (arrays edit, content edit, outcome, recorded reason)
        (nan, None, "refused", "non_finite"),
        (None, as_dtype(np.float64), "refused", "dtype"),  # one order of checks: dtype before any size
        (None, as_dtype(np.float16), "refused", "dtype"),
        (None, drop_update, "refused", "bad_message"),
        (None, wrong_shape, "refused", "shape"),
        (None, bad_n, "refused", "n_samples"),
    ]


@pytest.mark.parametrize("edit_arrays, edit_content, outcome, reason", _bad_updates(),
                         ids=["nan", "float64", "float16", "no-update-record", "wrong-shape", "wrong-n-samples"])
def test_malformed_updates_are_refused_with_their_reason_and_a_failed_node_recorded(edit_arrays, edit_content,
                                                                                    outcome, reason):
    station, txs = _station()
    rnd = station.plan(0, station.clock())
    receive(station, rnd, station.devices[0], _reply(Error(code=2, reason="ClientApp raised: boom"), 0))
    assert not rnd.formed  # device 1 still to report
    module = rnd.decisions[1].module
    arrays = {k: v + 0.01 for k, v in adapter_from_wire(station.start_factors(rnd, module),
                                                        txs[1].shapes[module]).items()}
    if edit_arrays:
        arrays = edit_arrays(arrays)
    content = update_content(module, len(txs[1].y), 0.5, 0.1, arrays)
    if edit_content:
        content = edit_content(content)
    state = station.global_adapter.state()
    receive(station, rnd, station.devices[1], _reply(content, 1))
    assert rnd.formed and rnd.record["delivered"] == []
    d0, d1 = rnd.record["devices"][0], rnd.record["devices"][1]
    assert (d0["outcome"], d0["energy_j"]) == ("failed", 0.0) and "boom" in d0["loss_reason"]
    assert (d1["outcome"], d1["loss_reason"]) == (outcome, reason)
    assert d1["compute_energy_j"] > 0  # it did train: its compute energy is charged
    after = station.global_adapter.state()
    assert all(np.array_equal(state[k], after[k]) for k in state)  # nothing aggregated


def test_plan_and_update_contents_round_trip():
    station, txs = _station("ours")
    rnd = station.plan(0, station.clock())
    k = rnd.participants[0]
    start = station.start_factors(rnd, rnd.decisions[k].module)
    r, module, wire = plan_from_content(plan_content(0, rnd.decisions[k], start))
    assert (r, module) == (0, rnd.decisions[k].module)
    shapes = txs[k].shapes[module]
    a, b = adapter_from_wire(start, shapes), adapter_from_wire(wire, shapes)
    assert all(np.array_equal(a[name], b[name]) for name in a)
    upd = update_from_content(update_content(module, 10, float("nan"), 0.25, a), 3, k)
    assert (upd.seq, upd.device_id, upd.module, upd.n_samples, upd.train_loss, upd.train_s) == (3, k, module, 10,
                                                                                              -1.0, 0.25)
    assert upd.tensors == adapter_to_wire(a)
    rec = arrayrecord_from_wire(start)
    assert wire_from_arrayrecord(rec) == start
    with pytest.raises(TensorError) as e:
        wire_from_arrayrecord(ConfigRecord({"x": 1}))
    assert e.value.code == "bad_tensor"
    with pytest.raises(ValueError, match="malformed plan"):
        plan_from_content(RecordDict({"plan": ConfigRecord({"round": 0})}))


# ------------------------------------------------------------------ configs


def test_app_run_config_matches_the_options():
    app = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    config = app["tool"]["flwr"]["app"]["config"]
    assert sorted(config) == sorted(flower_key(o.name) for o in RUN_OPTIONS)
    assert app["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "common.modes.fed_lora.flower.app:server_app",
        "clientapp": "common.modes.fed_lora.flower.app:client_app"}
    assert "federations" not in app["tool"]["flwr"]  # flwr 1.41 would move it out and comment it here
    opts = run_options(config)
    assert opts == {"fed_task": "mlp", "fed_devices": 4, "fed_beta": 0.5, "fed_pool_size": 0, "fed_policy": "ours",
                    "fed_aggregation": "stack-svd", "fed_price_floor": 0.05, "fed_join_timeout_s": 30.0,
                    "fed_k_factor": 1.0, "fed_resume": False, "seed": 0, "rounds": 2, "threads": 1,
                    "fed_silent_margin": 3.0, "fed_clip_factor": 1.0}


@pytest.mark.parametrize("run, node, message", [
    ({"fed-polcy": "ours"}, {"device-id": 0}, "unknown run config key 'fed-polcy'"),
    ({"rounds": 0}, {"device-id": 0}, "rounds must be >= 1"),
    ({"rounds": 1.5}, {"device-id": 0}, "rounds must be an integer"),
    ({"fed-out": "runs/x"}, {"device-id": 0}, "fed-out must be an absolute path"),
    ({}, {}, "node config needs device-id"),
    ({}, {"device-id": 0, "distance-m": 3.0}, "unknown node config key 'distance-m'"),
    ({}, {"device-id": 0, "fed-distance-m": "far"}, "fed-distance-m must be a finite number"),
    ({}, {"device-id": True}, "device-id must be an integer"),
])
def test_bad_configs_are_refused_with_one_line(run, node, message):
    with pytest.raises(ValueError, match=message):
        device_options(run, node)


def test_node_config_makes_the_device_profile():
    opts = device_options({"fed-devices": 2, "fed-epochs": 2.0, "fed-lr": 0.0},
                          {"device-id": 1, "fed-distance-m": 400, "fed-energy-budget-j": 0.005, "fed-lr": 0.02})
    tx = MODE.build_tx(opts)
    assert tx.config.device_id == 1 and tx.config.distance_m == 400.0 and tx.config.energy_budget_j == 0.005
    assert (tx.config.epochs, tx.config.lr, tx.config.batch_size) == (2.0, 0.02, 32)  # batch: the mlp preset
