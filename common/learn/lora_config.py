"""The LoRA settings, torch-free so that option specs and configs can name their defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoraConfig:
    """``rank``: the configured r (clamped per adapter, :meth:`rank_for`); ``lora_alpha``: ``scaling = lora_alpha / r``."""

    rank: int = 8
    lora_alpha: float = 16.0

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")

    def rank_for(self, *shapes: tuple[int, int]) -> int:
        """The rank of adapters on weights of ``shapes`` (out, in): ``rank`` clamped to the smallest dimension."""
        return min(self.rank, *(min(s) for s in shapes))

    def scaling_for(self, r: int) -> float:
        """``lora_alpha / r`` for an adapter of rank ``r`` (the clamped rank, never the configured one)."""
        return self.lora_alpha / r
