"""The batched dense trainer against the RX's own, one session at a time, on the RX's real inputs.

``python -m semalign.campaigns.pca_lora.batch_bench [--artifacts DIR] [--dataset mnist] [--sessions 2,4,8]
[--n-train 0,100] [--mcs 1] [--repeats 5] [--out DIR]`` builds, with the real pca-lora TX half, one
PAYLOAD per session for the channel of 64-QAM MCS ``--mcs`` (1: the load campaign's deep fade, so
every payload has the same alpha and size), and from each the training inputs the RX's default
adaptation (:class:`LoraAlignment`, a dense recipe) would train on: its hold-out split, its
generator, the folded start layers and the plan its calibration gives the payload (``stage_plan``,
run exactly: no wall-clock cap, so the machine's load changes the times, never the steps). Then,
interleaved in one process with 1 torch thread (like the RX), it trains them:

- ``single``: each session alone with the RX's trainer (:func:`common.learn.fastlora.train_dense`,
  stage by stage), one after another;
- ``batched``: all N in one loop (:func:`common.learn.batched_dense.train_dense_batched`).

Only the training is timed (not the set-up, merge or hold-out check, which batching does not touch).
Per (n_train, N): one session's training time and the N batched, their ratio and the rounds/s gain
``N * single / batched``, in wall and this thread's CPU time (the machine may be shared); the
training's FLOPs per session and the rate they ran at each way (CPU time); per session both ways'
steps and final loss, the largest weight difference, the test-set accuracy (every test vector of the
dataset at the payload's alpha, the trained model before the RX's hold-out decision) and its
difference in pp, and whether the single run's loss is bit-equal to the RX's own
:meth:`LoraAlignment.adapt_state` on that payload (the inputs are the RX's). Prints a table and writes
``batch_bench.json`` (``/proc/loadavg`` at the start and end of the run and of each row, the machine).
``--n-train`` truncates each payload's training vectors (0: as the TX built them).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common.files import atomic_write_json
from common.learn import fastlora
from common.learn.batched_dense import train_dense_batched
from common.link.channel.emulator import LinkParams, state_from_mcs
from common.modes.base import get_mode
from common.modes.pca_lora.alignment import LoraAlignment
from common.modes.pca_lora.recipes import DTYPES
from common.modes.pca_lora.folded_mlp import dense_start, mlp_weights
from common.modes.pca_lora.holdout import split_holdout
from common.modes.pca_lora.messages import Payload
from common.wire.protocol import Channel, decode
from semalign.campaigns.machine import loadavg_line, machine_info
from semalign.campaigns.pca_lora.replay_load import round_frames
from semalign.campaigns.pca_lora.runner import campaign_inputs, ensure_artifacts
from semalign.campaigns.tables import markdown_lines


def payloads(artifacts: Path, dataset: str, n_sessions: int, mcs: int) -> list[Payload]:
    """One PAYLOAD per session (round ``i`` of session ``i + 1``) as the real TX half builds it for MCS
    ``mcs`` of the 64-QAM table."""
    half = get_mode("pca-lora").build_tx({"artifacts": artifacts, "dataset": dataset})
    s = state_from_mcs(mcs, "qam64", LinkParams())
    out = []
    for i in range(n_sessions):
        channel = Channel(i + 1, i, s.sinr_db, s.mcs, s.mcs_table, s.modulation, s.rate_bps, s.bler)
        msgs = [decode(f) for f in round_frames(half, i + 1, i, channel)]
        p = next((m for m in msgs if isinstance(m, Payload) and m.n_train), None)
        if p is None:
            raise ValueError(f"MCS {mcs}: the TX half sends no training vectors (nothing to adapt); use a "
                             "lower --mcs")
        out.append(p)
    return out


@dataclasses.dataclass
class Session:
    """One payload's training inputs as the RX's :meth:`LoraAlignment.adapt_state` builds them: the fit
    vectors ``x`` float32 (n_fit, alpha) and labels ``y`` int64 (n_fit,), the folded start layers
    ``ws[l]`` (out, in) / ``bs[l]`` (out,) (never trained in place: each run trains copies), and the
    RX's own final loss on them (its adapt_state, the same plan, no cap)."""

    x: torch.Tensor
    y: torch.Tensor
    ws: list[torch.Tensor]
    bs: list[torch.Tensor]
    rx_loss: float


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every session's training runs: per stage (steps, layers trained, learning rate, the frozen
    layers' dtype), the batch size and schedule, and the generators' seed."""

    stages: list[tuple[int, int, float, torch.dtype]]
    batch: int
    schedule: str
    seed: int


def rx_plan(strategy: LoraAlignment, model, codec, z: np.ndarray, y: np.ndarray) -> tuple[Plan, list[int], str]:
    """The plan the RX's ``strategy`` (calibrated) gives a payload's training vectors ``z`` (n, alpha),
    ``y`` (n,): the stage settings of ``adapt_state``'s dense loop, the steps per stage and the precision."""
    cfg = strategy.config
    if cfg.recipe == "lora":
        raise ValueError("the batched trainer is the dense recipes' (first-layer, staged), not lora's")
    report = strategy.adapt_state(model, z, y, codec)[1]
    n_layers = len(mlp_weights(model)[0])
    deep = z.shape[1] < cfg.deep_fraction * codec.d_max
    stages = []
    for stage, steps in enumerate(report.stage_plan):
        trained = 1 if stage == 0 else n_layers
        lr = (cfg.deep_lr if deep else cfg.lr) if stage == 0 else cfg.stage2_lr
        dtype = DTYPES[report.precision] if trained < n_layers else torch.float32
        stages.append((steps, trained, lr, dtype))
    return Plan(stages, cfg.batch_size, cfg.schedule, cfg.seed), report.stage_plan, report.precision


