"""Aggregation of LoRA updates of different ranks, weighted by sample counts (pure numpy).

Notation for one adapted layer with weight (out, in): device k uploads
``B_k`` (out, r_k) and ``A_k`` (r_k, in) with ``Delta W_k = B_k A_k`` (the
adapter's scaling already folded into B, see :mod:`foundation`), and holds
``n_k`` samples; ``w_k = n_k / sum(n)`` over the devices that uploaded this
layer.

- ``stack-svd`` (FLoRA stacking + FlexLoRA redistribution): stack
  ``B_s = [w_1 B_1 | ... | w_K B_K]`` (out, R) and ``A_s = [A_1; ...; A_K]``
  (R, in), ``R = sum r_k``, so that ``B_s A_s = sum_k w_k B_k A_k`` exactly;
  each device then receives the best rank-r approximation of that product
  (truncated SVD, Eckart-Young) as its next starting factors.
- ``zero-pad`` (HetLoRA baseline): pad every B_k with zero columns and A_k with
  zero rows to ``r_max``, average B and A separately; a device of rank r takes
  the first r components. Not exact: ``avg(B) avg(A) != avg(B A)``.
- ``fedavg``: plain weighted averaging of equal-rank B and A (and the head).
- ``trimmed-mean`` / ``median`` (robust, against hostile devices): per layer
  the dense products ``P_k = B_k A_k`` (out, in) of the K received updates,
  combined coordinate-wise, unweighted: ``trimmed-mean`` drops the
  ``t = floor(TRIM_FRACTION K)`` smallest and largest values of every
  coordinate (t = 1 at K = 4) and averages the rest; ``median`` takes the
  median. The head likewise. The result is blended with the previous global
  by the received devices' sample share (as the other rules) and kept as
  exact factors (SVD of the product, rank <= min(out, in)), redistributed
  to each device by truncated SVD as ``stack-svd``.

**Clipping** (every rule, ``scales``): update k's contribution enters with
weight ``c_k w_k`` and the previous global takes the other ``(1 - c_k) w_k``,
i.e. the update is replaced by ``G + c_k (U_k - G)``: its delta from the
global, in product space (:func:`update_norm`), shrunk by ``c_k`` (exact for
the product-space rules; in factor space for ``zero-pad`` and ``fedavg``).
The base station sets ``c_k = min(1, clip x median_j ||U_j - G|| / ||U_k - G||)``.

Internal arithmetic is float64; :func:`stack_lora` and :func:`product_svd` return float64,
the other helpers and :class:`GlobalAdapter` C-contiguous float32.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

AGGREGATIONS: tuple[str, ...] = ("stack-svd", "zero-pad", "fedavg", "trimmed-mean", "median")
ROBUST: tuple[str, ...] = ("trimmed-mean", "median")
PRODUCT_SPACE: tuple[str, ...] = ("stack-svd", *ROBUST)  # kept as exact factors, redistributed by SVD
TRIM_FRACTION = 0.25  # trimmed-mean: values dropped at each end of every coordinate, as a fraction of K
Factors = tuple[np.ndarray, np.ndarray]  # (B (out, r), A (r, in))


def sample_weights(n_samples: Sequence[float]) -> np.ndarray:
    """``n_k / sum(n)``, float64 (K,); ValueError for negative counts or a zero total."""
    n = np.asarray(n_samples, dtype=np.float64)
    if n.ndim != 1 or not len(n) or not np.all(np.isfinite(n)) or np.any(n < 0) or n.sum() <= 0:
        raise ValueError(f"n_samples must be finite, >= 0, with a positive total, got {list(n_samples)}")
    return n / n.sum()


def _check_factors(factors: Sequence[Factors]) -> tuple[int, int]:
    if not factors:
        raise ValueError("need at least one (B, A) pair")
    out, inp = factors[0][0].shape[0], factors[0][1].shape[1]
    for k, (B, A) in enumerate(factors):
        if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0] or B.shape[0] != out or A.shape[1] != inp:
            raise ValueError(f"factor pair {k}: B {B.shape} and A {A.shape} do not fit (out={out}, in={inp})")
    return out, inp


def stack_lora(factors: Sequence[Factors], weights: Sequence[float]) -> Factors:
    """FLoRA stacking: ``(B_s (out, R), A_s (R, in))`` with ``B_s A_s = sum_k w_k B_k A_k`` exactly.

    ``weights`` are used as given (normalise with :func:`sample_weights`).
    """
    _check_factors(factors)
    if len(weights) != len(factors):
        raise ValueError(f"{len(factors)} factor pairs but {len(weights)} weights")
    B = np.concatenate([w * np.asarray(b, np.float64) for (b, _), w in zip(factors, weights)], axis=1)
    A = np.concatenate([np.asarray(a, np.float64) for _, a in factors], axis=0)
    return B, A


def product_svd(B: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD ``U (out, R'), s (R',), Vt (R', in)`` of ``B A`` without forming it.

    QR of ``B`` and ``A^T`` reduce the problem to an SVD of the small core
    ``R_B R_A^T``; cost O((out + in) R^2 + R^3) for B (out, R), A (R, in).
    Components with ``s <= max(out, in) * eps * s_max`` are dropped, so R' is
    the numerical rank of the product.
    """
    B, A = np.asarray(B, np.float64), np.asarray(A, np.float64)
    qb, rb = np.linalg.qr(B)
    qa, ra = np.linalg.qr(A.T)
    u, s, vt = np.linalg.svd(rb @ ra.T, full_matrices=False)
    tol = max(B.shape[0], A.shape[1]) * np.finfo(np.float64).eps * s[0] if len(s) else 0.0
    keep = s > tol
    return qb @ u[:, keep], s[keep], (qa @ vt[keep].T).T


