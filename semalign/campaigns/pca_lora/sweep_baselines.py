"""``semalign sweep``'s baselines on the same vectors: Adam on all weights or the last layer
(:func:`finetune`), and the MLP trained from scratch on the whole reconstructed training set
(:func:`train_end_to_end`, cached per settings by :func:`cached_end_to_end`)."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.artifacts import load_tensors
from common.data.datasets import Dataset
from common.files import atomic_write
from common.learn.models import accuracy, build_mlp, predict
from common.learn.train import TrainConfig, fit
from common.wire.values import value_format
from semalign.campaigns.pca_lora.sweep_config import E2EConfig

log = logging.getLogger("semalign.sweep")


def finetune(model: nn.Sequential, x: np.ndarray, y: np.ndarray, which: str, steps: int, seed: int
             ) -> tuple[nn.Sequential, float, int]:
    """Adam on all weights (``full``) or the last Linear layer (``last``) of a copy; (model, ms, steps)."""
    t0 = time.perf_counter()
    net = copy.deepcopy(model)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    trainable = linears if which == "full" else linears[-1:]
    for p in net.parameters():
        p.requires_grad_(False)
    params = [p for m in trainable for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    lr = 1e-3 if which == "full" else 1e-2
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(np.asarray(y, np.int64))
    report = fit(params, lambda xb, yb: nn.functional.cross_entropy(net(xb), yb), (xt, yt),
                 TrainConfig(epochs=0, steps=steps, batch_size=256, lr=lr, seed=seed, drop_last=True)) if steps else None
    done = report.steps if report else 0
    for p in params:
        p.requires_grad_(False)
    return net.eval(), (time.perf_counter() - t0) * 1e3, done


def train_end_to_end(x: np.ndarray, y: np.ndarray, n_classes: int, hidden: tuple[int, ...], cfg: E2EConfig,
                     seed: int) -> tuple[nn.Sequential, dict]:
    """A fresh MLP on ``x`` (n, d) to convergence: early stopping on a validation split."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(x), generator=gen)
        n_val = max(1, int(len(x) * cfg.val_fraction))
        val, tr = perm[:n_val], perm[n_val:]
        xt, yt = torch.as_tensor(x), torch.as_tensor(y.astype(np.int64))
        net = build_mlp(x.shape[1], hidden, n_classes)
        state = {"best": -1.0, "weights": None, "bad": 0, "epochs": 0, "best_epoch": 0}

        def validate(epoch: int, _loss: float) -> bool:
            """Early stopping: keep the best weights; stop after ``patience`` epochs without gain."""
            net.eval()
            acc = accuracy(predict(net, xt[val]), y[val.numpy()])
            net.train()
            state["epochs"] = epoch
            if acc > state["best"]:
                state.update(best=acc, bad=0, best_epoch=epoch,
                             weights={k: v.detach().clone() for k, v in net.state_dict().items()})
            else:
                state["bad"] += 1
            return state["bad"] < cfg.patience

        net.train()
        fit(list(net.parameters()), lambda xb, yb: nn.functional.cross_entropy(net(xb), yb),
            (xt[tr], yt[tr]), TrainConfig(epochs=cfg.max_epochs, batch_size=cfg.batch, lr=cfg.lr, seed=seed),
            on_epoch=validate, generator=gen)
        best, best_state, epochs, best_epoch = state["best"], state["weights"], state["epochs"], state["best_epoch"]
        net.load_state_dict(best_state)
        net.eval()
        info = {"train_ms": (time.perf_counter() - t0) * 1e3, "epochs": epochs, "best_epoch": best_epoch,
                "val_accuracy": best, "threads": cfg.threads}
        return net, info
    finally:
        torch.set_num_threads(threads)


def cached_end_to_end(cache_dir: Path, tag: str, x: np.ndarray, y: np.ndarray, n_classes: int,
                      hidden: tuple[int, ...], cfg: E2EConfig, seed: int) -> tuple[nn.Sequential, dict]:
    """:func:`train_end_to_end`, or its cached result (plain tensors + a JSON with the training time)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    pt, meta = cache_dir / f"{tag}.pt", cache_dir / f"{tag}.json"
    if pt.exists() and meta.exists():
        try:
            info = json.loads(meta.read_text())
            if info.get("sha256") == hashlib.sha256(pt.read_bytes()).hexdigest():
                net = build_mlp(x.shape[1], hidden, n_classes)
                net.load_state_dict(load_tensors(pt))  # ArtifactError (a RuntimeError) when damaged
                return net.eval(), {**info, "cached": True}
            log.warning("E2E cache %s: checksum mismatch; retraining", pt)
        except (ValueError, RuntimeError, OSError) as e:
            log.warning("E2E cache %s unreadable (%s); retraining", pt, e)
    net, info = train_end_to_end(x, y, n_classes, hidden, cfg, seed)
    atomic_write(pt, lambda f: torch.save(net.state_dict(), f), fsync=False)  # a cache
    info["sha256"] = hashlib.sha256(pt.read_bytes()).hexdigest()
    meta.write_text(json.dumps(info))
    return net, {**info, "cached": False}


def quantized_train(codec, data: Dataset, alpha: int, value_dtype: str) -> np.ndarray:
    """The whole training set reconstructed from ``value_dtype`` alpha-dim features (E2E input)."""
    fmt = value_format(value_dtype)
    z = codec.encode(data.x_train, alpha)
    values, scales = fmt.quantize(z)
    return codec.decode(fmt.dequantize(values, scales, len(z), alpha))
