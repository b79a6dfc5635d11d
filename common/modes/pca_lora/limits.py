"""What one pca-lora session may cost the RX (:class:`RxLimits`), torch-free: the option specs read its
defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RxLimits:
    """What one payload may cost the RX.

    ``max_deadline_s``: largest TX deadline (s) a session may declare; the
    payload budget is ``rate x deadline``. ``budget_tolerance``: fraction a
    payload may exceed that budget by (0.01: rounding between the two ends).
    ``max_test_vectors``: test vectors per payload (each is classified twice,
    frozen and adapted; with a non-linear codec each is first expanded to
    ``d_raw`` float32 values: 20 000 x 784 x 4 B = 63 MB for MNIST).
    ``max_held_bytes_per_key``: bytes of training parts (PAYLOAD_TRAIN frames as
    received) that the unfinished rounds in parts of one owner's sessions (one
    CURVE key, or credential) may hold at once; a part beyond it is refused
    ``parts_held`` (one key cannot fill the RX's memory with rounds it never
    finishes, and other keys are not touched).
    """

    max_deadline_s: float = 1.0
    budget_tolerance: float = 0.01
    max_test_vectors: int = 20_000
    max_held_bytes_per_key: int = 64 * 2**20  # a round in parts at 227 Mb/s and a 1 s deadline: 28 MB

    def __post_init__(self):
        if not self.max_deadline_s > 0 or self.budget_tolerance < 0 or self.max_test_vectors < 1:
            raise ValueError(f"need max_deadline_s > 0, budget_tolerance >= 0 and max_test_vectors >= 1, "
                             f"got {self.max_deadline_s}, {self.budget_tolerance}, {self.max_test_vectors}")
        if self.max_held_bytes_per_key < 1:
            raise ValueError(f"--max-held-bytes-per-key {self.max_held_bytes_per_key}: must be >= 1 byte")
