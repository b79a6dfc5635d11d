"""The pca-lora mode: PCA features, fewer dimensions when the channel degrades, RX-side LoRA.

Kim, Koo, Ko: *Agile Semantics Alignment over Fading Channel via LoRA-based
Fine-Tuning* (``shared/seeds/agile-semantics-alignment-lora.txt``). Files:
``messages.py`` (PAYLOAD), ``tx.py`` / ``rx.py`` (the halves), ``budget.py``
(eq. 2), ``policy.py`` (alpha policies), ``alignment.py`` + ``adapter_bank.py``
(RX adaptation), ``pretrain.py`` (basis + classifier).
"""

from __future__ import annotations

from pathlib import Path

from common.learn.lora_config import LoraConfig
from common.modes.base import Mode, register_mode
from common.modes.pca_lora.adapt_config import RECIPES, AdaptConfig
from common.modes.pca_lora.limits import RxLimits
from common.modes.pca_lora.messages import MAX_TRAIN_PARTS
from common.modes.pca_lora.tx import PcaLoraTxConfig
from common.options import Option

# torch-free on import: the option specs build the CLI; the halves (torch, the artifacts) load in
# build_rx/build_tx


def lora_strategy(opts: dict):
    """The RX's :class:`LoraAlignment` from ``adapt_recipe, lora_rank, lora_alpha, adapt_steps, adapt_lr,
    adapt_batch, adapt_budget_ms, adapt_precision, seed`` (None = the default)."""
    from common.modes.pca_lora.alignment import LoraAlignment

    lora = LoraConfig(**{k: opts[o] for k, o in (("rank", "lora_rank"), ("lora_alpha", "lora_alpha"))
                         if opts.get(o) is not None})
    adapt = AdaptConfig(**{k: opts[o] for k, o in (("recipe", "adapt_recipe"), ("steps", "adapt_steps"),
                                                    ("lr", "adapt_lr"), ("batch_size", "adapt_batch"),
                                                    ("budget_ms", "adapt_budget_ms"),
                                                    ("precision", "adapt_precision"), ("seed", "seed"))
                           if opts.get(o) is not None})
    return LoraAlignment(lora, adapt)


def artifacts_dir(opts: dict) -> Path:
    """``opts['artifacts']``, else ``artifacts/<dataset>-d<d_pre>``."""
    from common.modes.pca_lora.artifacts import default_artifacts

    return Path(opts.get("artifacts") or default_artifacts(opts.get("dataset") or "mnist"))


