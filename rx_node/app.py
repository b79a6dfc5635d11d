"""Builds and runs the RX daemon from an options dictionary (CLI + TOML)."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from common.modes.pca_lora.alignment import AdaptConfig, LoraAlignment
from common.artifacts import default_artifacts, load_codec, load_model
from common.learn.fastlora import keep_freed_memory
from common.learn.lora import LoraConfig
from common.wire.protocol import DecodeLimits
from common.net.security import rx_security
from common.link.sidelink import create_sidelink
from common.net.transport import RxSocket
from rx_node.daemon import RxNode, RxStats, serve


def lora_strategy(opts: dict) -> LoraAlignment:
    """LoRA alignment from ``lora_rank, lora_alpha, adapt_steps, adapt_lr, adapt_batch, adapt_budget_ms``."""
    lora = LoraConfig(**{k: opts[o] for k, o in (("rank", "lora_rank"), ("lora_alpha", "lora_alpha"))
                         if opts.get(o) is not None})
    adapt = AdaptConfig(**{k: opts[o] for k, o in (("steps", "adapt_steps"), ("lr", "adapt_lr"),
                                                    ("batch_size", "adapt_batch"),
                                                    ("budget_ms", "adapt_budget_ms"), ("seed", "seed"))
                           if opts.get(o) is not None})
    return LoraAlignment(lora, adapt)


def banked_strategy(opts: dict, strategy: LoraAlignment, codec, model):
    """``strategy`` wrapped in an adapter bank when ``adapter_bank`` (a directory) or ``bank_size`` is set."""
    if not opts.get("adapter_bank") and not opts.get("bank_size"):
        return strategy
    from common.modes.pca_lora.adapter_bank import AdapterBank, BankedAlignment, model_digest

    bank = AdapterBank(int(opts.get("bank_size") or 16), codec.fingerprint, model_digest(model),
                       opts.get("adapter_bank"))
    return BankedAlignment(strategy, bank)


def link_options(opts: dict, link_table: dict) -> tuple[str, dict]:
    """Backend name and its constructor options from the CLI and the ``[link]`` table."""
    options = dict(link_table)
    backend = opts.get("link") or options.pop("backend", "loopback")
    options.pop("backend", None)
    if backend == "loopback":
        for key, opt in (("trace", "trace"), ("rounds", "trace_rounds"), ("seed", "seed")):
            if opts.get(opt) is not None:
                options[key] = opts[opt]
    elif opts.get("link_rate_bps") is not None:
        options["rate_bps"] = opts["link_rate_bps"]
    return backend, options


def rx_limits(opts: dict, d_pre: int) -> DecodeLimits:
    """Hard input limits from ``max_payload_bytes, max_vectors, max_alpha, max_str_len, max_container_len``."""
    given = {k: int(opts[o]) for k, o in (("max_message_bytes", "max_payload_bytes"),
                                          ("max_vectors", "max_vectors"), ("max_str_len", "max_str_len"),
                                          ("max_container_len", "max_container_len"))
             if opts.get(o) is not None}
    max_alpha = min(int(opts.get("max_alpha") or d_pre), d_pre)
    return DecodeLimits(max_alpha=max_alpha, **given)


def build_rx(opts: dict, link_table: dict) -> tuple[RxNode, RxSocket]:
    security = rx_security(opts)  # first: a missing key or --insecure fails before any loading
    artifacts = Path(opts.get("artifacts") or default_artifacts(opts.get("dataset", "mnist")))
    codec, meta = load_codec(artifacts)
    model = load_model(artifacts, meta)
    limits = rx_limits(opts, codec.d_max)
    backend, options = link_options(opts, link_table)
    link = create_sidelink(backend, **options)
    node = RxNode(codec, model, banked_strategy(opts, lora_strategy(opts), codec, model), link, limits,
                  meta.n_classes)
    sock = RxSocket(opts.get("bind") or "tcp://127.0.0.1:5555", limits.max_message_bytes,
                    security=security)
    return node, sock


def run_rx(opts: dict, link_table: dict, stop: threading.Event) -> RxStats:
    torch.set_num_threads(int(opts.get("threads") or 1))
    keep_freed_memory()  # fewer page faults in the fine-tuning loop (common/learn/fastlora.py)
    node, sock = build_rx(opts, link_table)
    try:
        return serve(node, sock, stop, opts.get("max_rounds"))
    finally:
        sock.close()
        node.close()
