"""Hand-written trainers for the RX's MLP: the fast paths of :class:`LoraAlignment`'s recipes.

:func:`train` is the LoRA recipe's; :func:`train_dense` trains full weights
(the first-layer and staged recipes) the same way.

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
from collections.abc import Callable

import torch

from common.cpu import BF16_FLAGS, cpu_flags
from common.learn.lora import LoraState
from common.learn.train import lr_at


class Resume:
    """A training run done in several calls (a round's training parts): Adam's moments and the schedule
    continue from call to call. ``total``: the run's steps (the schedule's length); ``done``: steps run by
    the earlier calls (updated by each call)."""

    def __init__(self, total: int):
        self.total, self.done = int(total), 0
        self._moments: tuple[torch.Tensor, torch.Tensor] | None = None

    def moments(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adam's (exp_avg, exp_sq) for the flat parameter buffer ``flat`` (zeros on the first call);
        the trainer updates them in place."""
        if self._moments is None or self._moments[0].shape != flat.shape:
            self._moments = (torch.zeros_like(flat), torch.zeros_like(flat))
        return self._moments


def train(weights: list[torch.Tensor], biases: list[torch.Tensor], z: torch.Tensor, y: torch.Tensor,
          m: torch.Tensor, c: torch.Tensor, state: LoraState, *, steps: int, lr: float, batch: int,
          schedule: str = "cosine", gen: torch.Generator | None = None,
          budget_s: float | None = None, cap_s: float | None = None, betas=(0.9, 0.999),
          eps: float = 1e-8, resume: "Resume | None" = None,
          clock: Callable[[], float] = time.perf_counter) -> tuple[int, float]:
    """Adam on the adapters in ``state`` (updated in place); returns (steps run, last loss).

    ``batch`` 0 = full batch. ``schedule``: "cosine" (lr to 0 over the run) or
    "constant". ``budget_s``: wall-clock cap counted from the call; no step
    starts after it. The cosine follows ``max(step / steps, elapsed / budget_s)``,
    so a run cut short by the budget still ends annealed ("anytime" schedule).
    ``cap_s``: a wall-clock safety cap that stops the run without touching the
    schedule (which then follows the step count only, so the result does not
    depend on the clock unless the cap cuts the run). ``resume``: this call is
    a stretch of a longer run (:class:`Resume`: Adam's moments and the schedule
    continue across calls; ``budget_s`` is then ignored). ``clock``: seconds,
    what ``budget_s`` and ``cap_s`` are measured with (a test passes a fake one).
    """
    t_start = clock()
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
    sizes, flat, grad, views, gviews = _flat_buffers(params)
    k_ad = len(layers)
    A, B = views[:k_ad], views[k_ad:2 * k_ad]
    gA, gB = gviews[:k_ad], gviews[k_ad:2 * k_ad]
    D, gD = (views[2 * k_ad:], gviews[2 * k_ad:]) if state.d is not None else (None, None)
    exp_avg, exp_sq = resume.moments(flat) if resume else (torch.zeros_like(flat), torch.zeros_like(flat))
    offset, total = (resume.done, resume.total) if resume else (0, steps)
    if resume:
        budget_s = None
    b = n if batch <= 0 or batch >= n else batch
    cursor = n
    loss_value = float("nan")
    done = 0
    for step in range(1, steps + 1):
        elapsed = clock() - t_start
        if (budget_s is not None and elapsed >= budget_s) or (cap_s is not None and elapsed >= cap_s):
            break
        if b == n:
            xb, pb, yb = x_in, base0, onehot
        else:
            if cursor + b > n:
                # one gather per epoch into contiguous buffers; batches are then views (index_select:
                # the same values as x[order], 4-7x faster on these shapes)
                order = torch.randperm(n, generator=gen)
                xs, ys = x_in.index_select(0, order), onehot.index_select(0, order)
                ps = None if base0 is None else base0.index_select(0, order)
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
        t = offset + step
        lr_k = lr_at(lr, schedule, t, total, elapsed, budget_s)
        exp_avg.lerp_(grad, 1 - betas[0])
        exp_sq.mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
        denom = (exp_sq / (1 - betas[1] ** t)).sqrt_().add_(eps)
        flat.addcdiv_(exp_avg, denom, value=-lr_k / (1 - betas[0] ** t))
        done = step
    if resume:
        resume.done += done
    o = 0
    for p, k in zip(params, sizes):
        p.copy_(flat[o:o + k].view(p.shape))
        o += k
    return done, loss_value


def _flat_buffers(params: list[torch.Tensor]):
    """One flat parameter buffer and one gradient buffer, with per-parameter views into both.

    Returns ``(sizes, flat, grad, views, gviews)``; Adam then updates ``flat`` in place.
    """
    sizes = [p.numel() for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])
    grad = torch.zeros_like(flat)
    views, gviews, o = [], [], 0
    for p, k in zip(params, sizes):
        views.append(flat[o:o + k].view(p.shape))
        gviews.append(grad[o:o + k].view(p.shape))
        o += k
    return sizes, flat, grad, views, gviews