def _pad(B: np.ndarray, A: np.ndarray, rank: int, rng: np.random.Generator) -> Factors:
    """Grow to ``rank`` with zero B columns and fresh A rows ~ U(-1/sqrt(in), 1/sqrt(in)).

    The product is unchanged and the new directions stay trainable (a zero
    row in both factors would get zero gradient forever).
    """
    extra = rank - B.shape[1]
    if extra <= 0:
        return B[:, :rank], A[:rank]
    bound = 1.0 / np.sqrt(A.shape[1])
    return (np.concatenate([B, np.zeros((B.shape[0], extra))], axis=1),
            np.concatenate([A, rng.uniform(-bound, bound, (extra, A.shape[1]))], axis=0))


def svd_redistribute(B: np.ndarray, A: np.ndarray, rank: int, rng: np.random.Generator) -> Factors:
    """Best rank-``rank`` factors ``(B_r (out, rank), A_r (rank, in))`` of ``B A`` (FlexLoRA).

    ``B_r = U_r sqrt(S_r)``, ``A_r = sqrt(S_r) V_r^T`` (balanced split). When
    ``rank`` exceeds the product's numerical rank the result is padded as in
    :func:`_pad` (``rng`` draws the fresh A rows), so a full-rank request
    reproduces ``B A`` exactly (to float rounding).
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    _check_factors([(np.asarray(B), np.asarray(A))])
    u, s, vt = product_svd(B, A)
    k = min(rank, len(s))
    root = np.sqrt(s[:k])
    Br, Ar = _pad(u[:, :k] * root, root[:, None] * vt[:k], rank, rng)
    return np.ascontiguousarray(Br, np.float32), np.ascontiguousarray(Ar, np.float32)


def zero_pad_average(factors: Sequence[Factors], weights: Sequence[float]) -> Factors:
    """HetLoRA: ``(sum_k w_k pad(B_k) (out, r_max), sum_k w_k pad(A_k) (r_max, in))``, zero padding."""
    out, inp = _check_factors(factors)
    if len(weights) != len(factors):
        raise ValueError(f"{len(factors)} factor pairs but {len(weights)} weights")
    r_max = max(b.shape[1] for b, _ in factors)
    B, A = np.zeros((out, r_max)), np.zeros((r_max, inp))
    for (b, a), w in zip(factors, weights):
        B[:, :b.shape[1]] += w * np.asarray(b, np.float64)
        A[:a.shape[0]] += w * np.asarray(a, np.float64)
    return B.astype(np.float32), A.astype(np.float32)


def fedavg(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_k w_k x_k`` of equal-shape arrays, float32 with their shape."""
    if not arrays or len(arrays) != len(weights):
        raise ValueError(f"need equally many arrays and weights, got {len(arrays)} and {len(weights)}")
    shapes = {np.shape(x) for x in arrays}
    if len(shapes) != 1:
        raise ValueError(f"fedavg needs equal shapes, got {sorted(shapes)}")
    return sum(w * np.asarray(x, np.float64) for x, w in zip(arrays, weights)).astype(np.float32)