def rx_session(exact: LoraAlignment, model, codec, z: np.ndarray, y: np.ndarray, plan_steps: list[int]) -> Session:
    """What ``exact`` (the RX's strategy without a cap) trains on for the payload ``z``, ``y``, and its loss."""
    z = np.asarray(z, np.float32)
    weights, biases = mlp_weights(model)
    m, c = (torch.as_tensor(a) for a in codec.linear_decoder(z.shape[1]))
    fit = split_holdout(len(z), exact.config)[0]
    ws, bs, _ = dense_start(weights, biases, m, c, codec.d_raw, None)
    rx_loss = exact.adapt_state(model, z, y, codec, plan_steps=plan_steps)[1].final_loss
    return Session(torch.as_tensor(z)[fit], torch.as_tensor(np.asarray(y).astype(np.int64))[fit], ws, bs, rx_loss)


def _copy(s: Session) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [w.clone() for w in s.ws], [b.clone() for b in s.bs]


def train_single(s: Session, plan: Plan, ws, bs) -> tuple[list[int], float]:
    """The RX's training of one session (``adapt_state``'s dense loop, no cap) on ``ws``/``bs`` in place:
    (steps per stage, final loss)."""
    gen = torch.Generator().manual_seed(plan.seed)
    done, loss = [], float("nan")
    for steps, trained, lr, dtype in plan.stages:
        if steps == 0:
            done.append(0)
            continue
        n, loss, _ = fastlora.train_dense(ws, bs, s.x, s.y, trained=trained, steps=steps, lr=lr, batch=plan.batch,
                                          schedule=plan.schedule, gen=gen, frozen_dtype=dtype)
        done.append(n)
    return done, loss


def train_batched(sessions: list[Session], plan: Plan, members) -> tuple[list[int], list[float]]:
    """The same trainings of all ``sessions`` at once on ``members = [(ws, bs), ...]`` in place: (steps per
    stage, each session's final loss)."""
    gens = [torch.Generator().manual_seed(plan.seed) for _ in sessions]
    xs, ys = [s.x for s in sessions], [s.y for s in sessions]
    done, losses = [], [float("nan")] * len(sessions)
    for steps, trained, lr, dtype in plan.stages:
        if steps == 0:
            done.append(0)
            continue
        n, losses, _ = train_dense_batched(members, xs, ys, gens, trained=trained, steps=steps, lr=lr,
                                           batch=plan.batch, schedule=plan.schedule, frozen_dtype=dtype)
        done.append(n)
    return done, losses


def _timed(fn) -> tuple[float, float, object]:
    """(wall ms, this thread's CPU ms, fn's result)."""
    w0, c0 = time.perf_counter(), time.thread_time()
    result = fn()
    return (time.perf_counter() - w0) * 1e3, (time.thread_time() - c0) * 1e3, result


