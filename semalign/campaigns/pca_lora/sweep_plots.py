"""``semalign sweep``'s plots: accuracy (%) and latency (ms) against the transmitted dimension alpha
(``accuracy_vs_alpha.png``, ``latency_vs_alpha.png``), and the methods' labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semalign.campaigns.pca_lora.sweep_config import DEFAULT_METHOD, METHODS


_LABELS = {"pretrained": "Pre-Trained", "lora": "LoRA (the paper's recipe)", "first_layer": "First-layer",
           "staged": "Staged (first layer, then all)", "lora_bank": "Default recipe + adapter bank",
           "lora_nobudget": "LoRA, no time budget", "end_to_end": "End-to-End", "full_ft": "Full fine-tuning",
           "last_layer": "Last-layer fine-tuning"}


def method_label(method: str) -> str:
    """The plot/table label of a sweep method; the RX default is marked."""
    label = _LABELS.get(method, method)
    return f"{label} [RX default]" if method == DEFAULT_METHOD else label


def plot_accuracy(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    summary = [s for s in result["summary"] if s["mode"] == "in-process" or result["mode"] == "live"]
    for method in METHODS:
        ss = sorted((s for s in summary if s["method"] == method and s["mode"] == "in-process"),
                    key=lambda s: s["alpha"])
        if not ss:
            continue
        a = [s["alpha"] for s in ss]
        m = np.array([s["acc_mean"] for s in ss]) * 100
        lo = np.array([s["acc_min"] for s in ss]) * 100
        hi = np.array([s["acc_max"] for s in ss]) * 100
        ax.plot(a, m, marker="o", label=method_label(method))
        ax.fill_between(a, lo, hi, alpha=0.2)
    ax.set_xlabel("transmitted dimension alpha")
    ax.set_ylabel("test accuracy (%)  [mean, band = min..max over seeds]")
    ax.set_title(f"Accuracy vs dimension ({result['dataset']}, B_max {result['b_max_bytes'] / 1e6:.3f} MB, "
                 f"{result['mode']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(s["method"], s["alpha"], s["mode"]): s for s in result["summary"]}
    alphas = sorted({s["alpha"] for s in result["summary"]})
    mode = "live" if result["mode"] == "live" and any(k[2] == "live" for k in by) else "in-process"
    lora = [by.get((DEFAULT_METHOD, a, mode)) or by.get((DEFAULT_METHOD, a, "in-process")) for a in alphas]
    if not all(lora):
        return
    comm = np.array([s["communication_ms_median"] for s in lora])
    tune = np.array([s["adapt_ms_median"] for s in lora])
    cls = np.array([s["classify_ms_median"] for s in lora])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    x = np.arange(len(alphas))
    ax1.bar(x, comm, label="Communication (encode, pack, air time, unpack, reconstruct)")
    ax1.bar(x, tune, bottom=comm, label=f"Fine-tuning ({method_label(DEFAULT_METHOD)})")
    ax1.bar(x, cls, bottom=comm + tune, label="Classification")
    ax1.set_xticks(x, [str(a) for a in alphas])
    ax1.set_xlabel("alpha")
    ax1.set_ylabel("latency (ms, cumulative, median over seeds)")
    ax1.set_title(f"Round latency, RX default recipe ({mode})", fontsize=9)
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3, axis="y")
    for method, key in (("lora", "adapt_ms_median"), ("first_layer", "adapt_ms_median"),
                        ("staged", "adapt_ms_median"), ("lora_bank", "adapt_ms_median"),
                        ("full_ft", "adapt_ms_median"), ("last_layer", "adapt_ms_median"),
                        ("end_to_end", "train_ms_median")):
        ss = [by.get((method, a, "in-process")) for a in alphas]
        pts = [(a, s[key]) for a, s in zip(alphas, ss) if s and s.get(key)]
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method_label(method))
    ax2.set_yscale("log")
    ax2.set_xlabel("alpha")
    ax2.set_ylabel("adaptation / training time (ms, log)")
    ax2.set_title("Adaptation vs End-to-End training time", fontsize=9)
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
