"""Shared fixtures: small digits artifacts (pre-trained once per session)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import settings

from common.modes.pca_lora.artifacts import save_artifacts
from common.data.datasets import load_dataset
from common.modes.pca_lora.pretrain import PretrainConfig, pretrain

torch.set_num_threads(1)

pytest_plugins = ("tests.zmq_hygiene",)

# CI runs the property tests with a fixed seed, so a landing never hangs on a lucky draw;
# everywhere else each run explores new examples (and the atheris run explores far more).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

DIGITS_D_PRE = 40


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run long variants (soak, full MNIST)")
    parser.addoption("--precision", choices=("auto", "fp32", "bf16"), default=None,
                     help="force the frozen layers' precision of every pca-lora adaptation the suite runs "
                          "(in-process and in the daemons it starts), through SEMALIGN_PRECISION")


def pytest_configure(config):
    precision = config.getoption("--precision")
    if precision:
        os.environ["SEMALIGN_PRECISION"] = precision


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long variant: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_artifacts(tmp_path_factory, digits):
    """Directory with a digits basis (d_pre=40) and an MLP trained on it."""
    out = tmp_path_factory.mktemp("artifacts") / "digits-d40"
    res = pretrain(digits, PretrainConfig(d_pre=DIGITS_D_PRE, hidden=(64, 32), epochs=20, batch_size=64))
    save_artifacts(out, res.codec, res.model, dataset="digits", hidden=(64, 32), n_classes=10,
                   test_accuracy=res.test_accuracy, train_seconds=res.train_seconds, seed=0)
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
