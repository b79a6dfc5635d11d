"""What the slf TX does per round (:class:`SlfTxConfig`), torch-free: the CLI's option specs read its defaults."""

from __future__ import annotations

from dataclasses import dataclass

from common.modes.slf.configs import PAPER_BATCH_SIZE
from common.modes.slf.limits import DOWNLOAD_DTYPES, MAX_SEMANTIC_IMAGES
from common.modes.slf.shape import DECODER_LAYERS


@dataclass(frozen=True)
class SlfTxConfig:
    """What the TX does per round.

    ``n_frozen``: the paper's ``l`` (decoder layers frozen counted from the
    last, 0..4; 0 re-initialises the decoder). ``n_images``: test images per
    semantic round. ``finetune_epochs`` over ``finetune_images`` training
    images (0 = the whole training split), ``finetune_batch``,
    ``finetune_budget_s`` (wall-clock cap, None = none), ``finetune_lr``
    (None: the paper's, 1e-3 for l = 0, else 1e-4). ``align_first``: the
    round of the first alignment; ``align_every``: re-align every N rounds
    after it (0 = once). ``eps``: crossover probability to fine-tune for
    (None = the RX's: its HELLO ``eps``, or the round's BLER when the RX
    derives eps from BLER). ``seed``: image sampling, fine-tuning.

    Beyond the paper: ``recovery_deadline_s`` (None: use ``n_frozen``) makes
    the TX choose ``l`` per alignment from the CHANNEL's rate and the
    recovery-time model, with fine-tuning at ``compute_flops`` FLOP/s (None:
    measured once by timing a few fine-tuning steps). ``download_dtype``:
    ``float32`` or ``float16``. ``alignment_cache``: directory of kept
    alignments (None: none kept).
    """

    n_frozen: int = 2
    n_images: int = 500
    finetune_epochs: float = 1.0
    finetune_images: int = 0
    finetune_batch: int = PAPER_BATCH_SIZE
    finetune_budget_s: float | None = None
    finetune_lr: float | None = None
    align_first: int = 1
    align_every: int = 0
    eps: float | None = None
    seed: int = 0
    recovery_deadline_s: float | None = None
    compute_flops: float | None = None
    download_dtype: str = "float32"
    alignment_cache: str | None = None

    def __post_init__(self):
        if not 0 <= self.n_frozen <= len(DECODER_LAYERS):
            raise ValueError(f"n_frozen must be in 0..{len(DECODER_LAYERS)}, got {self.n_frozen}")
        if not 1 <= self.n_images <= MAX_SEMANTIC_IMAGES:
            raise ValueError(f"n_images must be in 1..{MAX_SEMANTIC_IMAGES}, got {self.n_images}")
        if self.finetune_images < 0 or self.align_first < 0 or self.align_every < 0:
            raise ValueError(f"finetune_images={self.finetune_images}, align_first={self.align_first}, "
                             f"align_every={self.align_every} must be >= 0")
        if self.eps is not None and not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"eps must be a probability in [0, 1], got {self.eps}")
        if self.recovery_deadline_s is not None and not self.recovery_deadline_s > 0:
            raise ValueError(f"recovery_deadline_s must be > 0, got {self.recovery_deadline_s}")
        if self.compute_flops is not None and not self.compute_flops > 0:
            raise ValueError(f"compute_flops must be > 0 FLOP/s, got {self.compute_flops}")
        if self.download_dtype not in DOWNLOAD_DTYPES:
            raise ValueError(f"download_dtype must be one of {DOWNLOAD_DTYPES}, got {self.download_dtype!r}")
        self.slf_config(0.0)  # checks epochs, batch and budget

    def slf_config(self, eps: float, n_frozen: int | None = None, budget_s: float | None = None):
        """The :class:`SlfConfig` (fine-tuning settings) for ``eps``; ``n_frozen`` / ``budget_s`` override
        the configured ones. (Imported here: the training module loads torch, this one does not.)"""
        from common.modes.slf.training import SlfConfig

        return SlfConfig(n_frozen=self.n_frozen if n_frozen is None else n_frozen, eps=eps,
                         epochs=self.finetune_epochs, batch_size=self.finetune_batch, seed=self.seed,
                         budget_s=self.finetune_budget_s if budget_s is None else budget_s,
                         learning_rate=self.finetune_lr)

    def is_alignment(self, seq: int) -> bool:
        if seq == self.align_first:
            return True
        return self.align_every > 0 and seq > self.align_first and (seq - self.align_first) % self.align_every == 0
