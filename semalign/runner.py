"""Pre-training runs behind ``semalign pretrain`` and the demo."""

from __future__ import annotations

import logging
from pathlib import Path

from common.artifacts import (
    DEFAULT_D_PRE,
    ArtifactError,
    default_artifacts,
    read_meta,
    save_artifacts,
)
from common.datasets import load_dataset
from common.pretrain import PretrainConfig, pretrain
from common.progress import progress_bar

log = logging.getLogger("semalign")

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
