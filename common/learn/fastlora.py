"""A hand-written LoRA trainer for the RX's MLP: the fast path of :class:`LoraAlignment`.

Same model as :mod:`common.learn.lora` (a :class:`LoraState`: ``W* = W + scaling B A``
on every adapted Linear layer, optional bias deltas), trained with Adam on
cross-entropy with the batches and schedule of :func:`common.learn.train.fit`
(``drop_last``), but:

- the first layer is folded into the codec's features (``W x_hat = (W M^T) z + W c``),
  so it costs ``alpha`` instead of ``d_raw`` per input;
- frozen work is done once, not per step: with the first layer adapted, its
  frozen pre-activation ``z (W M^T)^T + W c + b`` is computed once for all
  vectors; when the first ``k`` layers are frozen, their output (the first
  adapted layer's input) is;
- forward and backward are written out by hand over one flat parameter buffer
  (a few dozen tensor calls per step instead of autograd's graph), and Adam
  updates that buffer in place.

Shapes: ``z`` float32 (n, alpha); ``m`` float32 (alpha, d_raw) and ``c``
(d_raw,) with ``x_hat = z m + c``; weights ``W_l`` (out, in), biases ``b_l`` (out,).
"""

from __future__ import annotations

import time
import torch

from common.learn.lora import LoraState
from common.learn.train import lr_at


