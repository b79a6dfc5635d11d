import numpy as np
import pytest

from common.modes.pca_lora.budget import (
    BudgetError,
    PayloadLayout,
    budget_bytes,
    largest_alpha,
    n_train_max,
)
from common.wire.protocol import encode
from common.modes.pca_lora.messages import Payload

FP = "cd" * 32


def packed_size(layout, alpha, n):
    z = np.zeros((n, alpha), np.float32)
    return len(encode(Payload.build(1, 1, FP, layout.value_dtype, z, np.zeros(n), np.zeros(n), 1)))


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("b_max,alpha,t", [(1_000, 1, 1), (62_500, 20, 100), (1_417_812, 200, 500),
                                          (300_000, 137, 250)])
def test_eq2_fills_the_budget_exactly(dtype, b_max, alpha, t):
    layout = PayloadLayout.for_dtype(dtype)
    n = n_train_max(b_max, alpha, t, layout)
    h, sigma, H = layout.vector_header_bytes, layout.bytes_per_value, layout.header_bytes
    assert n == (b_max - H - t * (h + sigma * alpha)) // (h + sigma * alpha)
    assert packed_size(layout, alpha, t + n) <= b_max
    assert packed_size(layout, alpha, t + n + 1) > b_max


def test_real_header_sizes():
    assert PayloadLayout.for_dtype("float32").vector_header_bytes == 5  # id u32 + label u8
    assert PayloadLayout.for_dtype("int8").vector_header_bytes == 9  # + f32 scale
    assert PayloadLayout.for_dtype("float16").bytes_per_value == 2


def test_test_vectors_do_not_fit():
    layout = PayloadLayout.for_dtype("float32")
    with pytest.raises(BudgetError, match="cannot carry 100 test vectors"):
        n_train_max(1000, 50, 100, layout)


@pytest.mark.parametrize("b_max,t,n_min", [(62_500, 500, 100), (1_000_000, 500, 100), (10_000, 10, 0)])
def test_largest_alpha_is_largest(b_max, t, n_min):
    layout = PayloadLayout.for_dtype("float16")
    a = largest_alpha(b_max, 200, t, n_min, layout)
    assert layout.payload_bytes(a, t + n_min) <= b_max
    assert a == 200 or layout.payload_bytes(a + 1, t + n_min) > b_max


def test_largest_alpha_impossible():
    with pytest.raises(BudgetError, match="even at alpha=1"):
        largest_alpha(500, 200, 100, 0, PayloadLayout.for_dtype("float16"))


def test_budget_bytes():
    assert budget_bytes(8e6, 0.5) == 500_000
    with pytest.raises(ValueError, match="rate_bps"):
        budget_bytes(0, 1)