def _accuracy(ws: list[torch.Tensor], bs: list[torch.Tensor], z: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the folded MLP ``ws``/``bs`` on features ``z`` (n, alpha) with labels ``y`` (n,)."""
    h = z
    with torch.no_grad():
        for l, (w, b) in enumerate(zip(ws, bs)):
            h = torch.addmm(b, h, w.t())
            if l < len(ws) - 1:
                h = h.clamp_(min=0)
    return float((h.argmax(1) == y).float().mean())


def measure(sessions: list[Session], plan: Plan, z_test: torch.Tensor, y_test: torch.Tensor, repeats: int) -> dict:
    """Single and batched training of ``sessions``, interleaved (the order alternates per repeat); the
    per-session comparison from the last repeat's weights."""
    n_sessions, load_start = len(sessions), loadavg_line()
    single_wall, single_cpu, batch_wall, batch_cpu = [], [], [], []
    singles = batched = None
    for r in range(repeats):
        for kind in (("single", "batched") if r % 2 == 0 else ("batched", "single")):
            if kind == "single":
                singles = []
                for s in sessions:
                    ws, bs = _copy(s)
                    w, c, (done, loss) = _timed(lambda: train_single(s, plan, ws, bs))
                    single_wall.append(w)
                    single_cpu.append(c)
                    singles.append((ws, bs, done, loss))
            else:
                members = [_copy(s) for s in sessions]
                w, c, (done, losses) = _timed(lambda: train_batched(sessions, plan, members))
                batch_wall.append(w)
                batch_cpu.append(c)
                batched = (members, done, losses)
    members, done_b, losses_b = batched
    rows = []
    for s, (ws1, bs1, done1, loss1), (ws2, bs2), loss2 in zip(sessions, singles, members, losses_b):
        a1, a2 = _accuracy(ws1, bs1, z_test, y_test), _accuracy(ws2, bs2, z_test, y_test)
        rows.append({"steps_single": done1, "steps_batched": done_b, "loss_single": loss1, "loss_batched": loss2,
                     "rx_same_loss": loss1 == s.rx_loss,
                     "max_weight_diff": max(float((p - q).abs().max()) for p, q in zip(ws1 + bs1, ws2 + bs2)),
                     "acc_single": a1, "acc_batched": a2, "acc_diff_pp": (a2 - a1) * 100})
    one_wall, one_cpu = statistics.median(single_wall), statistics.median(single_cpu)
    b_wall, b_cpu = statistics.median(batch_wall), statistics.median(batch_cpu)
    n_fit, alpha = sessions[0].x.shape
    dims = [alpha, *(w.shape[0] for w in sessions[0].ws)]
    batch = min(plan.batch or n_fit, n_fit)
    mflop = sum(steps * fastlora.dense_step_flops(dims, trained, batch) for steps, trained, _, _ in plan.stages) / 1e6
    return {"n_sessions": n_sessions, "n_fit": n_fit, "alpha": alpha, "plan": [st[0] for st in plan.stages],
            "single_ms": one_wall, "single_cpu_ms": one_cpu, "batched_ms": b_wall, "batched_cpu_ms": b_cpu,
            "batched_over_single": b_wall / one_wall, "batched_over_single_cpu": b_cpu / one_cpu,
            "rounds_per_s_gain": n_sessions * one_wall / b_wall, "rounds_per_s_gain_cpu": n_sessions * one_cpu / b_cpu,
            "training_mflop_per_session": mflop, "gflop_per_s_single": mflop / one_cpu,
            "gflop_per_s_batched": n_sessions * mflop / b_cpu,
            "same_steps": all(r["steps_single"] == r["steps_batched"] for r in rows),
            "rx_same_loss": all(r["rx_same_loss"] for r in rows),
            "max_weight_diff": max(r["max_weight_diff"] for r in rows),
            "max_abs_acc_diff_pp": max(abs(r["acc_diff_pp"]) for r in rows),
            "loadavg_start": load_start, "loadavg_end": loadavg_line(), "sessions": rows,
            "single_ms_all": single_wall, "batched_ms_all": batch_wall}


def table(rows: list[dict]) -> list[str]:
    """The rows as a Markdown table (one line per (n_train, N))."""
    head = ["n_fit, plan", "N", "one, ms wall / CPU", "N batched, ms wall / CPU", "batched / one (wall)",
            "rounds/s gain, wall / CPU", "GFLOP/s one / batched (CPU)", "same steps", "RX's loss", "max |dw|",
            "max |acc diff|, pp", "load (1 min)"]
    return markdown_lines(head, [[f"{r['n_fit']}, {r['plan']}", str(r["n_sessions"]),
                                  f"{r['single_ms']:.1f} / {r['single_cpu_ms']:.1f}",
                                  f"{r['batched_ms']:.1f} / {r['batched_cpu_ms']:.1f}",
                                  f"{r['batched_over_single']:.2f}x",
                                  f"{r['rounds_per_s_gain']:.2f}x / {r['rounds_per_s_gain_cpu']:.2f}x",
                                  f"{r['gflop_per_s_single']:.1f} / {r['gflop_per_s_batched']:.1f}",
                                  "yes" if r["same_steps"] else "NO", "equal" if r["rx_same_loss"] else "DIFFERS",
                                  f"{r['max_weight_diff']:.1e}", f"{r['max_abs_acc_diff_pp']:.3f}",
                                  f"{r['loadavg_start'].split()[0]}-{r['loadavg_end'].split()[0]}"] for r in rows])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m semalign.campaigns.pca_lora.batch_bench",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, default=None, help="pca-lora artifacts (pre-trained when absent)")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--sessions", default="2,4,8", help="session counts N, comma-separated")
    ap.add_argument("--n-train", default="0,100", help="training vectors per payload, comma-separated "
                                                      "(0: as the TX half built the payload)")
    ap.add_argument("--mcs", type=int, default=1, help="64-QAM MCS of the channel the payloads are built for")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("runs/batch-bench"))
    a = ap.parse_args(argv)
    try:
        counts = sorted({int(v) for v in a.sessions.split(",")})
        sizes = [int(v) for v in a.n_train.split(",")]
    except ValueError as e:
        ap.error(f"--sessions and --n-train take comma-separated ints: {e}")
    if counts[0] < 2 or min(sizes) < 0 or a.repeats < 1:
        ap.error("--sessions needs counts >= 2, --n-train sizes >= 0 and --repeats >= 1")
    artifacts = ensure_artifacts(a.dataset, a.artifacts)
    inputs = campaign_inputs(artifacts, a.dataset, a.out)
    model, codec, data = inputs.model, inputs.codec, inputs.data
    load_start = loadavg_line()
    rx_strategy = LoraAlignment()  # the RX's default: recipe, budgets, calibrated steps
    rx_strategy.warm_up(model, codec)
    exact = LoraAlignment(adapt=dataclasses.replace(rx_strategy.config, budget_ms=None, deep_budget_ms=None))
    ps = payloads(artifacts, a.dataset, counts[-1], a.mcs)
    rows = []
    for n_train in sizes:
        rounds = []
        for p in ps:  # what the RX's pca-lora half hands its strategy: the payload's training part
            z, y = p.features()[p.n_test:], p.labels[p.n_test:]
            rounds.append((z[:n_train], y[:n_train]) if n_train else (z, y))
        plan, plan_steps, precision = rx_plan(rx_strategy, model, codec, *rounds[0])
        sessions = [rx_session(exact, model, codec, z, y, plan_steps) for z, y in rounds]
        alpha = sessions[0].x.shape[1]
        z_test = torch.as_tensor(np.asarray(codec.encode(data.x_test, alpha), np.float32))
        y_test = torch.as_tensor(np.asarray(data.y_test).astype(np.int64))
        for n in counts:
            row = measure(sessions[:n], plan, z_test, y_test, a.repeats)
            row["precision"] = precision
            rows.append(row)
            print(f"alpha {alpha} n_fit {row['n_fit']} plan {row['plan']} ({precision}) N={n}: one "
                  f"{row['single_ms']:.1f} ms, N batched {row['batched_ms']:.1f} ms "
                  f"({row['batched_over_single']:.2f}x one), rounds/s x{row['rounds_per_s_gain']:.2f} "
                  f"(CPU x{row['rounds_per_s_gain_cpu']:.2f}); load {row['loadavg_end']}", flush=True)
    result = {"rows": rows, "loadavg_start": load_start, "loadavg_end": loadavg_line(), "machine": machine_info(),
              "settings": {"dataset": a.dataset, "artifacts": str(artifacts), "mcs": a.mcs, "repeats": a.repeats,
                           "recipe": rx_strategy.config.recipe}}
    print("\n".join(table(rows)))
    print(f"/proc/loadavg: start {load_start}, end {result['loadavg_end']}")
    atomic_write_json(a.out / "batch_bench.json", result)
    return result


if __name__ == "__main__":
    main()