# ---------------------------------------------------------------- dense (full-rank) recipes


def train_dense(ws: list[torch.Tensor], bs: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
                trained: int, steps: int, lr: float, batch: int, schedule: str = "cosine",
                gen: torch.Generator | None = None, cap_s: float | None = None,
                frozen_dtype: torch.dtype = torch.float32, betas=(0.9, 0.999),
                eps: float = 1e-8, resume: "Resume | None" = None,
                clock: Callable[[], float] = time.perf_counter) -> tuple[int, float, bool]:
    """Adam on the full weights and biases of the first ``trained`` Linear layers of an MLP (in place).

    ``ws[l]`` (out, in) and ``bs[l]`` (out,) are the MLP's layers with the
    first one already folded into the codec (``ws[0] = W_0 M^T``, ``bs[0] = W_0 c
    + b_0``, so ``x`` is ``z``; or unfolded, ``x`` is ``x_hat``); ReLU between
    layers, logits out. The layers from ``trained`` on stay frozen and run in
    ``frozen_dtype`` (forward and their input gradients; bfloat16 where the recipe's
    step runs faster in it, see ``LoraAlignment.precision_choice``). ``trained = 1`` is the
    first-layer recipe, ``trained = len(ws)`` trains every layer.

    Batches as :func:`train` (``drop_last`` epochs, one gather per epoch);
    "cosine" anneals by step count only, so the result does not depend on the
    clock; Adam is torch's fused kernel (one call per step). ``cap_s``:
    wall-clock safety cap from the call; no step starts after it. ``resume``:
    this call is a stretch of a longer run (:class:`Resume`). ``clock``: seconds,
    what ``cap_s`` is measured with. Returns (steps run, loss of the last
    step's batch, whether the cap cut the run).
    """
    t_start = clock()
    n_layers = len(ws)
    if not 1 <= trained <= n_layers:
        raise ValueError(f"trained={trained} must be in [1, {n_layers}]")
    gen = gen or torch.Generator().manual_seed(0)
    n = len(x)
    low = frozen_dtype != torch.float32
    frozen_w = [None if l < trained else (w.to(frozen_dtype) if low else w) for l, w in enumerate(ws)]
    frozen_b = [None if l < trained else (b.to(frozen_dtype) if low else b) for l, b in enumerate(bs)]
    params = [t for l in range(trained) for t in (ws[l], bs[l])]
    sizes, flat, grad, views, gviews = _flat_buffers(params)
    W, Bv = views[0::2], views[1::2]
    gW, gBv = gviews[0::2], gviews[1::2]
    onehot_t = torch.zeros(ws[-1].shape[0], n).scatter_(0, y.view(1, -1).long(), 1.0)  # (classes, n)
    exp_avg, exp_sq = resume.moments(flat) if resume else (torch.zeros_like(flat), torch.zeros_like(flat))
    offset, total = (resume.done, resume.total) if resume else (0, steps)
    step_t = torch.full((), float(offset))
    b = n if batch <= 0 or batch >= n else batch
    cursor = n
    loss_value = float("nan")
    done, cut = 0, False
    xb = yb = None

    def forward(xb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Transposed logits (classes, batch; float32) and each layer's input (``inputs[0] = xb``).

        The last layer is computed transposed so that the softmax runs along
        the contiguous axis (several times faster for a few classes).
        """
        inputs, h = [xb], xb
        for l in range(n_layers):
            if l < trained:
                w, bias = W[l], Bv[l]
            else:
                w, bias = frozen_w[l], frozen_b[l]
                if low and h.dtype != frozen_dtype:
                    h = h.to(frozen_dtype)
            if l == n_layers - 1:
                p = torch.addmm(bias.unsqueeze(1), w, h.t())
            else:
                h = torch.addmm(bias, h, w.t()).clamp_(min=0)
                inputs.append(h)
        return (p.float() if p.dtype != torch.float32 else p), inputs

    for step in range(1, steps + 1):
        if cap_s is not None and clock() - t_start >= cap_s:
            cut = True
            break
        if b == n:
            xb, yb = x, onehot_t
        else:
            if cursor + b > n:
                order = torch.randperm(n, generator=gen)
                xs, ys = x.index_select(0, order), onehot_t.index_select(1, order)
                cursor = 0
            xb, yb = xs[cursor:cursor + b], ys[:, cursor:cursor + b]
            cursor += b
        logits_t, inputs = forward(xb)
        if step == steps:
            loss_value = float(-(torch.log_softmax(logits_t, 0) * yb).sum() / b)
        g = torch.softmax(logits_t, 0).sub_(yb).div_(b)      # dL/dlogits, transposed (classes, batch)
        # ---- backward
        for l in range(n_layers - 1, -1, -1):
            top = l == n_layers - 1                           # g is transposed at the top layer
            if l < trained:
                torch.mm(g, inputs[l], out=gW[l]) if top else torch.mm(g.t(), inputs[l], out=gW[l])
                torch.sum(g, 1 if top else 0, out=gBv[l])
                if l == 0:
                    break
                gin = torch.mm(g.t(), W[l]) if top else g @ W[l]
            else:
                gl = g.to(frozen_dtype) if low and g.dtype != frozen_dtype else g
                gin = torch.mm(gl.t(), frozen_w[l]) if top else gl @ frozen_w[l]
            h = inputs[l]
            if gin.dtype != h.dtype:
                gin = gin.to(h.dtype)
            g = torch.ops.aten.threshold_backward(gin, h, 0.0)  # float32 again at the trained layers
        # ---- Adam (torch's fused kernel; step count by step only)
        step_t += 1
        torch._fused_adam_([flat], [grad], [exp_avg], [exp_sq], [], [step_t],
                           lr=lr_at(lr, schedule, offset + step, total),
                           beta1=betas[0], beta2=betas[1], weight_decay=0.0, eps=eps, amsgrad=False,
                           maximize=False)
        done = step
    if resume:
        resume.done += done
    if cut and done:  # the loss of the last batch, after its update
        with torch.no_grad():
            loss_value = float(-(torch.log_softmax(forward(xb)[0], 0) * yb).sum() / yb.shape[1])
    o = 0
    for p, k in zip(params, sizes):
        p.copy_(flat[o:o + k].view(p.shape))
        o += k
    return done, loss_value, cut


# one product of a training step: (m, k, n, dtype name) = an (m x k) @ (k x n) GEMM, 2 m k n FLOPs
Gemm = tuple[int, int, int, str]


def dense_step_gemms(dims: list[int], trained: int, batch: int, frozen: str = "fp32") -> list[Gemm]:
    """The products of one :func:`train_dense` step on ``batch`` vectors of an MLP with layer sizes
    ``dims`` (``dims[0]`` = the trained input width, alpha when folded), as the code runs them.

    Per layer ``l`` (in, out): forward ``h @ W^T``; backward the weight gradient (trained layers,
    float32) and the input gradient (every layer but the first). The frozen layers (``l >= trained``)
    run in ``frozen`` ("fp32" or "bf16").
    """
    out = []
    for l, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
        dt = "fp32" if l < trained else frozen
        out.append((batch, i, o, dt))
        if l < trained:
            out.append((o, batch, i, "fp32"))
        if l > 0:
            out.append((batch, o, i, dt))
    return out


def lora_step_gemms(alpha: int, dims: list[int], rank: int, batch: int) -> list[Gemm]:
    """The products of one folded :func:`train` step (every layer adapted, ``first = 0``) on ``batch``
    vectors of an MLP with layer sizes ``dims`` (``dims[0]`` = d_raw), as the code runs them (float32).

    Forward: the folded adapter ``A_0 M^T`` (r x d_raw x alpha) and ``A_0 c``, ``u = z (A_0 M^T)^T``, the
    frozen first-layer product per batch when alpha <= 64 (else cached once), ``u B_0^T``; per later
    layer ``h A^T``, ``h W^T``, ``v B^T``. Backward per layer: ``g^T v`` (B's gradient), ``g B``, then
    A's gradient (first layer: ``gv^T z`` and its product with ``M``) and the input gradient
    ``g W + gv A`` (not below the first layer).
    """
    d_raw, L = dims[0], len(dims) - 1
    out0 = dims[1]
    g: list[Gemm] = [(rank, d_raw, alpha, "fp32"), (rank, d_raw, 1, "fp32"), (batch, alpha, rank, "fp32")]
    if alpha <= 64:
        g.append((batch, alpha, out0, "fp32"))
    g.append((batch, rank, out0, "fp32"))
    for l in range(1, L):
        i, o = dims[l], dims[l + 1]
        g += [(batch, i, rank, "fp32"), (batch, i, o, "fp32"), (batch, rank, o, "fp32")]
    for l in range(L - 1, -1, -1):
        i, o = (alpha if l == 0 else dims[l]), dims[l + 1]
        g += [(o, batch, rank, "fp32"), (batch, o, rank, "fp32")]
        if l == 0:
            g += [(rank, batch, alpha, "fp32"), (rank, alpha, d_raw, "fp32")]
        else:
            g += [(rank, batch, i, "fp32"), (batch, o, i, "fp32"), (batch, rank, i, "fp32")]
    return g


def gemm_flops(gemms: list[Gemm]) -> float:
    """FLOPs of the products ``gemms`` (2 m k n each)."""
    return float(sum(2 * m * k * n for m, k, n, _ in gemms))


def dense_step_flops(dims: list[int], trained: int, batch: int) -> float:
    """FLOPs of one :func:`train_dense` step (:func:`dense_step_gemms`)."""
    return gemm_flops(dense_step_gemms(dims, trained, batch))


def native_bf16() -> bool | None:
    """Whether the CPU has bfloat16 arithmetic (x86 AVX512_BF16 or AMX-BF16, Arm BF16), from
    ``/proc/cpuinfo`` (:func:`common.cpu.cpu_flags`); None where that cannot be read (then only a
    measurement can tell)."""
    flags = cpu_flags()
    return None if flags is None else bool(flags & set(BF16_FLAGS))

