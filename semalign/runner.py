"""Pre-training behind ``semalign pretrain`` and the demo; the shared set-up of in-process campaigns."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common.learn import fastlora
from common.artifacts import (
    DEFAULT_D_PRE,
    ArtifactError,
    ArtifactMeta,
    default_artifacts,
    load_codec,
    load_model,
    read_meta,
    save_artifacts,
)
from common.codecs.pca import PcaCodec
from common.data.datasets import Dataset, load_dataset
from common.modes.pca_lora.pretrain import PretrainConfig, pretrain
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
    fastlora.keep_freed_memory()
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