def update_norm(update: Mapping[str, np.ndarray], global_state: Mapping[str, np.ndarray]) -> float:
    """``||U - G||``: the Frobenius norm (float64; may be inf or nan) of an update's delta from the global
    state, over every adapted layer's product ``B A`` (a layer without global state: from zero) and
    the head. Dense products: cheap for these layers (at most 1536 x 384 for MiniLM)."""
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for key, a in update.items():
            if key.endswith(".lora_A"):
                layer = key[: -len(".lora_A")]
                p = np.asarray(update[f"{layer}.lora_B"], np.float64) @ np.asarray(a, np.float64)
                if f"{layer}.lora_A" in global_state:
                    p = p - (np.asarray(global_state[f"{layer}.lora_B"], np.float64)
                             @ np.asarray(global_state[f"{layer}.lora_A"], np.float64))
                total += float(np.sum(p * p))
            elif key.startswith("head."):
                d = np.asarray(a, np.float64) - np.asarray(global_state[key], np.float64)
                total += float(np.sum(d * d))
    return math.sqrt(total) if math.isfinite(total) else (math.inf if not math.isnan(total) else math.nan)


def robust_combine(values: Sequence[np.ndarray], method: str) -> np.ndarray:
    """Coordinate-wise ``trimmed-mean`` or ``median`` of equal-shape arrays (float64, unweighted)."""
    x = np.stack([np.asarray(v, np.float64) for v in values])
    if method == "median":
        return np.median(x, axis=0)
    t = int(TRIM_FRACTION * len(x))
    x = np.sort(x, axis=0)
    return x[t:len(x) - t].mean(axis=0)


