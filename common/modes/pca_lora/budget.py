"""Payload budget, eq. (2) of the paper, with the real header sizes of our wire format.

``B_max = rate_bps * deadline_s / 8`` bytes; a payload of ``n`` vectors of
dimension ``alpha`` takes exactly ``H + n * (h + sigma * alpha)`` bytes. A
round in parts (K PAYLOAD_TRAIN then PAYLOAD) pays every frame's header:
``H = H_PAYLOAD + K H_PAYLOAD_TRAIN``.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.modes.pca_lora.messages import Payload, TrainPart, payload_header_bytes, vector_header_bytes
from common.wire.values import value_format


class BudgetError(ValueError):
    """The budget cannot carry what is asked (e.g. not even the test vectors fit)."""


@dataclass(frozen=True)
class PayloadLayout:
    """Sizes that eq. (2) needs: ``H`` and ``h`` in bytes, ``sigma`` bytes per value."""

    value_dtype: str
    header_bytes: int
    vector_header_bytes: int
    bytes_per_value: int

    @classmethod
    def for_dtype(cls, value_dtype: str, train_parts: int = 0) -> "PayloadLayout":
        """The layout of one PAYLOAD, or of ``train_parts`` PAYLOAD_TRAIN frames and a PAYLOAD."""
        header = payload_header_bytes(Payload) + train_parts * payload_header_bytes(TrainPart)
        return cls(value_dtype, header, vector_header_bytes(value_dtype), value_format(value_dtype).bytes_per_value)

    def vector_bytes(self, alpha: int) -> int:
        """``h + sigma * alpha``: bytes of one vector on the wire."""
        return self.vector_header_bytes + self.bytes_per_value * alpha

    def payload_bytes(self, alpha: int, n_vectors: int) -> int:
        """Exact size of a PAYLOAD with ``n_vectors`` vectors of dimension ``alpha``."""
        return self.header_bytes + n_vectors * self.vector_bytes(alpha)


def budget_bytes(rate_bps: float, deadline_s: float) -> int:
    """``B_max`` in bytes that the link carries within the deadline."""
    if rate_bps <= 0 or deadline_s <= 0:
        raise ValueError(f"rate_bps={rate_bps} and deadline_s={deadline_s} must be positive")
    return int(rate_bps * deadline_s // 8)


def n_train_max(b_max_bytes: int, alpha: int, n_test: int, layout: PayloadLayout) -> int:
    """Eq. (2): ``floor((B_max - H - t (h + sigma alpha)) / (h + sigma alpha))``.

    Raises :class:`BudgetError` if not even the ``n_test`` test vectors fit.
    """
    if alpha < 1 or n_test < 1:
        raise ValueError(f"alpha={alpha} and n_test={n_test} must be >= 1")
    per_vector = layout.vector_bytes(alpha)
    spare = b_max_bytes - layout.header_bytes - n_test * per_vector
    if spare < 0:
        raise BudgetError(
            f"budget of {b_max_bytes} B cannot carry {n_test} test vectors at alpha={alpha} "
            f"({layout.payload_bytes(alpha, n_test)} B with {layout.value_dtype})")
    return spare // per_vector


def largest_alpha(b_max_bytes: int, d_max: int, n_test: int, n_min_train: int,
                  layout: PayloadLayout) -> int:
    """Largest ``alpha <= d_max`` carrying ``n_test`` test and ``n_min_train`` training vectors.

    Raises :class:`BudgetError` when even ``alpha = 1`` does not fit.
    """
    n = n_test + n_min_train
    room = (b_max_bytes - layout.header_bytes) // max(n, 1) - layout.vector_header_bytes
    alpha = min(d_max, room // layout.bytes_per_value)
    if alpha < 1:
        raise BudgetError(
            f"budget of {b_max_bytes} B cannot carry {n_test} test + {n_min_train} training "
            f"vectors even at alpha=1 ({layout.payload_bytes(1, n)} B with {layout.value_dtype})")
    return int(alpha)
