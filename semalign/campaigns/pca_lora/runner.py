"""Pre-training behind ``semalign pretrain`` and the demo; the shared set-up of in-process campaigns."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.modes.pca_lora.artifacts import (
    DEFAULT_D_PRE,
    ArtifactError,
    ArtifactMeta,
    default_artifacts,
    load_codec,
    load_model,
    read_meta,
    save_artifacts,
)
from common.modes.pca_lora.codec import PcaCodec
from common.data.datasets import Dataset, load_dataset
from common.learn import process_tuning
from common.link.channel.emulator import LinkParams, state_from_mcs
from common.link.channel.nr import max_mcs
from common.modes.pca_lora.budget import PayloadLayout, n_train_max
from common.modes.pca_lora.messages import Payload
from common.modes.pca_lora.pretrain import PretrainConfig, pretrain
from common.wire.protocol import decode, encode
from common.wire.values import value_format
from semalign.progress import progress_bar

log = logging.getLogger("semalign")


@dataclass(frozen=True)
class CampaignInputs:
    """What an in-process campaign (sweep, fading, bench) works on."""

    codec: PcaCodec
    meta: ArtifactMeta
    model: nn.Sequential
    data: Dataset


def campaign_inputs(artifacts: Path, dataset: str, out: Path, data_dir: str | None = None) -> CampaignInputs:
    """Load artifacts and data, create ``out``, and set up this process like the RX daemon
    (1 torch thread, freed memory kept) so in-process timings match the daemon's."""
    torch.set_num_threads(1)
    process_tuning.keep_freed_memory()
    out.mkdir(parents=True, exist_ok=True)
    codec, meta = load_codec(artifacts)
    return CampaignInputs(codec, meta, load_model(artifacts, meta), load_dataset(dataset, data_dir))

def run_pretrain(dataset: str, out: Path | None, config: PretrainConfig, data_dir: str | None = None,
                 progress: bool = True):
    """Fit basis + classifier and save them; returns the artifact metadata."""
    data = load_dataset(dataset, data_dir)
    out = out or default_artifacts(dataset, config.d_pre)
    with progress_bar(f"pretrain {dataset} d_pre={config.d_pre}", config.epochs, progress) as advance:
        res = pretrain(data, config, advance)
    meta = save_artifacts(out, res.codec, res.model, dataset=dataset, hidden=config.hidden,
                          n_classes=data.n_classes, test_accuracy=res.test_accuracy,
                          train_seconds=res.train_seconds, seed=config.seed)
    log.info("saved %s: test accuracy %.4f at alpha=d_pre=%d, %.1f s", out, res.test_accuracy,
             config.d_pre, res.train_seconds)
    return meta


def ensure_artifacts(dataset: str, artifacts: Path | None, data_dir: str | None = None,
                     progress: bool = True) -> Path:
    """The artifacts directory, pre-training first when it holds none."""
    path = Path(artifacts) if artifacts else default_artifacts(dataset)
    try:
        read_meta(path)
    except ArtifactError:
        log.info("no artifacts in %s: pre-training now", path)
        run_pretrain(dataset, path, PretrainConfig(d_pre=DEFAULT_D_PRE[dataset]), data_dir, progress)
    return path


# ---------------------------------------------------------------- shared by the in-process campaigns


def reference_rate_bps() -> float:
    """Top MCS of the 64-QAM table on the default 40 MHz / 30 kHz link (about 170.1 Mb/s)."""
    return state_from_mcs(max_mcs("qam64"), "qam64", LinkParams()).rate_bps


# ---------------------------------------------------------------- payloads


@dataclass
class RoundData:
    """One payload as the RX sees it, plus TX/RX-side stage timings (ms)."""

    alpha: int
    n_train: int
    payload_bytes: int
    z_train: np.ndarray
    y_train: np.ndarray
    x_test_round: np.ndarray
    timings: dict


def build_round(codec, data: Dataset, alpha: int, seed: int, layout: PayloadLayout, *, n_test: int,
                b_max_bytes: int, rate_bps: float) -> RoundData:
    """Sample, encode, pack (the TX), unpack, reconstruct (the RX), timing each stage.

    The payload carries ``n_test`` test vectors and as many training vectors
    as fit ``b_max_bytes`` (eq. 2); air time is its size at ``rate_bps``.
    """
    n_test = min(n_test, len(data.y_test))
    n_train = min(n_train_max(b_max_bytes, alpha, n_test, layout), len(data.y_train))
    rng = np.random.default_rng([seed, alpha])
    test_idx = rng.choice(len(data.y_test), n_test, replace=False)
    train_idx = rng.choice(len(data.y_train), n_train, replace=False)
    x = np.concatenate([data.x_test[test_idx], data.x_train[train_idx]])
    labels = np.concatenate([data.y_test[test_idx], data.y_train[train_idx]])
    t0 = time.perf_counter()
    z = codec.encode(x, alpha)
    t1 = time.perf_counter()
    frame = encode(Payload.build(0, seed, codec.fingerprint, layout.value_dtype, z,
                                 np.concatenate([test_idx, train_idx]).astype(np.uint32), labels, n_test))
    t2 = time.perf_counter()
    p = decode(frame)
    feats = p.features()
    t3 = time.perf_counter()
    x_test = codec.decode(feats[:n_test])
    t4 = time.perf_counter()
    airtime_ms = 8 * len(frame) / rate_bps * 1e3
    timings = {"encode_ms": (t1 - t0) * 1e3, "pack_ms": (t2 - t1) * 1e3, "unpack_ms": (t3 - t2) * 1e3,
               "reconstruct_ms": (t4 - t3) * 1e3, "airtime_ms": airtime_ms}
    timings["communication_ms"] = sum(timings.values())
    return RoundData(alpha, n_train, len(frame), feats[n_test:], p.labels[n_test:].copy(), x_test, timings)


def quantized_test(codec, data: Dataset, alpha: int, value_dtype: str) -> np.ndarray:
    """The whole test set as the RX would reconstruct it from ``value_dtype`` features."""
    fmt = value_format(value_dtype)
    z = codec.encode(data.x_test, alpha)
    values, scales = fmt.quantize(z)
    return codec.decode(fmt.dequantize(values, scales, len(z), alpha))
