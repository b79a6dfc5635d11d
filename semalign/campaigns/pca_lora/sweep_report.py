"""Printed side-by-side table of a sweep (rich, to stdout)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from semalign.campaigns.pca_lora.sweep_config import METHODS
from semalign.campaigns.tables import markdown_lines



def _default(result: dict) -> str:
    """The sweep method that is the RX's default recipe (older sweeps: ``lora``)."""
    return result.get("default_method", "lora")


def summary_table(result: dict) -> Table:
    """Rows: alpha; columns: mean accuracy (%) and median time (ms) of each method."""
    by = {(s["method"], s["alpha"], s["mode"]): s for s in result["summary"]}
    methods = [m for m in METHODS if any(k[0] == m for k in by)]
    alphas = sorted({k[1] for k in by})
    t = Table(title=f"semalign sweep: {result['dataset']}, B_max {result['b_max_bytes']} B, "
                    f"mode {result['mode']}", header_style="bold")
    t.add_column("alpha", justify="right")
    t.add_column("n_train", justify="right")
    default = _default(result)
    for m in methods:
        star = "*" if m == default else ""
        t.add_column(f"{m}{star} acc %", justify="right")
        t.add_column(f"{m}{star} ms", justify="right")
    t.caption = f"* = the RX default recipe ({default})"
    for a in alphas:
        n = next((by[k]["n_train"] for k in by if k[1] == a and k[0] == default), None)
        cells = [str(a), "-" if n is None else str(n)]
        for m in methods:
            s = by.get((m, a, "in-process")) or by.get((m, a, "live"))
            if s is None:
                cells += ["-", "-"]
                continue
            ms = s["train_ms_median"] if m == "end_to_end" else s["adapt_ms_median"]
            cells += [f"{100 * s['acc_mean']:.2f}±{100 * s['acc_std']:.2f}", "-" if ms is None else f"{ms:.0f}"]
        t.add_row(*cells)
    return t


def print_summary(result: dict) -> None:
    Console(width=240).print(summary_table(result))


def markdown_table(result: dict) -> str:
    """The side-by-side table as Markdown: accuracy mean ± std (%) and median time per method and alpha."""
    by = {(s["method"], s["alpha"]): s for s in result["summary"] if s["mode"] == "in-process"}
    methods = [m for m in METHODS if any(k[0] == m for k in by)]
    alphas = sorted({k[1] for k in by})
    default = _default(result)
    head = ["alpha", "N (train vectors)", "payload B"] + [
        f"{m}{' (default)' if m == default else ''} acc % / ms" for m in methods]
    rows = []
    for a in alphas:
        lora = by.get((default, a)) or next(s for k, s in by.items() if k[1] == a)
        cells = [str(a), str(lora["n_train"]), str(lora["payload_bytes"])]
        for m in methods:
            s = by.get((m, a))
            if s is None:
                cells.append("-")
                continue
            ms = s["train_ms_median"] if m == "end_to_end" else s["adapt_ms_median"]
            t = "-" if ms is None else (f"{ms / 1e3:.1f} s" if ms >= 1e4 else f"{ms:.0f} ms")
            cells.append(f"{100 * s['acc_mean']:.2f} ± {100 * s['acc_std']:.2f} / {t}")
        rows.append(cells)
    return "\n".join(markdown_lines(head, rows)) + "\n"


def targets(result: dict, method: str | None = None) -> list[dict]:
    """Issues #4 and #11's targets for ``method`` (default: the RX default recipe), evaluated on a
    sweep: one dict per (target, alpha) with the measured figure."""
    method = method or _default(result)
    by = {(s["method"], s["alpha"]): s for s in result["summary"] if s["mode"] == "in-process"}
    out = []
    for (m, a), s in sorted(by.items(), key=lambda kv: kv[0][1]):
        if m != method:
            continue
        e2e, pre = by.get(("end_to_end", a)), by.get(("pretrained", a))
        if e2e and (10 <= a <= 180):
            gap = 100 * (e2e["acc_mean"] - s["acc_mean"])
            out.append({"target": "within 1.0 pp of End-to-End", "alpha": a, "value": gap, "unit": "pp behind",
                        "met": gap <= 1.0})
            if a == 20:
                out.append({"target": "within 0.5 pp of End-to-End", "alpha": a, "value": gap,
                            "unit": "pp behind", "met": gap <= 0.5})
        if pre and a == 10:
            gain = 100 * (s["acc_mean"] - pre["acc_mean"])
            out.append({"target": ">= 8 pp above Pre-Trained", "alpha": a, "value": gain, "unit": "pp",
                        "met": gain >= 8.0})
        if a >= 20 and s["adapt_ms_median"] is not None:
            out.append({"target": "adaptation median < 150 ms", "alpha": a, "value": s["adapt_ms_median"],
                        "unit": "ms", "met": s["adapt_ms_median"] < 150})
        if e2e and e2e.get("train_ms_median") and s["adapt_ms_median"]:
            ratio = e2e["train_ms_median"] / s["adapt_ms_median"]
            out.append({"target": "End-to-End >= 50x slower", "alpha": a, "value": ratio, "unit": "x",
                        "met": ratio >= 50})
    return out


def print_targets(result: dict) -> None:
    rows = targets(result)
    if not rows:
        return
    t = Table(title=f"targets (RX default recipe {_default(result)}, cold start)", header_style="bold")
    for name in ("target", "alpha", "measured", "met"):
        t.add_column(name, justify="left" if name == "target" else "right")
    for r in rows:
        t.add_row(r["target"], str(r["alpha"]), f"{r['value']:.2f} {r['unit']}", "yes" if r["met"] else "NO")
    Console(width=160).print(t)