class GlobalAdapter:
    """The base station's global LoRA state per layer and head, updated each round.

    ``method``: one of :data:`AGGREGATIONS`; ``head``: the initial
    ``head.weight`` (C, d) and ``head.bias`` (C,); ``seed``: the generator for
    padding rows (:func:`_pad`). Updates use the adapter dict format of
    :mod:`foundation` (``<layer>.lora_A``/``<layer>.lora_B``, head keys).
    A layer no device uploaded this round keeps its previous state.
    """

    def __init__(self, method: str, head: Mapping[str, np.ndarray], seed: int = 0):
        if method not in AGGREGATIONS:
            raise ValueError(f"method must be one of {AGGREGATIONS}, got {method!r}")
        missing = [k for k in ("head.weight", "head.bias") if k not in head]
        if missing:
            raise ValueError(f"initial head lacks {missing}")
        self.method = method
        self.head = {k: np.asarray(head[k], np.float32).copy() for k in ("head.weight", "head.bias")}
        self.layers: dict[str, Factors] = {}
        self._rng = np.random.default_rng(seed)

    def aggregate(self, updates: Sequence[Mapping[str, np.ndarray]], n_samples: Sequence[int],
                  population_samples: int | None = None, scales: Sequence[float] | None = None) -> None:
        """Fold one round's received updates (weights ``n_samples``) into the global state.

        ``population_samples`` (the total over all devices, participating or
        not): each received update gets weight ``n_k / population`` and the
        previous global state keeps the rest, ``1 - sum_k n_k / population``
        per layer, so a round that reaches few devices moves the model only by
        their share (a layer without state: the zero update for ``stack-svd``,
        renormalised weights for the factor-averaging methods). None: the
        received updates replace the state (weights ``n_k / sum n``).
        ``scales`` (needs ``population_samples``): clipping factors ``c_k`` in
        (0, 1], the previous state takes ``(1 - c_k)`` of update k's weight.
        All-or-nothing: a malformed update raises ValueError and changes nothing.
        """
        if len(updates) != len(n_samples):
            raise ValueError(f"{len(updates)} updates but {len(n_samples)} sample counts")
        if not updates:
            return
        if scales is not None:
            if population_samples is None or len(scales) != len(updates) or not all(
                    0 < c <= 1 for c in scales):
                raise ValueError(f"scales {list(scales)} must be one value in (0, 1] per update, with "
                                 "population_samples")
            if any(c < 1 for c in scales):
                old = self.state()
                updates = [u if c >= 1 else self._shrink(u, c, old) for u, c in zip(updates, scales)]
        sample_weights(n_samples)  # validates the counts
        if population_samples is not None and not population_samples >= sum(n_samples):
            raise ValueError(f"population_samples={population_samples} is below the received {sum(n_samples)}")
        per_layer: dict[str, list[tuple[Factors, float]]] = {}
        for k, (u, n) in enumerate(zip(updates, n_samples)):
            missing = [key for key in self.head if key not in u]
            if missing:
                raise ValueError(f"update {k} lacks {missing}")
            for key in u:
                if key.endswith(".lora_A"):
                    layer = key[: -len(".lora_A")]
                    if f"{layer}.lora_B" not in u:
                        raise ValueError(f"update {k}: {key} without {layer}.lora_B")
                    per_layer.setdefault(layer, []).append(((np.asarray(u[f"{layer}.lora_B"]), np.asarray(u[key])), n))
                elif not ((key.endswith(".lora_B") and f"{key[:-7]}.lora_A" in u) or key in self.head):
                    raise ValueError(f"update {k}: unexpected key {key!r}")
        layers = {layer: self._combine(layer, items, population_samples) for layer, items in per_layer.items()}
        head_w = self._weights(n_samples, population_samples)
        keep_old = population_samples is not None
        if self.method in ROBUST:
            share = float(head_w[:-1].sum()) if keep_old else 1.0
            head = {key: (share * robust_combine([u[key] for u in updates], self.method)
                          + (1 - share) * np.asarray(old, np.float64)).astype(np.float32)
                    for key, old in self.head.items()}
        else:
            head = {key: fedavg([np.asarray(u[key]) for u in updates] + ([old] if keep_old else []), head_w)
                    for key, old in self.head.items()}
        self.layers.update(layers)
        self.head = head

    def _shrink(self, update: Mapping[str, np.ndarray], c: float, old: Mapping[str, np.ndarray]) -> dict:
        """``G + c (U - G)``: in product space (factors ``[c B_U | (1-c) B_G]``, ``[A_U; A_G]``, exact) for
        the product-space rules, in factor space for the factor-averaging ones; the head likewise."""
        out = {}
        for key, v in update.items():
            if key.endswith(".lora_A"):
                layer = key[: -len(".lora_A")]
                B, A = np.asarray(update[f"{layer}.lora_B"], np.float64), np.asarray(v, np.float64)
                g = self.layers.get(layer)
                if g is None:
                    B2, A2 = c * B, A
                elif self.method in PRODUCT_SPACE:
                    B2 = np.concatenate([c * B, (1 - c) * np.asarray(g[0], np.float64)], axis=1)
                    A2 = np.concatenate([A, np.asarray(g[1], np.float64)], axis=0)
                else:
                    gb, ga = _pad(np.asarray(g[0], np.float64), np.asarray(g[1], np.float64), B.shape[1], self._rng)
                    B2, A2 = c * B + (1 - c) * gb, c * A + (1 - c) * ga
                out[f"{layer}.lora_B"], out[key] = B2, A2
            elif key.startswith("head."):
                out[key] = (c * np.asarray(v, np.float64) + (1 - c) * np.asarray(old[key], np.float64)).astype(np.float32)
        return out

    @staticmethod
    def _weights(counts: Sequence[float], population: int | None) -> np.ndarray:
        """Received weights, plus the previous state's remainder last when ``population`` is given."""
        if population is None:
            return sample_weights(counts)
        w = np.asarray(counts, dtype=np.float64) / population
        return np.append(w, max(0.0, 1.0 - w.sum()))

    def _combine(self, layer: str, items: list[tuple[Factors, float]], population: int | None) -> Factors:
        factors = [f for f, _ in items]
        w = self._weights([n for _, n in items], population)
        if population is not None:
            old = self.layers.get(layer)
            if old is not None:
                factors.append((np.asarray(old[0]), np.asarray(old[1])))
            elif self.method == "stack-svd":  # no previous state: its share is the zero update
                w = w[:-1]
            else:  # factor averaging has no zero update (A = 0 would freeze the layer): renormalise
                w = sample_weights([n for _, n in items])
        if self.method == "stack-svd":
            u_, s, vt = product_svd(*stack_lora(factors, w))
            return u_ * s, vt  # exact, rank <= min(out, in)
        if self.method in ROBUST:
            k = len(items)
            m = robust_combine([np.asarray(b, np.float64) @ np.asarray(a, np.float64) for b, a in factors[:k]],
                               self.method)
            if population is not None:  # the received devices' share; the previous state (or zero) the rest
                share = min(1.0, sum(n for _, n in items) / population)
                m = share * m
                old = self.layers.get(layer)
                if old is not None:
                    m = m + (1 - share) * (np.asarray(old[0], np.float64) @ np.asarray(old[1], np.float64))
            u_, s, vt = product_svd(m, np.eye(m.shape[1]))
            return u_ * s, vt
        if self.method == "zero-pad":
            return zero_pad_average(factors, w)
        return fedavg([b for b, _ in factors], w), fedavg([a for _, a in factors], w)

    def state(self) -> dict[str, np.ndarray]:
        """The whole global model as an update of any rank (for ``AdapterTask.predict_merged``)."""
        out = {k: v.copy() for k, v in self.head.items()}
        for layer, (B, A) in self.layers.items():
            out[f"{layer}.lora_A"] = np.ascontiguousarray(A, np.float32)
            out[f"{layer}.lora_B"] = np.ascontiguousarray(B, np.float32)
        return out

    def for_module(self, layer_shapes: Mapping[str, tuple[int, int]],
                   ranks: Mapping[str, int]) -> dict[str, np.ndarray]:
        """Starting factors and head for a device's module (``AdapterTask.set_adapter`` format).

        ``layer_shapes``: layer -> (out, in); ``ranks``: layer -> r (both from
        the task). ``stack-svd`` redistributes by truncated SVD; ``zero-pad``
        and ``fedavg`` take the first r components. Layers without global
        state start fresh (B = 0, A random), as do missing components.
        """
        out = {k: v.copy() for k, v in self.head.items()}
        for layer, (rows, cols) in layer_shapes.items():
            r = ranks[layer]
            if layer not in self.layers:
                B, A = _pad(np.zeros((rows, 0)), np.zeros((0, cols)), r, self._rng)
            elif self.method in PRODUCT_SPACE:
                B, A = svd_redistribute(*self.layers[layer], r, self._rng)
            else:
                B, A = _pad(*(np.asarray(x, np.float64) for x in self.layers[layer]), r, self._rng)
            if B.shape != (rows, r) or A.shape != (r, cols):
                raise ValueError(f"{layer}: global factors {B.shape}/{A.shape} do not fit ({rows}, {cols}) at rank {r}")
            out[f"{layer}.lora_A"] = np.ascontiguousarray(A, np.float32)
            out[f"{layer}.lora_B"] = np.ascontiguousarray(B, np.float32)
        return out
