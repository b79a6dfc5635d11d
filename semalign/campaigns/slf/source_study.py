"""Fig. 3's source study of ``semalign slf-sweep``: images of two sources mixed by a data dissimilarity
``delta`` (:func:`mixture`), a 20-class head trained on both, and SLF cases per ``delta``
(:func:`source_study`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from common.data.datasets import Dataset
from common.modes.slf.configs import TransceiverConfig
from common.modes.slf.training import pretrain_head
from semalign.campaigns.slf.sweep_case import CaseRunner, Side, as_tensor, with_baseline
from semalign.campaigns.slf.sweep_config import SlfSweepConfig


@dataclass(frozen=True)
class SourceData:
    """Images for the source study, labels of both sources in one 20-class space (own + 10 for the RX's)."""

    own_train: np.ndarray
    own_test: np.ndarray
    own_y_train: np.ndarray
    own_y_test: np.ndarray
    rx_train: np.ndarray
    rx_test: np.ndarray
    rx_y_train: np.ndarray
    rx_y_test: np.ndarray
    head_x: np.ndarray
    head_y: np.ndarray
    n_classes: int


def source_data(tx_cfg: TransceiverConfig, own: Dataset, rx_cfg: TransceiverConfig, other: Dataset) -> SourceData:
    """The TX's own images (its split), the RX source's images the RX never trained on, and the head's set.

    RX-source images for the TX: the training images outside the RX's pool
    (fine-tuning) and the official test set (evaluation). The head trains on
    the RX's own train split plus as many images of the TX's source from
    outside the TX's pool (so none of the TX's images), labels of the RX's
    source shifted by ``own.n_classes``.
    """
    split_own = tx_cfg.split(own)
    split_rx = rx_cfg.split(other)
    rx_pool = set(rx_cfg.pool_indices(len(other.y_train)).tolist())
    outside_rx = np.array([i for i in range(len(other.y_train)) if i not in rx_pool], dtype=np.int64)
    tx_pool = set(tx_cfg.pool_indices(len(own.y_train)).tolist())
    outside_tx = np.array([i for i in range(len(own.y_train)) if i not in tx_pool], dtype=np.int64)
    k = min(len(split_rx.y_train), len(outside_tx))
    if k == 0 or len(outside_rx) == 0:
        raise ValueError(f"the source study needs images of {other.name} outside {rx_cfg.name}'s pool and of "
                         f"{own.name} outside {tx_cfg.name}'s pool; give them smaller --max-pool at pre-training")
    pick = np.random.default_rng(11).choice(outside_tx, k, replace=False)
    shift = own.n_classes
    head_x = np.concatenate([split_rx.x_train, own.x_train[pick]])
    head_y = np.concatenate([split_rx.y_train.astype(np.int64) + shift, own.y_train[pick].astype(np.int64)])
    return SourceData(split_own.x_train, split_own.x_test, split_own.y_train.astype(np.int64),
                      split_own.y_test.astype(np.int64), other.x_train[outside_rx], other.x_test,
                      other.y_train[outside_rx].astype(np.int64) + shift, other.y_test.astype(np.int64) + shift,
                      head_x, head_y, own.n_classes + other.n_classes)


def mixture(own_x, own_y, rx_x, rx_y, n: int, delta: float, seed) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images: ``round(delta * n)`` of the TX's own source, the rest of the RX's, shuffled (seeded)."""
    k = round(delta * n)
    if k > len(own_x) or n - k > len(rx_x):
        raise ValueError(f"dissimilarity {delta}: need {k} own and {n - k} RX-source images, have "
                         f"{len(own_x)} and {len(rx_x)}")
    rng = np.random.default_rng(seed)
    a, b = rng.choice(len(own_x), k, replace=False), rng.choice(len(rx_x), n - k, replace=False)
    x = np.concatenate([own_x[a], rx_x[b]])
    y = np.concatenate([own_y[a], rx_y[b]])
    order = rng.permutation(n)
    return x[order], y[order]


def source_study(cfg: SlfSweepConfig, run: CaseRunner, tx: Side, src: Side, own: Dataset, other: Dataset,
                 n_ft: int, n_ev: int, advance) -> tuple[list, dict]:
    """Fig. 3's source rows (``n_ft`` fine-tuning and ``n_ev`` test images per ``delta``) and the models of
    the grid's ``delta``, keyed ``("source", l)``; ``advance`` moves the progress bar."""
    dev = cfg.device
    data = source_data(tx.config, own, src.config, other)
    head_cfg = dataclasses.replace(src.config, shape=dataclasses.replace(src.config.shape, n_classes=data.n_classes),
                                   head_epochs=cfg.head_epochs, head_on="clean", head_shift=0,
                                   head_schedule=src.config.schedule)  # the 20-class head: on clean images, as before
    head, rep = pretrain_head(torch.from_numpy(data.head_x), torch.from_numpy(data.head_y), head_cfg,
                              lambda e, loss: advance(1, f"20-class head: epoch {e}, loss {loss:.4f}"))
    head = head.to(dev).eval()
    rows, models = [], {}
    side = Side(src.model, src.cpu, head, src.config, src.path)
    for delta in cfg.dissimilarities:
        xf, _ = mixture(data.own_train, data.own_y_train, data.rx_train, data.rx_y_train, n_ft, delta,
                        [cfg.seed, 3])
        xe, ye = mixture(data.own_test, data.own_y_test, data.rx_test, data.rx_y_test, n_ev, delta, [cfg.seed, 4])
        x_ft, x_ev, y_ev = as_tensor(xf, dev), as_tensor(xe, dev), as_tensor(ye, dev)
        b = run.evaluate(tx.model, src.model, head, x_ev, y_ev, cfg.source_eps)
        ref = run.evaluate(src.model, src.model, head, x_ev, y_ev, cfg.source_eps)
        rows.append({"dissimilarity": delta, "case": "misaligned", "n_frozen": None, **b})
        rows.append({"dissimilarity": delta, "case": "RX's own transceiver", "n_frozen": None, **ref})
        for l in cfg.fig3_layers:
            row, m = run.case(tx, side, head, x_ft, x_ev, y_ev, l, cfg.source_eps, cfg.fig3_epochs, "float32",
                              f"Fig. 3 delta={delta:g} l={l}")
            rows.append({"dissimilarity": delta, "case": f"SLF l={l}", **with_baseline(row, b)})
            if delta == cfg.grid_dissimilarity:
                models[("source", l)] = {**m, "x": x_ev, "rx_orig": src.model}
    for r in rows:
        r["head_classes"] = data.n_classes
        r["head_train_s"] = rep.seconds
    return rows, models
