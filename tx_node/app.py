"""Builds and runs the TX daemon from an options dictionary (CLI + TOML)."""

from __future__ import annotations

import threading
from pathlib import Path

from common.artifacts import default_artifacts, load_codec
from common.datasets import load_dataset
from common.results import ResultsLog
from common.transport import TxSocket
from tx_node.daemon import TxConfig, TxNode
from tx_node.policy import get_policy

TX_CONFIG_KEYS = ("n_test", "n_min_train", "max_train", "value_dtype", "deadline_s", "result_timeout_s",
                  "hello_timeout_s", "hello_attempts", "seed")


def run_tx(opts: dict, stop: threading.Event, on_round=None):
    """Run a campaign; writes ``results.json``/``results.jsonl`` to ``opts['out']``."""
    dataset = opts.get("dataset") or "mnist"
    artifacts = Path(opts.get("artifacts") or default_artifacts(dataset))
    codec, meta = load_codec(artifacts)
    if meta.dataset != dataset:
        raise ValueError(f"artifacts in {artifacts} were made for {meta.dataset!r}, not {dataset!r}")
    data = load_dataset(dataset, opts.get("data_dir"))
    given = {k: opts[k] for k in TX_CONFIG_KEYS if opts.get(k) is not None}
    given.setdefault("n_test", min(TxConfig.n_test, len(data.y_test)))
    config = TxConfig(**given)
    if config.n_test > len(data.y_test):
        raise ValueError(f"n_test={config.n_test} exceeds the {len(data.y_test)} test vectors of {dataset}")
    policy = get_policy(opts.get("policy") or "largest")
    sock = TxSocket(opts.get("connect") or "tcp://127.0.0.1:5555")
    record = {"dataset": dataset, "artifacts": str(artifacts), "fingerprint": codec.fingerprint,
              "d_pre": codec.d_max, "policy": opts.get("policy") or "largest",
              "connect": sock.address, **{k: getattr(config, k) for k in TX_CONFIG_KEYS}}
    results = ResultsLog(opts.get("out") or "runs/latest", record)
    node = TxNode(codec, data, sock, config, policy, stop)
    try:
        return node.run(int(opts.get("rounds") or 9), results, on_round=on_round)
    finally:
        sock.close()
