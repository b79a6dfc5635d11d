"""One RX serving several modes at once, and the TX processes that load it: the set-up shared by the
mixed load (:mod:`semalign.campaigns.mixed_load`) and the interference measurement
(:mod:`semalign.campaigns.interference`).

:func:`start_rx` starts ``semalign rx --mode pca-lora,slf,fed-lora`` (the modes asked for) with ``--workers W``
on a free loopback port, replaying a one-row deep-fade trace (every pca-lora round adapts);
:func:`slf_tx` / :func:`fed_device` start ``semalign tx`` processes of the other modes (their rounds are
read back from their ``results.jsonl`` with :func:`result_rows`); :func:`pca_half` is the pca-lora TX half
the replaying generator and the interference probe encode with (built once per process).
"""

from __future__ import annotations

import time
from pathlib import Path

from common.files import read_jsonl
from semalign.campaigns.pca_lora.load import DEEP_FADE_CSV
from semalign.campaigns.processes import free_port, launch

MODES = ("pca-lora", "slf", "fed-lora")
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
SLF_WIDTHS = (32, 64)  # the paper's decoder size (171 kB) on 8x8 digits


def slf_artifacts(out: Path, widths: tuple[int, int] = SLF_WIDTHS, epochs: float = 2.0) -> Path:
    """An slf transceiver for 8x8 digits in ``out`` (pre-trained once, kept): both ends use it (an alignment
    then changes little, but its download, fine-tuning and upload are the whole work)."""
    from common.data.datasets import load_dataset
    from common.modes.slf.artifacts import load_transceiver
    from common.modes.slf.configs import TransceiverConfig
    from common.modes.slf.pretrain import pretrain_and_save
    from common.modes.slf.shape import TransceiverShape

    try:
        load_transceiver(out)
        return out
    except Exception:  # none yet (or damaged): pre-train
        pass
    shape = TransceiverShape(image_size=8, widths=tuple(widths), code_dim=16, n_codewords=16,
                             head_channels=(8, 8), head_hidden=32)
    cfg = TransceiverConfig("load", eps=1e-3, seed=1, dataset="digits", epochs=epochs, head_epochs=epochs,
                            batch_size=128, lr=1e-2, shape=shape)
    pretrain_and_save(cfg, load_dataset("digits"), out)
    return out


def parse_mix(mix: str) -> list[str]:
    modes = [m.strip() for m in mix.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"--mix {mix!r}: a comma-separated list of {', '.join(MODES)}")
    return [m for m in MODES if m in modes]


def start_rx(out: Path, modes: list[str], workers: int, artifacts: Path, dataset: str, slf_dir: Path | None,
              fed_devices: int, rx_extra: dict | None):
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "deep-fade.csv"
    trace.write_text(DEEP_FADE_CSV)
    address = f"tcp://127.0.0.1:{free_port()}"
    opts = {"bind": address, "mode": ",".join(modes), "artifacts": artifacts, "dataset": dataset,
            "trace": str(trace), "workers": workers, "insecure": True, **(rx_extra or {})}
    if "slf" in modes:
        opts["trx"] = slf_dir
    if "fed-lora" in modes:
        opts.update(fed_devices=fed_devices, fed_policy="fixed")
    return launch("rx", opts, out / "rx.log", env=ENV), address


def slf_tx(out: Path, address: str, i: int, slf_dir: Path, rounds: int, finetune_images: int,
            finetune_epochs: float, n_frozen: int):
    """A ``semalign tx --mode slf`` whose every round is an alignment."""
    return launch("tx", {"mode": "slf", "connect": address, "trx": slf_dir, "rounds": rounds, "out": out / f"slf{i}",
                         "insecure": True, "seed": i, "align_first": 0, "align_every": 1, "n_frozen": n_frozen,
                         "finetune_images": finetune_images, "finetune_epochs": finetune_epochs,
                         "finetune_lr": 1e-3, "n_images": 50, "connect_timeout_s": 300, "hello_attempts": 600},
                  out / f"slf{i}.log", env=ENV)


def fed_device(out: Path, address: str, k: int, devices: int, rounds: int):
    return launch("tx", {"mode": "fed-lora", "connect": address, "device_id": k, "fed_devices": devices,
                         "rounds": rounds, "out": out / f"fed{k}", "insecure": True, "connect_timeout_s": 300,
                         "hello_attempts": 600}, out / f"fed{k}.log", env=ENV)


def result_rows(path: Path) -> list[dict]:
    """The rounds a TX process recorded so far (its ``results.jsonl``; none yet: [])"""
    return read_jsonl(path) if path.exists() else []



def wait_rows(count, n: int, timeout_s: float, proc) -> None:
    deadline = time.monotonic() + timeout_s
    while count() < n:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the background's first round did not end within {timeout_s:.0f} s "
                               f"(exit status {proc.poll()})")
        time.sleep(0.2)



_HALVES: dict = {}


def pca_half(artifacts: Path, dataset: str):
    key = (str(artifacts), dataset)
    if key not in _HALVES:
        from common.modes.base import get_mode

        _HALVES[key] = get_mode("pca-lora").build_tx({"artifacts": artifacts, "dataset": dataset})
    return _HALVES[key]
