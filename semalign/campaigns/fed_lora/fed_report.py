"""Plots and tables of ``semalign fed`` results (the campaign itself is :mod:`semalign.campaigns.fed_lora.fed`).

Inputs are the dicts :func:`semalign.campaigns.fed_lora.fed.run_fed` returns (and writes as
``fed.json``) and :func:`semalign.campaigns.fed_lora.fed.run_fed_sweep` returns (``fed_sweep.json``);
a result read back from JSON works too (device ids as str keys).

Figures (PNG, matplotlib Agg, one colour per policy in all of them,
:data:`POLICY_COLOURS`):

- ``fed_accuracy.png``: the global model's test accuracy (%) vs round, per
  policy, and the centralised-LoRA reference when the result has one (the
  untrained model's accuracy from the reference, or from a Flower run);
- ``fed_accuracy_energy.png``: the same accuracy vs cumulative energy per
  device (mJ for the mlp task, J for text; the mean over devices, log scale);
- ``fed_energy.png``: each device's mean energy per round, one bar per policy,
  its budget marked;
- ``fed_queues.png``: each device's virtual energy queue (mJ / J) vs round;
- ``fed_sweep.png`` (a sweep): final accuracy vs mean energy per device and
  round, the online method at each budget scale (mean, bars min..max over
  seeds), the baselines, the reference; and the worst device's E / budget.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from semalign.campaigns.tables import markdown_lines

POLICY_COLOURS = {"ours": "tab:blue", "fixed": "tab:orange", "random": "tab:green", "central": "black"}
POLICY_LABELS = {"ours": "ours (online drift-plus-penalty)", "fixed": "fixed-rank FedAvg",
                 "random": "random switching", "central": "centralised LoRA (reference)"}
PLOT_FILES = ("fed_accuracy.png", "fed_accuracy_energy.png", "fed_energy.png", "fed_queues.png")


def _dev(mapping: dict, k):
    """``mapping[k]`` whether the device ids are int (in memory) or str (read back from JSON)."""
    return mapping[k] if k in mapping else mapping[str(k)]


def energy_unit(task: str) -> tuple[str, float]:
    """``(unit, scale)`` to show energies of ``task`` in: mJ for mlp, J for the text tasks."""
    return ("mJ", 1e3) if task == "mlp" else ("J", 1.0)


def policy_series(res: dict, n_devices: int) -> dict:
    """Per-round arrays of one policy's result (``result["policies"][p]``).

    Returns ``rounds`` (int, (R,)), ``acc`` (float (R,), 0..1, NaN where no
    round was formed), and per device float (n_devices, R) arrays ``energy_j``,
    ``cum_energy_j`` (J, summed over rounds), ``queue_j`` (J) and
    ``upload_bits``, plus ``round_wall_s`` (R,): the base station's wall
    time per round, s. Rounds a device failed count as zero energy and repeat
    its last queue.
    """
    by_round = {b["round"]: b for b in res["base_station"]}
    rounds = sorted({r["round"] for k in range(n_devices) for r in _dev(res["devices"], k)} | set(by_round))
    idx = {r: i for i, r in enumerate(rounds)}
    shape = (n_devices, len(rounds))
    energy, queue, bits = np.zeros(shape), np.full(shape, np.nan), np.zeros(shape)
    for k in range(n_devices):
        for r in _dev(res["devices"], k):
            if r["status"] == "ok":
                i = idx[r["round"]]
                energy[k, i] = r.get("energy_j") or 0.0
                queue[k, i] = r.get("queue_j") or 0.0
                bits[k, i] = r.get("upload_bits") or 0
        for i in range(len(rounds)):  # a failed round keeps the last known queue
            if math.isnan(queue[k, i]):
                queue[k, i] = queue[k, i - 1] if i else 0.0
    acc = np.array([by_round[r]["global_acc"] if r in by_round else np.nan for r in rounds], float)
    wall = np.array([by_round[r]["round_wall_s"] if r in by_round else np.nan for r in rounds], float)
    return {"rounds": np.array(rounds, int), "acc": acc, "energy_j": energy, "cum_energy_j": np.cumsum(energy, axis=1),
            "queue_j": queue, "upload_bits": bits, "round_wall_s": wall}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(result: dict, what: str) -> str:
    c = result["config"]
    seeds = f"seed {c['seed']}"
    engine = " (Flower)" if c.get("engine") == "flower" else ""
    return f"fed-lora {c['task']}, {c['devices']} devices, {c['rounds']} rounds, {seeds}{engine}: {what}"


def write_plots(result: dict, out: Path) -> list[Path]:
    """Write the four figures of one campaign (see the module doc) into ``out``; their paths."""
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    n = len(result["profiles"])
    unit, scale = energy_unit(result["config"]["task"])
    series = {p: policy_series(res, n) for p, res in result["policies"].items()}
    ref = result.get("reference")
    paths = [out / name for name in PLOT_FILES]

    # 1. accuracy vs round
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p, s in series.items():
        ax.plot(s["rounds"], 100 * s["acc"], marker="o", color=POLICY_COLOURS.get(p), label=POLICY_LABELS.get(p, p))
    if ref:
        ax.plot(range(len(ref["acc_by_round"])), 100 * np.array(ref["acc_by_round"]), ls="--", marker="s",
                color=POLICY_COLOURS["central"], label=POLICY_LABELS["central"])
    start = ref.get("acc_before") if ref else next(
        (res["initial_acc"] for res in result["policies"].values() if res.get("initial_acc") is not None), None)
    if start is not None:
        ax.axhline(100 * start, color="grey", lw=0.8, ls=":", label="before any round")
    _label(ax, "round", "global model test accuracy (%)", _title(result, "accuracy vs round"))
    _save(plt, fig, paths[0])

    # 2. accuracy vs cumulative energy per device (mean over devices)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p, s in series.items():
        x = scale * s["cum_energy_j"].mean(axis=0)
        ax.plot(x, 100 * s["acc"], marker="o", color=POLICY_COLOURS.get(p), label=POLICY_LABELS.get(p, p))
    _label(ax, f"cumulative energy per device, {unit} (mean over devices, log scale)",
           "global model test accuracy (%)", _title(result, "accuracy vs energy spent"), xlog=True)
    _save(plt, fig, paths[1])

    # 3. mean energy per device and round vs its budget
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * n + 2), 4.5))
    width = 0.8 / max(1, len(series))
    for j, (p, s) in enumerate(series.items()):
        ax.bar(np.arange(n) + (j - (len(series) - 1) / 2) * width, scale * s["energy_j"].mean(axis=1), width,
               color=POLICY_COLOURS.get(p), label=POLICY_LABELS.get(p, p))
    budgets = [scale * prof["fed_energy_budget_j"] for prof in result["profiles"]]
    ax.hlines(budgets, np.arange(n) - 0.45, np.arange(n) + 0.45, colors="red", lw=2, label="energy budget")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(n), [f"dev{k}" for k in range(n)])
    ax.set_ylabel(f"mean energy per round, {unit} (log scale)")
    ax.set_title(_title(result, "energy per device vs budget"), fontsize=9)
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(series) + 1)
    _save(plt, fig, paths[2])

    # 4. virtual queue per device vs round
    cols = 2 if n <= 4 else 4
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 1, 2.8 * rows + 0.8), squeeze=False, sharex=True)
    for k in range(n):
        ax = axes[k // cols][k % cols]
        for p, s in series.items():
            ax.plot(s["rounds"], scale * s["queue_j"][k], marker=".", color=POLICY_COLOURS.get(p),
                    label=POLICY_LABELS.get(p, p))
        ax.set_yscale("symlog", linthresh=min(budgets))
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(f"dev{k} (budget {budgets[k]:.3g} {unit}/round)", fontsize=8)
        ax.set_xlabel("round", fontsize=8)
        ax.set_ylabel(f"queue Q, {unit}", fontsize=8)
        ax.grid(alpha=0.3)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(_title(result, "virtual energy queues") + "\n(symlog: linear below the smallest budget)",
                 fontsize=9)
    _save(plt, fig, paths[3])
    return paths


def _label(ax, xlabel: str, ylabel: str, title: str, xlog: bool = False) -> None:
    if xlog:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(_plt().LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(_plt().FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(_plt().NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def _save(plt, fig, path: Path) -> None:
    for ax in fig.axes:
        if ax.get_xlabel() == "round" or ax.get_xlabel().startswith("round"):
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ a sweep (budgets x seeds)


def _stats(values) -> dict:
    v = np.array([x for x in values if x is not None], float)
    if not len(v):
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "n": len(v)}


def sweep_rows(sweep: dict, at_round: int | None = None) -> list[dict]:
    """One row per (policy, budget scale) of a sweep, over its seeds, after round ``at_round`` (0-based;
    None: the last round).

    Row fields: ``policy``, ``budget_j`` (the reference budget; None for the baselines, whose plans
    ignore budgets: their E / budget is against the sweep's first budget), ``seeds``, ``acc`` (stats of
    the global accuracy after that round, 0..1), ``energy_j`` (stats over seeds of the mean energy per
    device and round, J), ``worst_e_over_budget`` (stats over seeds of the largest device's mean energy
    / its budget), ``e_over_budget`` (per device: the mean over seeds), ``budgets_met`` (seeds in which
    every device met its budget), ``s_per_round`` (stats of the base station's mean round wall time, s).
    """
    groups: dict[tuple, list] = {}
    for run in sweep["runs"]:
        for p, res in run["result"]["policies"].items():
            key = (p, run["budget_j"] if p == "ours" else None)
            groups.setdefault(key, []).append((run, res))
    rows = []
    for (p, budget), items in groups.items():
        accs, energies, worst, met, walls, per_dev = [], [], [], 0, [], []
        for run, res in items:
            n = len(run["result"]["profiles"])
            s = policy_series(res, n)
            i = len(s["rounds"]) - 1 if at_round is None else min(at_round, len(s["rounds"]) - 1)
            mean_e = s["cum_energy_j"][:, i] / (i + 1)
            budgets = np.array([prof["fed_energy_budget_j"] for prof in run["result"]["profiles"]])
            if p != "ours":  # against the first budget scale of the sweep
                budgets = budgets * (sweep["budgets_j"][0] / run["budget_j"])
            ratio = mean_e / budgets
            accs.append(s["acc"][i])
            energies.append(float(mean_e.mean()))
            worst.append(float(ratio.max()))
            per_dev.append(ratio)
            met += bool(np.all(ratio <= 1 + 1e-9))
            walls.append(float(np.nanmean(s["round_wall_s"][:i + 1])))
        rows.append({"policy": p, "budget_j": budget, "seeds": [run["seed"] for run, _ in items],
                     "acc": _stats(accs), "energy_j": _stats(energies), "worst_e_over_budget": _stats(worst),
                     "e_over_budget": [float(x) for x in np.mean(per_dev, axis=0)], "budgets_met": met,
                     "s_per_round": _stats(walls)})
    refs = [run["result"]["reference"] for run in sweep["runs"] if run["result"].get("reference")]
    if refs:
        accs = [r["acc_by_round"][-1 if at_round is None else min(at_round, len(r["acc_by_round"]) - 1)]
                for r in refs]
        rows.append({"policy": "central", "budget_j": None, "seeds": [r["seed"] for r in refs],
                     "acc": _stats(accs), "energy_j": _stats([]), "worst_e_over_budget": _stats([]),
                     "e_over_budget": [], "budgets_met": None,
                     "s_per_round": _stats([r["train_s"] / len(r["acc_by_round"]) for r in refs])})
    order = {"central": 0, "fixed": 1, "random": 2, "ours": 3}
    return sorted(rows, key=lambda r: (order.get(r["policy"], 9), r["budget_j"] or 0))


def _pm(st: dict, scale: float = 1.0, spec: str = ".3f") -> str:
    if st["mean"] is None:
        return "-"
    return f"{format(scale * st['mean'], spec)} ± {format(scale * st['std'], spec)}" if st["n"] > 1 \
        else format(scale * st["mean"], spec)


def format_sweep(sweep: dict, at_rounds: tuple[int, ...] | None = None) -> str:
    """Markdown tables of a sweep after each round count in ``at_rounds`` (1-based; default: 8 and the
    last round, or the last only), with the issue's target checked per budget scale: the online method
    within 1 point of FedAvg's mean accuracy at no more than 60 % of its mean energy, every device's
    budget met in every seed."""
    task = sweep["config"]["task"]
    unit, scale = energy_unit(task)
    rounds = sweep["config"]["rounds"]
    at_rounds = at_rounds or tuple(sorted({min(8, rounds), rounds}))
    lines = []
    for at in at_rounds:
        rows = sweep_rows(sweep, at - 1)
        fixed = next((r for r in rows if r["policy"] == "fixed"), None)
        lines += [f"### after {at} rounds (mean ± std over seeds {', '.join(map(str, sweep['seeds']))})", ""]
        head = ["policy", f"budget {unit}", "accuracy", f"mean E / device / round {unit}",
                "worst device E / budget", "E / budget per device", "budgets met (seeds)", "s / round", "target"]
        cells = []
        for r in rows:
            target = "-"
            if r["policy"] == "ours" and fixed is not None and fixed["acc"]["mean"] is not None:
                gap = r["acc"]["mean"] - fixed["acc"]["mean"]
                share = r["energy_j"]["mean"] / fixed["energy_j"]["mean"]
                ok = gap >= -0.01 and share <= 0.6 and r["budgets_met"] == len(r["seeds"])
                target = f"{'met' if ok else 'missed'} ({100 * gap:+.1f} pt, {100 * share:.0f} % of E)"
            budget = "-" if r["budget_j"] is None else f"{scale * r['budget_j']:.3g}"
            if r["policy"] in ("fixed", "random"):
                budget = f"(ignores; vs {scale * sweep['budgets_j'][0]:.3g})"
            cells.append([
                r["policy"], budget, _pm(r["acc"]), _pm(r["energy_j"], scale, ".2f"),
                _pm(r["worst_e_over_budget"], 1.0, ".2f"),
                ", ".join(f"{x:.2f}" for x in r["e_over_budget"]) or "-",
                "-" if r["budgets_met"] is None else f"{r['budgets_met']}/{len(r['seeds'])}",
                _pm(r["s_per_round"], 1.0, ".2f"), target])
        lines += markdown_lines(head, cells) + [""]
    return "\n".join(lines)


def plot_sweep(sweep: dict, path: Path) -> Path:
    """``fed_sweep.png``: accuracy vs energy per budget scale and the worst E / budget (see module doc)."""
    plt = _plt()
    unit, scale = energy_unit(sweep["config"]["task"])
    rows = sweep_rows(sweep)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for r in rows:
        colour = POLICY_COLOURS.get(r["policy"])
        if r["policy"] == "central":
            ax.axhline(100 * r["acc"]["mean"], color=colour, ls="--", label=POLICY_LABELS["central"])
            continue
        x, y = scale * r["energy_j"]["mean"], 100 * r["acc"]["mean"]
        ax.errorbar(x, y, yerr=[[y - 100 * r["acc"]["min"]], [100 * r["acc"]["max"] - y]],
                    xerr=[[x - scale * r["energy_j"]["min"]], [scale * r["energy_j"]["max"] - x]],
                    fmt="o", color=colour, capsize=3,
                    label=POLICY_LABELS.get(r["policy"], r["policy"]) if r["policy"] != "ours"
                    or r is next(q for q in rows if q["policy"] == "ours") else None)
        if r["policy"] == "ours":
            ax.annotate(f"{scale * r['budget_j']:.3g} {unit}", (x, y), textcoords="offset points", xytext=(5, -12),
                        fontsize=7)
    _label(ax, f"mean energy per device and round, {unit} (log scale)", "final test accuracy (%)",
           f"accuracy vs energy: ours at each reference budget ({unit}), bars min..max over seeds", xlog=True)
    ours = [r for r in rows if r["policy"] == "ours"]
    if ours:
        b = [scale * r["budget_j"] for r in ours]
        m = [r["worst_e_over_budget"]["mean"] for r in ours]
        lo = [r["worst_e_over_budget"]["min"] for r in ours]
        hi = [r["worst_e_over_budget"]["max"] for r in ours]
        ax2.errorbar(b, m, yerr=[np.subtract(m, lo), np.subtract(hi, m)], fmt="o-", color=POLICY_COLOURS["ours"],
                     capsize=3, label=POLICY_LABELS["ours"])
        ax2.axhline(1.0, color="red", lw=1.5, label="budget")
    _label(ax2, f"reference budget, {unit} per round (devices get 2, 1, 0.6, 1.2 x it)",
           "worst device: mean E / its budget", f"long-term budgets after {sweep['config']['rounds']} rounds",
           xlog=bool(ours))
    fig.suptitle(f"fed-lora {sweep['config']['task']} sweep, {sweep['config']['devices']} devices, "
                 f"{sweep['config']['rounds']} rounds, seeds {', '.join(map(str, sweep['seeds']))}", fontsize=10)
    _save(plt, fig, path)
    return path
