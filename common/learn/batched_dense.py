""":func:`common.learn.fastlora.train_dense` for K sessions at once: K independent trainings of the same
frozen MLP in one loop, each step one set of batched products (``torch.bmm`` over the members' stacked
trained layers; one GEMM over all K batches through the shared frozen layers) and one Adam call.

Each member gets exactly what its own :func:`~common.learn.fastlora.train_dense` call would: its own
batches (its own generator, the same ``drop_last`` epochs and one gather per epoch), the same schedule
and Adam arithmetic (element-wise, so the same to the bit); only the products run through other
kernels (bmm, and GEMMs over K * batch rows), so the weights agree to float32 rounding, not to the bit
(``tests/test_batched_dense.py``).

What it saves is per-call overhead (one set of calls for K members instead of K sets), so it pays only
where a step is overhead-bound. The pca-lora RX's step is not, on the 2-core EPYC it was measured on:
8 sessions batched took about 8 times one session's training (docs/benchmarks.md, "Batched
adaptation"; ``python -m semalign.campaigns.pca_lora.batch_bench``), so the RX does not use it.

Shapes and dtypes as :func:`~common.learn.fastlora.train_dense`: per member ``ws[l]`` float32
(out, in), ``bs[l]`` float32 (out,), ``x`` float32 (n, in) (the first layer folded: ``in`` = alpha),
``y`` (n,) integer class ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from common.learn.fastlora import _flat_buffers
from common.learn.train import lr_at


def train_dense_batched(members: list[tuple[list[torch.Tensor], list[torch.Tensor]]], xs: list[torch.Tensor],
                        ys: list[torch.Tensor], gens: list[torch.Generator], *, trained: int, steps: int,
                        lr: float, batch: int, schedule: str = "cosine", cap_s: float | None = None,
                        frozen_dtype: torch.dtype = torch.float32, betas=(0.9, 0.999), eps: float = 1e-8,
                        clock: Callable[[], float] = time.perf_counter) -> tuple[int, list[float], bool]:
    """Adam on the first ``trained`` layers of each member's MLP ``members[k] = (ws, bs)`` (updated in
    place), on its vectors ``xs[k]`` / ``ys[k]`` with batch order from ``gens[k]``; what K calls of
    :func:`~common.learn.fastlora.train_dense` with the same arguments do, in one loop.

    Every member runs ``steps`` steps of the same ``lr`` and ``schedule`` on the same number of vectors
    (a caller with members of other step counts, sizes or rates batches them apart). The frozen layers
    (``l >= trained``) must be equal in every member: member 0's run for all. ``cap_s``: a wall-clock
    cap on the whole batch from the call (no step starts after it; it cuts every member at the same
    step), in seconds of ``clock``. ``frozen_dtype``: the frozen layers' arithmetic (float32, or bfloat16
    as train_dense's). Returns (steps run, each member's mean cross-entropy on the last step's batch,
    whether the cap cut the run).
    """
    k_members = len(members)
    if not k_members or not len(xs) == len(ys) == len(gens) == k_members:
        raise ValueError(f"need one (x, y, generator) per member: {k_members} members, {len(xs)} x, "
                         f"{len(ys)} y, {len(gens)} generators")
    ws0, bs0 = members[0]
    n_layers = len(ws0)
    if not 1 <= trained <= n_layers:
        raise ValueError(f"trained={trained} must be in [1, {n_layers}]")
    n = len(xs[0])
    if any(len(x) != n or len(y) != n for x, y in zip(xs, ys)):
        raise ValueError(f"every member needs the same number of vectors, got {[len(x) for x in xs]}")
    for ws, bs in members[1:]:
        if len(ws) != n_layers or any(ws[l].shape != ws0[l].shape for l in range(n_layers)):
            raise ValueError("every member needs the same MLP shape")
        if any(not (torch.equal(ws[l], ws0[l]) and torch.equal(bs[l], bs0[l])) for l in range(trained, n_layers)):
            raise ValueError(f"the frozen layers {trained}..{n_layers - 1} differ between members")
    t_start = clock()
    low = frozen_dtype != torch.float32
    frozen_w = [None if l < trained else (w.to(frozen_dtype) if low else w) for l, w in enumerate(ws0)]
    frozen_b = [None if l < trained else (b.to(frozen_dtype) if low else b) for l, b in enumerate(bs0)]
    # the trained layers stacked over the members: (K, out, in) and (K, out), views into one flat buffer
    stacked = [torch.stack([m[i][l] for m in members]) for l in range(trained) for i in (0, 1)]
    sizes, flat, grad, views, gviews = _flat_buffers(stacked)
    W, Bv = views[0::2], views[1::2]
    gW, gBv = gviews[0::2], gviews[1::2]
    n_classes = ws0[-1].shape[0]
    onehot = torch.zeros(k_members, n_classes, n)  # (K, classes, n)
    for k, y in enumerate(ys):
        onehot[k].scatter_(0, y.view(1, -1).long(), 1.0)
    x_all = torch.stack(xs)  # (K, n, in)
    exp_avg, exp_sq = torch.zeros_like(flat), torch.zeros_like(flat)
    step_t = torch.zeros(())
    b = n if batch <= 0 or batch >= n else batch
    top_trained = trained == n_layers
    cursor = n
    xs_ep, ys_ep = torch.empty_like(x_all), torch.empty_like(onehot)
    done, cut = 0, False
    xb = yb = None

    def forward(xb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and each layer's input (``inputs[0] = xb``, (K, b, in)). The logits are (K, classes, b)
        when the last layer is trained, else (classes, K * b): one product over every member's batch."""
        inputs, h = [xb], xb
        for l in range(n_layers):
            top = l == n_layers - 1
            if l < trained:
                if top:
                    p = torch.baddbmm(Bv[l].unsqueeze(2), W[l], h.transpose(1, 2))
                else:
                    h = torch.baddbmm(Bv[l].unsqueeze(1), h, W[l].transpose(1, 2)).clamp_(min=0)
                    inputs.append(h)
                continue
            h2 = h.reshape(k_members * b, h.shape[2])
            if low and h2.dtype != frozen_dtype:
                h2 = h2.to(frozen_dtype)
            if top:
                p = torch.addmm(frozen_b[l].unsqueeze(1), frozen_w[l], h2.t())
            else:
                h = torch.addmm(frozen_b[l], h2, frozen_w[l].t()).clamp_(min=0).view(k_members, b, -1)
                inputs.append(h)
        return (p.float() if p.dtype != torch.float32 else p), inputs

    def targets(yb: torch.Tensor) -> torch.Tensor:
        """The one-hot batch (K, classes, b) in the logits' layout."""
        return yb if top_trained else yb.transpose(0, 1).reshape(n_classes, k_members * b)

    def losses(logits: torch.Tensor, yt: torch.Tensor) -> list[float]:
        """Each member's mean cross-entropy on its batch (``logits``, ``yt`` as :func:`targets` lays them)."""
        dim = 1 if top_trained else 0
        per = torch.log_softmax(logits, dim) * yt
        per = per.sum((1, 2)) if top_trained else per.view(n_classes, k_members, b).sum((0, 2))
        return (-per / b).tolist()

    last = [float("nan")] * k_members
    for step in range(1, steps + 1):
        if cap_s is not None and clock() - t_start >= cap_s:
            cut = True
            break
        if b == n:
            xb, yb = x_all, onehot
        else:
            if cursor + b > n:  # each member's own epoch order, one gather per epoch
                for k in range(k_members):
                    order = torch.randperm(n, generator=gens[k])
                    torch.index_select(x_all[k], 0, order, out=xs_ep[k])
                    torch.index_select(onehot[k], 1, order, out=ys_ep[k])
                cursor = 0
            xb, yb = xs_ep[:, cursor:cursor + b], ys_ep[:, :, cursor:cursor + b]
            cursor += b
        logits, inputs = forward(xb)
        yt = targets(yb)
        if step == steps:
            last = losses(logits, yt)
        g = torch.softmax(logits, 1 if top_trained else 0).sub_(yt).div_(b)  # dL/dlogits
        # ---- backward
        for l in range(n_layers - 1, -1, -1):
            top = l == n_layers - 1
            if l < trained:  # g: (K, classes, b) at the top, else (K, b, out)
                if top:
                    torch.bmm(g, inputs[l], out=gW[l])
                    torch.sum(g, 2, out=gBv[l])
                else:
                    torch.bmm(g.transpose(1, 2), inputs[l], out=gW[l])
                    torch.sum(g, 1, out=gBv[l])
                if l == 0:
                    break
                gin = torch.bmm(g.transpose(1, 2), W[l]) if top else torch.bmm(g, W[l])
            else:  # g: (classes, K b) at the top, else (K, b, out)
                gl = g if top else g.reshape(k_members * b, g.shape[2])
                if low and gl.dtype != frozen_dtype:
                    gl = gl.to(frozen_dtype)
                gin = (torch.mm(gl.t(), frozen_w[l]) if top else gl @ frozen_w[l]).view(k_members, b, -1)
            h = inputs[l]
            if gin.dtype != h.dtype:
                gin = gin.to(h.dtype)
            g = torch.ops.aten.threshold_backward(gin, h, 0.0)
        # ---- Adam: train_dense's fused kernel over every member's parameters at once
        step_t += 1
        torch._fused_adam_([flat], [grad], [exp_avg], [exp_sq], [], [step_t],
                           lr=lr_at(lr, schedule, step, steps), beta1=betas[0], beta2=betas[1],
                           weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
        done = step
    if cut and done:  # the loss of the last batch, after its update
        with torch.no_grad():
            last = losses(forward(xb)[0], targets(yb))
    o = 0
    for j, size in enumerate(sizes):
        l, i = divmod(j, 2)
        block = flat[o:o + size].view(stacked[j].shape)
        for k, m in enumerate(members):
            m[i][l].copy_(block[k])
        o += size
    return done, last, cut
