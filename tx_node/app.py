"""Builds and runs the TX daemon from an options dictionary (CLI + TOML)."""

from __future__ import annotations

import threading
from pathlib import Path

from common.artifacts import default_artifacts, load_codec
from common.data.datasets import load_dataset
from common.results.log import ResultsLog, load_results
from common.net.security import tx_security
from common.net.transport import TxSocket
from tx_node.daemon import TxConfig, TxNode
from common.modes.pca_lora.policy import get_policy

TX_CONFIG_KEYS = ("n_test", "n_min_train", "max_train", "value_dtype", "deadline_s", "result_timeout_s",
                  "hello_timeout_s", "hello_attempts", "seed", "round_attempts", "backoff_s", "backoff_max_s",
                  "stop_grace_s")


def previous_campaign(out: Path, fingerprint: str) -> dict:
    """The config of the campaign in ``out`` to resume ({} if none); refuses another basis."""
    if not (out / "results.json").exists():
        return {}
    try:
        config = load_results(out).get("config", {})
    except ValueError as e:
        raise ValueError(f"--resume: {out / 'results.json'} unreadable ({e})") from e
    if config.get("fingerprint") not in (None, fingerprint):
        raise ValueError(f"--resume: the campaign in {out} used basis {str(config['fingerprint'])[:12]}..., "
                         f"these artifacts are {fingerprint[:12]}...")
    return config


def run_tx(opts: dict, stop: threading.Event, on_round=None):
    """Run a campaign; writes ``results.json``/``results.jsonl`` to ``opts['out']``.

    ``opts['resume']``: continue the campaign in ``out`` (same session id, so an
    RX that still holds a round answers it from its record), running only the
    rounds of ``0 .. rounds-1`` without a final record.
    """
    security = tx_security(opts)  # first: a missing key or --insecure fails before any loading
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
    policy = get_policy(opts.get("policy") or "largest", opts.get("policy_table"))
    out = Path(opts.get("out") or "runs/latest")
    resume = bool(opts.get("resume"))
    previous = previous_campaign(out, codec.fingerprint) if resume else {}
    sock = TxSocket(opts.get("connect") or "tcp://127.0.0.1:5555", security=security)
    node = TxNode(codec, data, sock, config, policy, stop, session_id=previous.get("session_id"))
    record = {"dataset": dataset, "artifacts": str(artifacts), "fingerprint": codec.fingerprint,
              "d_pre": codec.d_max, "policy": opts.get("policy") or "largest",
              "connect": sock.address, "session_id": node.session_id, "curve": security.curve,
              **{k: getattr(config, k) for k in TX_CONFIG_KEYS}}
    results = ResultsLog(out, record, resume=resume)
    try:
        return node.run(int(opts.get("rounds") or 9), results, on_round=on_round, skip=results.finished())
    finally:
        sock.close()
