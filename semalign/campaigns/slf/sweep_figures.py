"""``semalign slf-sweep``'s figures: ``table1.png``, ``fig3_eps.png``, ``fig3_dissimilarity.png`` and
the Fig. 2-like ``reconstructions.png`` (pixels in [0, 1])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.modes.slf.dmc import dmc_numpy
from common.modes.slf.transceiver import Transceiver
from semalign.campaigns.slf.sweep_case import Side
from semalign.campaigns.slf.sweep_config import PAPER_TABLE1, SlfSweepConfig


@torch.no_grad()
def _reconstruct(tx: Transceiver, rx: Transceiver, x: torch.Tensor, eps: float, seed: int) -> np.ndarray:
    sent = tx.encode(x).cpu().numpy()
    got = torch.from_numpy(dmc_numpy(sent, rx.shape.n_codewords, eps, np.random.default_rng(seed))).to(x.device)
    return rx.decode(got).cpu().numpy()


def write_figures(cfg: SlfSweepConfig, result: dict, models: dict, tx: Side, rx: Side, x_ev, out: Path) -> list:
    """Draw the figures of ``result`` into ``out`` (``models``: the aligned pairs by case, ``x_ev``: the
    test images); returns the files' names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    # ---- Table I: recovery time breakdown per l (model and this CPU), accuracy and MSE
    rows = result["table1"]
    ls = [r["n_frozen"] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    bottom = np.zeros(len(rows))
    for key, label, color in (("download_model_s", "download (2 Mb/s)", "tab:blue"),
                              ("finetune_model_s", "fine-tuning (30 TFLOP/s)", "tab:orange"),
                              ("upload_model_s", "upload (2 Mb/s)", "tab:green")):
        vals = np.array([r[key] for r in rows])
        ax.bar(ls, vals, bottom=bottom, color=color, label=label, width=0.6)
        bottom += vals
    ax.plot(ls, [PAPER_TABLE1[l]["recovery_s"] for l in ls], "k^--", label="paper's Table I (reconstruction)")
    ax.set_xlabel("frozen decoder layers l")
    ax.set_ylabel("recovery time T_R (s)")
    ax.set_xticks(ls)
    ax.set_title("Table I model: ours vs the paper's")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax2.plot(ls, [100 * r["accuracy"] for r in rows], "o-", color="tab:red", label="accuracy, ours")
    ax2.plot(ls, [100 * PAPER_TABLE1[l]["accuracy"] for l in ls], "^--", color="tab:red", alpha=0.5,
             label="accuracy, paper")
    ax2.axhline(100 * result["table1_reference"]["misaligned"]["accuracy"], color="tab:red", ls=":",
                label="accuracy, misaligned")
    ax2.set_xlabel("frozen decoder layers l")
    ax2.set_ylabel("top-1 accuracy (%)")
    ax2.set_xticks(ls)
    ax3 = ax2.twinx()
    ax3.plot(ls, [r["mse"] for r in rows], "s-", color="tab:purple", label="MSE, ours")
    ax3.plot(ls, [PAPER_TABLE1[l]["mse"] for l in ls], "v--", color="tab:purple", alpha=0.5, label="MSE, paper")
    ax3.set_ylabel("reconstruction MSE per pixel (pixels in [0, 1])")
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = ax3.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, fontsize=8, loc="center right")
    ax2.set_title(f"after SLF ({cfg.table_epochs:g} epoch(s) over {rows[0]['finetune_images']} images, "
                  f"eps = {cfg.table_eps:g})")
    fig.tight_layout()
    fig.savefig(out / "table1.png", dpi=120)
    plt.close(fig)
    files.append("table1.png")

    def fig3(rows: list, xkey: str, xlabel: str, title: str, name: str, logx: bool) -> None:
        cases = list(dict.fromkeys(r["case"] for r in rows))
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for case in cases:
            pts = sorted((r[xkey], r["mse"], r["accuracy"]) for r in rows if r["case"] == case)
            xs = [p[0] for p in pts]
            style = ":" if case in ("misaligned", "RX's own transceiver") else "-"
            axes[0].plot(xs, [p[1] for p in pts], style, marker="o", label=case)
            axes[1].plot(xs, [100 * p[2] for p in pts], style, marker="o", label=case)
        for a, ylabel in zip(axes, ("reconstruction MSE per pixel (pixels in [0, 1])", "top-1 accuracy (%)")):
            a.set_xlabel(xlabel)
            a.set_ylabel(ylabel)
            if logx:
                a.set_xscale("log")
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        files.append(name)

    fig3(result["fig3_eps"], "eps", "DMC crossover probability eps_12 (fine-tuning and link)",
         f"Fig. 3 (channel): TX {tx.config.name} -> RX {rx.config.name}, {cfg.fig3_epochs:g} fine-tuning epoch(s)",
         "fig3_eps.png", True)
    if result.get("fig3_dissimilarity"):
        r0 = result["fig3_dissimilarity"][0]
        fig3(result["fig3_dissimilarity"], "dissimilarity",
             "data dissimilarity delta (share of the TX's images from its own source)",
             f"Fig. 3 (source): TX {tx.config.name} -> RX {Path(cfg.source_rx_trx).name}, eps {cfg.source_eps:g}, "
             f"{r0['head_classes']}-class head, {cfg.fig3_epochs:g} fine-tuning epoch(s)", "fig3_dissimilarity.png",
             False)

    # ---- Fig. 2-like grid: inputs, own pair, misaligned, SLF, per pair
    panels = []
    k = min(cfg.grid_images, len(x_ev))
    xs = x_ev[:k]
    rows_img = [("input", xs.cpu().numpy()),
                (f"TX {tx.config.name}'s own pair", _reconstruct(tx.model, tx.model, xs, cfg.table_eps, 1)),
                (f"misaligned: TX {tx.config.name} -> RX {rx.config.name}",
                 _reconstruct(tx.model, rx.model, xs, cfg.table_eps, 1))]
    for l in (0, 2, 4):
        if ("table1", l) in models:
            m = models[("table1", l)]
            rows_img.append((f"SLF l={l}", _reconstruct(m["tx"], m["rx"], xs, cfg.table_eps, 1)))
    panels.append((f"channel dissimilarity (eps = {cfg.table_eps:g})", rows_img))
    src = [v for (kind, _), v in models.items() if kind == "source"]
    if src:
        xsrc = src[0]["x"][:k]
        rows_img = [("input (mixed sources)", xsrc.cpu().numpy()),
                    (f"misaligned: TX {tx.config.name} -> RX {cfg.source_rx_trx}",
                     _reconstruct(tx.model, src[0]["rx_orig"], xsrc, cfg.source_eps, 1))]
        for (kind, l), m in sorted(((k2, v) for k2, v in models.items() if k2[0] == "source"), key=lambda t: t[0][1]):
            rows_img.append((f"SLF l={l}", _reconstruct(m["tx"], m["rx"], xsrc, cfg.source_eps, 1)))
        panels.append((f"source dissimilarity (delta = {cfg.grid_dissimilarity:g})", rows_img))
    side = tx.config.shape.image_size
    n_rows = sum(len(p[1]) for p in panels)
    fig, axes = plt.subplots(n_rows, k, figsize=(1.2 * k + 2.6, 1.25 * n_rows + 0.4 * len(panels)), squeeze=False)
    i = 0
    for title, rows_img in panels:
        for j, (label, imgs) in enumerate(rows_img):
            for c in range(k):
                a = axes[i][c]
                img = imgs[c].reshape(tx.config.shape.channels, side, side)
                a.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
                a.set_xticks([])
                a.set_yticks([])
            axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            if j == 0:
                axes[i][k // 2].set_title(title, fontsize=10)
            i += 1
    fig.tight_layout()
    fig.savefig(out / "reconstructions.png", dpi=110)
    plt.close(fig)
    files.append("reconstructions.png")
    return files
