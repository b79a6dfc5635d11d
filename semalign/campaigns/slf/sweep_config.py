"""``semalign slf-sweep``'s settings (:class:`SlfSweepConfig`) and the paper's numbers it compares to
(:data:`PAPER_TABLE1`: sizes in kB = 1000 B, FLOPs in TFLOP, times in s, MSE per pixel in [0, 1])."""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.modes.slf.transceiver import DECODER_LAYERS

# The paper's Table I (recovery with the reconstruction and the classification fine-tuning; kB = 1000 B)
PAPER_TABLE1 = {
    0: {"download_kb": 114, "upload_kb": 114, "finetune_tflop": 79.02, "recovery_s": 3.542,
        "recovery_class_s": 3.422, "mse": 0.087, "accuracy": 0.9855},
    1: {"download_kb": 114, "upload_kb": 76, "finetune_tflop": 64.28, "recovery_s": 2.900,
        "recovery_class_s": 3.000, "mse": 0.103, "accuracy": 0.9804},
    2: {"download_kb": 114, "upload_kb": 22, "finetune_tflop": 48.19, "recovery_s": 2.144,
        "recovery_class_s": 1.864, "mse": 0.113, "accuracy": 0.9783},
    3: {"download_kb": 114, "upload_kb": 2, "finetune_tflop": 50.63, "recovery_s": 2.144,
        "recovery_class_s": 1.704, "mse": 0.121, "accuracy": 0.9701},
    4: {"download_kb": 114, "upload_kb": 0, "finetune_tflop": 47.32, "recovery_s": 2.026,
        "recovery_class_s": 1.586, "mse": 0.123, "accuracy": 0.9690},
}
PAPER_MIN_MSE_REDUCTION = 0.846  # "SLF reduces the baseline MSE from a minimum of 84.6 % to 92.1 %"


# ``semalign slf-sweep --quick``: every study at a reduced size (3 of Table I's l values, 1 fine-tuning epoch
# over 2,000 images, 2 eps values and 2 dissimilarities for Fig. 3, 1,000 evaluation images, no float16 rows)
QUICK = {"layers": (0, 2, 4), "table_epochs": 1.0, "fp16": False, "eps_values": (1e-5, 1e-1), "fig3_layers": (0, 4),
         "fig3_epochs": 1.0, "dissimilarities": (0.0, 1.0), "head_epochs": 1.0, "finetune_images": 2000,
         "eval_images": 1000}


@dataclass(frozen=True)
class SlfSweepConfig:
    """What ``semalign slf-sweep`` runs (defaults: about 6-10 minutes on one core here).

    Transceivers: config names (``artifacts/slf-<name>``, pre-trained at the
    demo's reduced size when missing) or artifact directories. Epochs are
    passes over ``finetune_images`` of the TX's training split (0 = all of
    it); evaluation on ``eval_images`` of its test split (0 = all of it).
    ``source_rx_trx`` None or ``dissimilarities`` empty: no source study.
    ``finetune_lr`` None: the paper's (1e-3 for l = 0, else 1e-4).
    """

    tx_trx: str = "trx1"
    rx_trx: str = "trx2"
    source_rx_trx: str | None = "trx3"
    layers: tuple[int, ...] = (0, 1, 2, 3, 4)
    table_eps: float = 1e-5
    table_epochs: float = 5.0
    fp16: bool = True
    eps_values: tuple[float, ...] = (1e-5, 1e-3, 1e-2, 1e-1)
    fig3_layers: tuple[int, ...] = (0, 2, 4)
    fig3_epochs: float = 2.0
    dissimilarities: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    source_eps: float = 1e-5
    head_epochs: float = 5.0
    finetune_images: int = 0
    eval_images: int = 0
    finetune_lr: float | None = None
    batch_size: int = 128
    deadlines_s: tuple[float, ...] = ()  # () = auto: around and between the predicted recovery times
    rates_bps: tuple[float, ...] = (2e6, 170.1e6)
    grid_images: int = 8
    device: str = "cpu"
    threads: int = 1
    seed: int = 0
    eval_seed: int = 7

    def __post_init__(self):
        for name in ("layers", "fig3_layers"):
            bad = [l for l in getattr(self, name) if not 0 <= l <= len(DECODER_LAYERS)]
            if bad or not getattr(self, name):
                raise ValueError(f"{name} must be values in 0..{len(DECODER_LAYERS)}, got {getattr(self, name)}")
        probs = [self.table_eps, self.source_eps, *self.eps_values, *self.dissimilarities]
        if any(not 0.0 <= p <= 1.0 for p in probs):
            raise ValueError(f"eps values and dissimilarities must lie in [0, 1], got {probs}")
        if not (self.table_epochs > 0 and self.fig3_epochs > 0 and self.head_epochs > 0):
            raise ValueError("table_epochs, fig3_epochs and head_epochs must be > 0")
        if min(self.finetune_images, self.eval_images) < 0 or self.batch_size < 1 or self.threads < 1:
            raise ValueError("finetune_images and eval_images must be >= 0, batch_size and threads >= 1")
        if any(d <= 0 for d in self.deadlines_s) or any(r <= 0 for r in self.rates_bps):
            raise ValueError("deadlines and link rates must be > 0")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if not 1 <= self.grid_images <= 32:
            raise ValueError(f"grid_images must be in 1..32, got {self.grid_images}")

    def epochs_total(self, source: bool = True) -> int:
        """Progress units: fine-tuning epochs (rounded up) of every run, plus the head's (``source``: the
        source study runs)."""
        fp16 = sum(1 for l in self.layers if l > 0) if self.fp16 else 0
        table = (len(self.layers) + fp16) * math.ceil(self.table_epochs)
        fig = len(self.eps_values) * len(self.fig3_layers) * math.ceil(self.fig3_epochs)
        src = 0
        if source:
            src = len(self.dissimilarities) * len(self.fig3_layers) * math.ceil(self.fig3_epochs)
            src += math.ceil(self.head_epochs)
        return table + fig + src

    @property
    def grid_dissimilarity(self) -> float | None:
        """The dissimilarity whose reconstructions the grid shows (the one closest to 0.5)."""
        return min(self.dissimilarities, key=lambda d: abs(d - 0.5)) if self.dissimilarities else None