def train(weights: list[torch.Tensor], biases: list[torch.Tensor], z: torch.Tensor, y: torch.Tensor,
          m: torch.Tensor, c: torch.Tensor, state: LoraState, *, steps: int, lr: float, batch: int,
          schedule: str = "cosine", gen: torch.Generator | None = None,
          budget_s: float | None = None, betas=(0.9, 0.999), eps: float = 1e-8) -> tuple[int, float]:
    """Adam on the adapters in ``state`` (updated in place); returns (steps run, last loss).

    ``batch`` 0 = full batch. ``schedule``: "cosine" (lr to 0 over the run) or
    "constant". ``budget_s``: wall-clock cap counted from the call; no step
    starts after it. The cosine follows ``max(step / steps, elapsed / budget_s)``,
    so a run cut short by the budget still ends annealed ("anytime" schedule).
    """
    t_start = time.perf_counter()
    n_layers = len(weights)
    layers = state.layers
    if not layers or list(layers) != list(range(layers[0], n_layers)):
        raise ValueError(f"adapted layers {layers} must be a non-empty suffix of 0..{n_layers - 1}")
    first = layers[0]
    s = state.scaling
    gen = gen or torch.Generator().manual_seed(0)
    n = len(z)
    # frozen input of the first adapted layer, and (first == 0) its frozen pre-activation
    with torch.no_grad():
        if first == 0:
            w_fold = weights[0] @ m.t()                      # (out0, alpha)
            b_fold = weights[0] @ c + biases[0]
            # the frozen pre-activation: cached for all vectors when alpha is large (a GEMM per
            # step would cost more than the gather), else computed per batch (no n x out0 buffer)
            base0 = torch.addmm(b_fold, z, w_fold.t()) if z.shape[1] > 64 else None
            x_in = z
        else:
            h = torch.addmm(weights[0] @ c + biases[0], z, (weights[0] @ m.t()).t()).clamp_(min=0)
            for l in range(1, first):
                h = torch.addmm(biases[l], h, weights[l].t()).clamp_(min=0)
            x_in, base0 = h, torch.addmm(biases[first], h, weights[first].t())
        onehot = torch.zeros(n, weights[-1].shape[0]).scatter_(1, y.view(-1, 1).long(), 1.0)
    params = [*state.A, *state.B, *(state.d or [])]
    sizes = [p.numel() for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])
    grad = torch.zeros_like(flat)
    views, gviews, o = [], [], 0
    for p, k in zip(params, sizes):
        views.append(flat[o:o + k].view(p.shape))
        gviews.append(grad[o:o + k].view(p.shape))
        o += k
    k_ad = len(layers)
    A, B = views[:k_ad], views[k_ad:2 * k_ad]
    gA, gB = gviews[:k_ad], gviews[k_ad:2 * k_ad]
    D, gD = (views[2 * k_ad:], gviews[2 * k_ad:]) if state.d is not None else (None, None)
    exp_avg, exp_sq = torch.zeros_like(flat), torch.zeros_like(flat)
    b = n if batch <= 0 or batch >= n else batch
    cursor = n
    loss_value = float("nan")
    done = 0
    for step in range(1, steps + 1):
        elapsed = time.perf_counter() - t_start
        if budget_s is not None and elapsed >= budget_s:
            break
        if b == n:
            xb, pb, yb = x_in, base0, onehot
        else:
            if cursor + b > n:
                # one gather per epoch into contiguous buffers; batches are then views
                order = torch.randperm(n, generator=gen)
                xs, ys = x_in[order], onehot[order]
                ps = None if base0 is None else base0[order]
                cursor = 0
            xb, yb = xs[cursor:cursor + b], ys[cursor:cursor + b]
            pb = None if ps is None else ps[cursor:cursor + b]
            cursor += b
        if pb is None:
            pb = torch.addmm(b_fold, xb, w_fold.t())
        # ---- forward
        if first == 0:
            a_eff = A[0] @ m.t()                              # (r, alpha)
            u = torch.addmm(A[0] @ c, xb, a_eff.t())          # (b, r)
        else:
            u = xb @ A[0].t()
        inputs, lows = [xb], [u]
        p = torch.addmm(pb, u, B[0].t(), alpha=s)
        if D is not None:
            p += D[0]
        for i in range(1, k_ad):
            l = layers[i]
            h = p.clamp_(min=0)
            inputs.append(h)
            v = h @ A[i].t()
            lows.append(v)
            p = torch.addmm(biases[l], h, weights[l].t())
            p.addmm_(v, B[i].t(), alpha=s)
            if D is not None:
                p += D[i]
        logp = torch.log_softmax(p, 1)
        loss_value = float(-(logp * yb).sum() / len(yb))
        g = logp.exp_().sub_(yb).div_(len(yb))               # dL/dlogits
        # ---- backward
        for i in range(k_ad - 1, -1, -1):
            l = layers[i]
            torch.mm(g.t(), lows[i], out=gB[i]).mul_(s)
            gv = (g @ B[i]).mul_(s)                             # (b, r)
            if D is not None:
                torch.sum(g, 0, out=gD[i])
            if i == 0:
                if first == 0:
                    g_eff = gv.t() @ xb                          # (r, alpha)
                    torch.addmm(torch.outer(gv.sum(0), c), g_eff, m, out=gA[0])
                else:
                    torch.mm(gv.t(), xb, out=gA[0])
                break
            h = inputs[i]
            torch.mm(gv.t(), h, out=gA[i])
            g = torch.ops.aten.threshold_backward(torch.addmm(g @ weights[l], gv, A[i]), h, 0.0)
        # ---- Adam (torch's formula)
        lr_k = lr_at(lr, schedule, step, steps, elapsed, budget_s)
        exp_avg.lerp_(grad, 1 - betas[0])
        exp_sq.mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
        denom = (exp_sq / (1 - betas[1] ** step)).sqrt_().add_(eps)
        flat.addcdiv_(exp_avg, denom, value=-lr_k / (1 - betas[0] ** step))
        done = step
    o = 0
    for p, k in zip(params, sizes):
        p.copy_(flat[o:o + k].view(p.shape))
        o += k
    return done, loss_value


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks instead of returning them to the kernel (process-wide).

    Each training step allocates and frees blocks of a few hundred kB; by
    default glibc serves those with fresh ``mmap`` pages, and the page faults
    cost more than the arithmetic. Returns False where this is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 31 - 1))
    except (OSError, AttributeError):
        return False
