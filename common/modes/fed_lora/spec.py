"""What every device and the base station of one fed-lora federation share, and how each end builds it.

A federation is fixed by a :class:`FedSpec`: the task (``mlp``, ``sst2`` or
``agnews``), the number of devices ``n_devices``, the Dirichlet ``beta`` of
the label-skewed split, the ``seed`` (training pool, split, base model and
head initialisation) and the training ``pool_size``. Device ``k`` trains on
part ``k`` of :func:`split_pool`, so all ends must agree on every field of
:meth:`FedSpec.params`: the TX sends them in HELLO and the RX refuses a
session whose values differ from its own (ERROR ``params``).

Tasks:

- ``mlp`` (default, no extra data or packages): scikit-learn's 8x8 digits
  (1437 training / 360 test images, 64 features in [0, 1]) on the project's
  MLP ``64 -> 64 -> 32 -> 10`` with frozen random hidden layers, LoRA
  modules on them (:data:`~common.modes.fed_lora.foundation.MLP_MODULES`) and
  a trainable head.
- ``sst2`` / ``agnews``: all-MiniLM-L6-v2 with peft LoRA modules
  (:data:`~common.modes.fed_lora.foundation.MINILM_MODULES`) on GLUE SST-2 or
  AG News TSVs from ``data_dir``. AG News stands in for the paper's QNLI,
  which cannot be had here. transformers and peft are imported only when a
  text task is built.

:data:`PRESETS` holds each task's default scales (deadline, bandwidth,
drift-plus-penalty weight, local training, energy budget), so that the
MLP's millijoule rounds and MiniLM's joule rounds both give the optimiser a
real trade-off; every value can be overridden by an option.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.modes.fed_lora.text_data import TEXT_TASKS, dirichlet_split

TASKS: tuple[str, ...] = ("mlp", *TEXT_TASKS)
MLP_HIDDEN: tuple[int, ...] = (64, 32)
TEXT_MAX_SEQ_LEN = 64  # tokens per sentence for the MiniLM tasks
TEXT_POOL_PER_DEVICE = 150  # default text training pool: this many phrases per device
TASK_DATASET = {"mlp": "digits", "sst2": "sst2", "agnews": "agnews"}


@dataclass(frozen=True)
class TaskPreset:
    """Per-task defaults (units in the names). ``v``: drift-plus-penalty weight in J^2;
    ``sample_scale``: ``n_0`` of the risk proxy; ``capacity_exponent``: module capacity =
    (parameters / the largest module's) ** this (:func:`module_costs`); ``eval_size``: test
    samples the base station evaluates the global model on (0 = the whole test set)."""

    deadline_s: float
    bandwidth_hz: float
    v: float
    sample_scale: float
    capacity_exponent: float
    epochs: float
    batch_size: int
    lr: float
    energy_budget_j: float
    eval_size: int
    round_timeout_s: float
    silent_slack_s: float  # wall-clock slack of the silent-device deadline (real training + transport)


PRESETS: dict[str, TaskPreset] = {
    # MLP updates are 17-68 kbit and a round costs millijoules: a narrow 50 kHz cell and a 0.5 s
    # deadline make power, bandwidth and module size matter. Capacity linear in the parameters and
    # n_0 = 300: on this MLP (frozen random hidden layers) the module's size decides the accuracy
    # (docs/modes/fed_lora.md, "calibration"). Budget 10 mJ (was 5 mJ): the smallest of the budget sweep
    # 2.5/5/10/20/40 mJ x 3 seeds at which the online policy is within 1 point of fixed FedAvg at <= 60 % of
    # its energy with every device's budget met, after 8 and after 20 rounds (docs/modes/fed_lora.md, "Measured").
    "mlp": TaskPreset(deadline_s=0.5, bandwidth_hz=5e4, v=1e-3, sample_scale=300.0, capacity_exponent=1.0,
                      epochs=5.0, batch_size=32, lr=1e-2, energy_budget_j=0.01, eval_size=0,
                      round_timeout_s=60.0, silent_slack_s=10.0),
    # MiniLM modules are 0.2-21 Mbit and local training costs joules (runs/fed_lab.md's settings). Adam lr
    # 1e-3 (was 3e-3): at 3e-3 even centralised LoRA on SST-2 collapsed to one class after its first round;
    # 1e-3 and 3e-4 held 0.80-0.83 over 3 rounds (docs/modes/fed_lora.md).
    "text": TaskPreset(deadline_s=20.0, bandwidth_hz=1e6, v=20.0, sample_scale=200.0, capacity_exponent=0.5,
                       epochs=2.0, batch_size=16, lr=1e-3, energy_budget_j=2.0, eval_size=200,
                       round_timeout_s=900.0, silent_slack_s=120.0),
}


def preset(task: str) -> TaskPreset:
    """The defaults of ``task`` (one of :data:`TASKS`)."""
    check_task(task)
    return PRESETS["mlp" if task == "mlp" else "text"]


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown fed-lora task {task!r}; choose one of {', '.join(TASKS)}")


@dataclass(frozen=True)
class FedSpec:
    """What all ends of a federation agree on (see the module docstring).

    ``pool_size``: training samples split among the devices, drawn with
    ``seed`` from the task's training set; 0 = the task's default (mlp: the
    whole training set; text: :data:`TEXT_POOL_PER_DEVICE` per device).
    """

    task: str = "mlp"
    n_devices: int = 4
    beta: float = 0.5
    seed: int = 0
    pool_size: int = 0

    def __post_init__(self):
        check_task(self.task)
        if not 1 <= self.n_devices <= 1000:
            raise ValueError(f"n_devices must be in 1..1000, got {self.n_devices}")
        if not (np.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be finite and > 0, got {self.beta}")
        if self.pool_size < 0:
            raise ValueError(f"pool_size must be >= 0 (0 = the task's default), got {self.pool_size}")

    @property
    def dataset(self) -> str:
        return TASK_DATASET[self.task]

    def params(self) -> dict:
        """The HELLO parameters both ends compare (msgpack types)."""
        return {"task": self.task, "dataset": self.dataset, "n_devices": self.n_devices,
                "beta": float(self.beta), "split_seed": self.seed, "pool_size": self.pool_size}

    def mismatch(self, params: dict) -> str | None:
        """Why ``params`` (another end's :meth:`params`) describe another federation (None: the same)."""
        own = self.params()
        diffs = [f"{k}={params.get(k)!r} != {own[k]!r}" for k in own if params.get(k) != own[k]]
        return ("federation differs: " + ", ".join(diffs) + " (all devices and the base station must use "
                "the same --fed-task, --fed-devices, --fed-beta, --seed and --fed-pool-size)") if diffs else None


@dataclass(frozen=True)
class FedData:
    """A task's data as the federation uses it.

    ``train_x``/``test_x``: float32 (n, 64) for mlp, tuples of str for text;
    ``train_y``/``test_y``: int64 (n,). ``parts``: per device, indices into
    ``train_x`` (disjoint, from :func:`split_pool`).
    """

    task: str
    train_x: Any
    train_y: np.ndarray
    test_x: Any
    test_y: np.ndarray
    n_classes: int
    parts: tuple[np.ndarray, ...]

    def shard(self, device_id: int) -> tuple[Any, np.ndarray]:
        """Device ``device_id``'s training inputs and labels."""
        if not 0 <= device_id < len(self.parts):
            raise ValueError(f"device_id must be in 0..{len(self.parts) - 1}, got {device_id}")
        idx = self.parts[device_id]
        return take(self.train_x, idx), self.train_y[idx]


def take(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of an array, or items of a sequence of str (as a list)."""
    return x[idx] if isinstance(x, np.ndarray) else [x[int(i)] for i in idx]


def split_pool(labels: np.ndarray, spec: FedSpec) -> tuple[np.ndarray, ...]:
    """Per device, sorted indices into ``labels``: the pool drawn with ``spec.seed``, split Dirichlet(beta).

    Each device gets at least a tenth of an even share (at least 1 sample).
    """
    n = len(labels)
    size = spec.pool_size or (n if spec.task == "mlp" else TEXT_POOL_PER_DEVICE * spec.n_devices)
    if size > n:
        raise ValueError(f"pool_size={size} exceeds the {n} training samples of {spec.task}")
    rng = np.random.default_rng([spec.seed, 11])
    pool = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
    min_samples = max(1, size // (10 * spec.n_devices))
    parts = dirichlet_split(labels[pool], spec.n_devices, spec.beta, min_samples=min_samples, seed=spec.seed)
    return tuple(pool[p] for p in parts)


def load_fed_data(spec: FedSpec, data_dir: str | Path | None = None) -> FedData:
    """The task's training and test data and the device split (text tasks read ``data_dir``)."""
    if spec.task == "mlp":
        from common.data.datasets import load_dataset

        d = load_dataset("digits")
        train_x, train_y, test_x, test_y, n_classes = (d.x_train, d.y_train.astype(np.int64), d.x_test,
                                                       d.y_test.astype(np.int64), d.n_classes)
    else:
        from common.modes.fed_lora.text_data import load_text_dataset

        if data_dir is None:
            raise ValueError(f"fed-lora task {spec.task} reads its TSV files from --data-dir "
                             f"(<dir>/{spec.task}/...); none given")
        t = load_text_dataset(spec.task, data_dir)
        train_x, train_y, test_x, test_y, n_classes = (t.train_texts, t.train_labels, t.test_texts,
                                                       t.test_labels, t.n_classes)
    return FedData(spec.task, train_x, train_y, test_x, test_y, n_classes, split_pool(train_y, spec))


def build_task(spec: FedSpec, n_classes: int):
    """The task's model with its LoRA modules, initialised from ``spec.seed`` (same on every end)."""
    from common.modes.fed_lora.foundation_mlp import MlpTask

    if spec.task == "mlp":
        return MlpTask(64, n_classes, hidden=MLP_HIDDEN, seed=spec.seed)
    from common.modes.fed_lora.foundation_minilm import MiniLMTask  # transformers + peft: text tasks only

    return MiniLMTask(n_classes, max_seq_len=TEXT_MAX_SEQ_LEN, seed=spec.seed)


def fingerprint(spec: FedSpec, task, n_classes: int) -> str:
    """Session fingerprint: sha256 hex of the task, the class count, the modules and the base weights."""
    head = task.get_adapter(next(iter(task.modules)))
    h = hashlib.sha256(json.dumps({"task": spec.task, "n_classes": n_classes, "base": task.base_digest()},
                                  sort_keys=True).encode())
    for key in ("head.weight", "head.bias"):  # the initial head: the global model starts from it
        h.update(np.ascontiguousarray(head[key], "<f4").tobytes())
    return h.hexdigest()


def eval_subset(n_test: int, size: int, seed: int) -> np.ndarray:
    """Indices of the test samples the base station evaluates on: all (``size`` 0 or >= n) or a seeded subset."""
    if size <= 0 or size >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.default_rng([seed, 23]).choice(n_test, size=size, replace=False))


def module_ranks(task, modules: Sequence[str] | None = None) -> dict[str, int]:
    """Module name -> its rank (the largest layer rank: LoraLinear clamps r to the layer size)."""
    return {m: max(task.ranks(m).values()) for m in (modules or task.modules)}
