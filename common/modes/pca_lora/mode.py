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
