"""``semalign slf-sweep``'s files and tables: the CSV files and ``slf_sweep.json`` (:func:`write_files`),
the Markdown tables it prints (:func:`format_tables`)."""

from __future__ import annotations

import csv
from pathlib import Path

from common.files import atomic_write_json
from semalign.campaigns.slf.sweep_config import PAPER_TABLE1


def _csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.write_text("")
        return
    names = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in names})


def write_files(result: dict, out: Path) -> None:
    """``table1.csv``, ``table1_fp16.csv``, ``fig3_eps.csv``, ``fig3_dissimilarity.csv``, ``deadline.csv``
    and ``slf_sweep.json`` of ``result`` in ``out``."""
    for name in ("table1", "table1_fp16", "fig3_eps", "fig3_dissimilarity", "deadline"):
        _csv(out / f"{name}.csv", result.get(name) or [])
    atomic_write_json(out / "slf_sweep.json", result, indent=2)


def format_tables(result: dict) -> str:
    """Markdown tables of Table I (ours beside the paper's), fp16, Fig. 3 and the deadline choices."""
    lines = []
    ref = result["table1_reference"]
    lines.append(f"Table I (eps = {ref['eps']:g}); misaligned pair: accuracy {100 * ref['misaligned']['accuracy']:.2f} "
                 f"%, MSE {ref['misaligned']['mse']:.4f}; TX's own pair {100 * ref['tx_own_pair']['accuracy']:.2f} %"
                 f" / {ref['tx_own_pair']['mse']:.4f}; RX's own pair on these images "
                 f"{100 * ref['rx_own_pair']['accuracy']:.2f} % / {ref['rx_own_pair']['mse']:.4f}")
    lines.append("")
    lines.append("| l | layers uploaded | download kB (paper) | upload kB (paper) | fine-tune TFLOP (paper) | "
                 "fine-tune s model / this CPU (s/epoch) | T_R model s (paper) | T_R this CPU s | accuracy % "
                 "(paper) | MSE (paper) | MSE reduction |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["table1"]:
        p = PAPER_TABLE1[r["n_frozen"]]
        lines.append(
            f"| {r['n_frozen']} | {r['layers_uploaded']} | {r['download_kb']:.1f} ({p['download_kb']}) | "
            f"{r['upload_kb']:.1f} ({p['upload_kb']}) | {r['finetune_tflop']:.3f} ({p['finetune_tflop']}) | "
            f"{r['finetune_model_s']:.4f} / {r['finetune_s']:.1f} ({r['finetune_s_per_epoch']:.2f}) | "
            f"{r['recovery_model_s']:.3f} ({p['recovery_s']}) | {r['recovery_cpu_s']:.1f} | "
            f"{100 * r['accuracy']:.2f} ({100 * p['accuracy']:.2f}) | {r['mse']:.4f} ({p['mse']}) | "
            f"{100 * r['mse_reduction']:.1f} % |")
    if result.get("table1_fp16"):
        lines += ["", "float16 download (uploads stay float32):", "",
                  ("| l | download B (float32 -> float16) | T_R model s saved | accuracy % float32 -> float16 | "
                   "MSE float32 -> float16 |"), "|---|---|---|---|---|"]
        for r in result["table1_fp16"]:
            lines.append(f"| {r['n_frozen']} | {r['download_frame_bytes'] + r['download_bytes_saved']} -> "
                         f"{r['download_frame_bytes']} | {r['download_model_s_saved']:.3f} | "
                         f"{100 * r['accuracy_float32']:.2f} -> {100 * r['accuracy']:.2f} | "
                         f"{r['mse_float32']:.4f} -> {r['mse']:.4f} |")
    for key, xname in (("fig3_eps", "eps"), ("fig3_dissimilarity", "dissimilarity")):
        rows = result.get(key)
        if not rows:
            continue
        cases = list(dict.fromkeys(r["case"] for r in rows))
        xs = list(dict.fromkeys(r[xname] for r in rows))
        lines += ["", f"Fig. 3 vs {xname}: accuracy % / MSE", "",
                  f"| {xname} | " + " | ".join(cases) + " |", "|---" * (len(cases) + 1) + "|"]
        for x in xs:
            cells = []
            for c in cases:
                r = next((r for r in rows if r[xname] == x and r["case"] == c), None)
                cells.append("-" if r is None else f"{100 * r['accuracy']:.1f} / {r['mse']:.4f}")
            lines.append(f"| {x:g} | " + " | ".join(cells) + " |")
    if result.get("fig3_dissimilarity_skipped"):
        lines += ["", f"source-dissimilarity study skipped: {result['fig3_dissimilarity_skipped']}"]
    if result.get("deadline"):
        rows = result["deadline"]
        lines += ["", ("l chosen from a recovery-time deadline (choose_n_frozen): deadline s -> l (predicted s"
                       "[; measured s]), * = predicted to miss; accuracy and MSE of each l as in Table I"), "",
                  "| compute | rate Mb/s | choices |", "|---|---|---|"]
        for key in dict.fromkeys((r["compute"], r["rate_bps"]) for r in rows):
            cells = [f"{r['deadline_s']:.3g} -> {r['n_frozen']}{'' if r['met_predicted'] else '*'} "
                     f"({r['predicted_s']:.3g}" + ("" if r["measured_s"] is None else f"; {r['measured_s']:.3g}")
                     + ")" for r in rows if (r["compute"], r["rate_bps"]) == key]
            lines.append(f"| {key[0]} | {key[1] / 1e6:g} | " + ", ".join(cells) + " |")
    lines += ["", (f"wall time {result['wall_s']:.0f} s on {result['machine']['cpu']} "
                   f"({result['machine']['torch_threads']} torch thread(s), device {result['settings']['device']})")]
    return "\n".join(lines)