@register_mode
class PcaLora(Mode):
    name = "pca-lora"
    summary = "PCA features with fewer dimensions on a weak channel; RX-side LoRA on piggybacked vectors"
    rx_one_writer_options = ("adapter_bank",)  # one writer per bank directory: RX worker 0 (others: --bank-size in memory)
    rx_options = [
        Option("adapt_recipe", str, f"adaptation recipe: {', '.join(RECIPES)} (lora: the paper's rank-r "
               "LoRA on every layer; first-layer: full training of the first layer folded into the codec, "
               "later layers frozen; staged: first-layer, then all layers when the budget allows)",
               AdaptConfig.recipe),
        Option("lora_rank", int, "LoRA rank r (recipe lora)", LoraConfig.rank),
        Option("lora_alpha", float, "LoRA alpha; scaling = lora_alpha / r, r the rank clamped to the smallest "
                                    "adapted layer (recipe lora)", LoraConfig.lora_alpha),
        Option("adapt_steps", int, "Adam steps of fine-tuning per round; 0 = as many as fill "
               f"{AdaptConfig.fill:g} of the time budget, calibrated at start-up (deterministic)",
               AdaptConfig.steps),
        Option("adapt_lr", float, "peak Adam learning rate (cosine schedule) for fine-tuning (the first "
               f"stage; {AdaptConfig.deep_lr:g} for the dense recipes below alpha = d_pre/10)", AdaptConfig.lr),
        Option("adapt_batch", int, "fine-tuning mini-batch in vectors, 0 = full batch", AdaptConfig.batch_size),
        Option("adapt_budget_ms", float, "wall-clock safety cap on adaptation per round, ms, for alpha >= "
               f"d_pre/10 (below: {AdaptConfig.deep_budget_ms:g} ms); the calibrated step count fills "
               f"{AdaptConfig.fill:g} of it", AdaptConfig.budget_ms),
        Option("adapt_precision", str, "frozen layers of the first-layer/staged recipes: auto (bfloat16 where "
               "the recipe's own training step, timed at start-up in both, is at least 15% faster; the environment variable SEMALIGN_PRECISION "
               "overrides auto), fp32 or bf16", AdaptConfig.precision),
        Option("adapter_bank", Path, "directory of a persistent adapter bank (adapters by TX key and alpha: "
               "warm starts, and returning alphas served without training); none by default"),
        Option("bank_size", int, "adapters the bank keeps, of all TX keys together, least recently used "
               "evicted (16 when a bank is used without a size); the RX announces a TX's own alphas in "
               "RESULT (aligned_alphas) so it can send them without training vectors"),
        Option("max_held_bytes_per_key", int, "bytes of training parts (PAYLOAD_TRAIN, as received) the "
               "unfinished rounds in parts of one CURVE key's (or credential's) sessions may hold at once; a part "
               "beyond it is refused parts_held", RxLimits.max_held_bytes_per_key),
        Option("bank_shared", bool, "one adapter bank for every session: a key's payloads then change what "
               "every other key's rounds use (only for TXs that trust each other; default: one per key)"),
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
        Option("policy_table", Path, "policy_table.json written by `semalign sweep` (for --policy lookahead; "
               "also tells how many training vectors still pay when there is nothing to align)"),
        Option("fill_payload", bool, "fill every payload with training vectors (the paper's rule, to reproduce "
               "its figures); by default a round with nothing to align (alpha = d_pre, or an alpha the RX "
               "announced an adapter for) carries the test vectors only"),
        Option("train_parts", int, "0: one PAYLOAD frame, test then training vectors (the paper's); K = 1.."
               f"{MAX_TRAIN_PARTS}: the training vectors first, in K PAYLOAD_TRAIN frames each encoded just "
               "before it is sent, then the test vectors in PAYLOAD, so encoding, air time and the RX's "
               "adaptation overlap (every frame's header counts in the budget: 209 B per part)",
               PcaLoraTxConfig.train_parts),
    ]

    @classmethod
    def build_rx(cls, opts: dict):
        from common.modes.pca_lora.artifacts import load_codec, load_model
        from common.modes.pca_lora.rx import PcaLoraRx

        artifacts = artifacts_dir(opts)
        codec, meta = load_codec(artifacts)
        model = load_model(artifacts, meta)
        bank = None
        if opts.get("adapter_bank") or opts.get("bank_size"):
            from common.modes.pca_lora.adapter_bank import AdapterBank, model_digest

            bank = AdapterBank(int(opts.get("bank_size") or 16), codec.fingerprint, model_digest(model),
                               opts.get("adapter_bank"))
        limits = RxLimits(**({"max_held_bytes_per_key": int(opts["max_held_bytes_per_key"])}
                             if opts.get("max_held_bytes_per_key") is not None else {}))
        return PcaLoraRx(codec, model, lora_strategy(opts), meta.n_classes, limits=limits, bank=bank,
                         bank_shared=bool(opts.get("bank_shared")))

    @classmethod
    def build_tx(cls, opts: dict):
        from common.data.datasets import load_dataset
        from common.learn import process_tuning
        from common.modes.pca_lora.artifacts import load_codec
        from common.modes.pca_lora.policy import AccuracyTable, get_policy
        from common.modes.pca_lora.tx import PcaLoraTx

        # a payload's PCA encode is a small product: one BLAS thread did it in 1.1 ms where OpenBLAS's
        # two took 8-12 ms on a loaded 2-core machine (500 x 784 -> 200; docs/benchmarks.md)
        process_tuning.match_blas_threads(1)
        dataset = opts.get("dataset") or "mnist"
        artifacts = artifacts_dir(opts)
        codec, meta = load_codec(artifacts)
        if meta.dataset != dataset:
            raise ValueError(f"artifacts in {artifacts} were made for {meta.dataset!r}, not {dataset!r}")
        data = load_dataset(dataset, opts.get("data_dir"))
        given = {k: opts[k] for k in PcaLoraTxConfig.__dataclass_fields__ if opts.get(k) is not None}
        if given.get("fill_payload") is not None:
            given["fill_payload"] = bool(given["fill_payload"])
        given.setdefault("n_test", min(PcaLoraTxConfig.n_test, len(data.y_test)))
        config = PcaLoraTxConfig(**given)
        if config.n_test > len(data.y_test):
            raise ValueError(f"n_test={config.n_test} exceeds the {len(data.y_test)} test vectors of {dataset}")
        policy_name = opts.get("policy") or "largest"
        policy = get_policy(policy_name, opts.get("policy_table"))
        table = AccuracyTable.load(opts["policy_table"]) if opts.get("policy_table") else None
        return PcaLoraTx(codec, data, config, policy, policy_name, dataset, str(artifacts), table)
