"""The pca-lora mode: PCA features, fewer dimensions when the channel degrades, RX-side LoRA.

Kim, Koo, Ko: *Agile Semantics Alignment over Fading Channel via LoRA-based
Fine-Tuning* (``shared/seeds/agile-semantics-alignment-lora.txt``). Files:
``messages.py`` (PAYLOAD), ``tx.py`` / ``rx.py`` (the halves), ``budget.py``
(eq. 2), ``policy.py`` (alpha policies), ``alignment.py`` + ``adapter_bank.py``
(RX adaptation), ``pretrain.py`` (basis + classifier).
"""

from __future__ import annotations

from pathlib import Path

from common.artifacts import default_artifacts, load_codec, load_model
from common.data.datasets import load_dataset
from common.learn.lora import LoraConfig
from common.modes.base import Mode, register_mode
from common.modes.pca_lora.alignment import AdaptConfig, LoraAlignment
from common.modes.pca_lora.policy import get_policy
from common.modes.pca_lora.rx import PcaLoraRx
from common.modes.pca_lora.tx import PcaLoraTx, PcaLoraTxConfig
from common.options import Option


def lora_strategy(opts: dict) -> LoraAlignment:
    """LoRA alignment from ``lora_rank, lora_alpha, adapt_steps, adapt_lr, adapt_batch, adapt_budget_ms``."""
    lora = LoraConfig(**{k: opts[o] for k, o in (("rank", "lora_rank"), ("lora_alpha", "lora_alpha"))
                         if opts.get(o) is not None})
    adapt = AdaptConfig(**{k: opts[o] for k, o in (("steps", "adapt_steps"), ("lr", "adapt_lr"),
                                                    ("batch_size", "adapt_batch"),
                                                    ("budget_ms", "adapt_budget_ms"), ("seed", "seed"))
                           if opts.get(o) is not None})
    return LoraAlignment(lora, adapt)


def artifacts_dir(opts: dict) -> Path:
    """``opts['artifacts']``, else ``artifacts/<dataset>-d<d_pre>``."""
    return Path(opts.get("artifacts") or default_artifacts(opts.get("dataset") or "mnist"))


@register_mode
class PcaLora(Mode):
    name = "pca-lora"
    summary = "PCA features with fewer dimensions on a weak channel; RX-side LoRA on piggybacked vectors"
    rx_options = [
        Option("lora_rank", int, "LoRA rank r", LoraConfig.rank),
        Option("lora_alpha", float, "LoRA alpha; scaling = lora_alpha / rank", LoraConfig.lora_alpha),
        Option("adapt_steps", int, "most Adam steps of fine-tuning per round", AdaptConfig.steps),
        Option("adapt_lr", float, "peak Adam learning rate (cosine schedule) for fine-tuning", AdaptConfig.lr),
        Option("adapt_batch", int, "fine-tuning mini-batch in vectors, 0 = full batch", AdaptConfig.batch_size),
        Option("adapt_budget_ms", float, "wall-clock cap on adaptation per round, ms, for alpha >= d_pre/10 "
               f"(below: up to {AdaptConfig.deep_steps} steps within {AdaptConfig.deep_budget_ms:g} ms)",
               AdaptConfig.budget_ms),
        Option("adapter_bank", Path, "directory of a persistent adapter bank (LoRA adapters by alpha, "
               "warm starts); none by default"),
        Option("bank_size", int, "adapters the bank keeps, least recently used evicted (16 when a bank "
               "is used without a size)"),
    ]
    tx_options = [
        Option("n_test", int, "test vectors per payload (t in eq. 2); the whole test set if smaller",
               PcaLoraTxConfig.n_test),
        Option("n_min_train", int, "fewest training vectors a payload must carry when choosing alpha",
               PcaLoraTxConfig.n_min_train),
        Option("max_train", int, "cap on training vectors per payload, 0 = no cap", PcaLoraTxConfig.max_train),
        Option("value_dtype", str, "bytes per value on the wire: float32 (4), float16 (2), int8 + scale (1)",
               PcaLoraTxConfig.value_dtype),
        Option("deadline_s", float, "delivery deadline per payload, s; B_max = rate_bps * deadline_s / 8",
               PcaLoraTxConfig.deadline_s),
        Option("policy", str, "alpha policy: largest (the paper's), lookahead (best expected accuracy "
               "from --policy-table), or fixed:N", "largest"),
        Option("policy_table", Path, "policy_table.json written by `semalign sweep` (for --policy lookahead)"),
    ]

    @classmethod
    def build_rx(cls, opts: dict) -> PcaLoraRx:
        artifacts = artifacts_dir(opts)
        codec, meta = load_codec(artifacts)
        model = load_model(artifacts, meta)
        strategy = lora_strategy(opts)
        if opts.get("adapter_bank") or opts.get("bank_size"):
            from common.modes.pca_lora.adapter_bank import AdapterBank, BankedAlignment, model_digest

            bank = AdapterBank(int(opts.get("bank_size") or 16), codec.fingerprint, model_digest(model),
                               opts.get("adapter_bank"))
            strategy = BankedAlignment(strategy, bank)
        return PcaLoraRx(codec, model, strategy, meta.n_classes)

    @classmethod
    def build_tx(cls, opts: dict) -> PcaLoraTx:
        dataset = opts.get("dataset") or "mnist"
        artifacts = artifacts_dir(opts)
        codec, meta = load_codec(artifacts)
        if meta.dataset != dataset:
            raise ValueError(f"artifacts in {artifacts} were made for {meta.dataset!r}, not {dataset!r}")
        data = load_dataset(dataset, opts.get("data_dir"))
        given = {k: opts[k] for k in PcaLoraTxConfig.__dataclass_fields__ if opts.get(k) is not None}
        given.setdefault("n_test", min(PcaLoraTxConfig.n_test, len(data.y_test)))
        config = PcaLoraTxConfig(**given)
        if config.n_test > len(data.y_test):
            raise ValueError(f"n_test={config.n_test} exceeds the {len(data.y_test)} test vectors of {dataset}")
        policy_name = opts.get("policy") or "largest"
        policy = get_policy(policy_name, opts.get("policy_table"))
        return PcaLoraTx(codec, data, config, policy, policy_name, dataset, str(artifacts))
