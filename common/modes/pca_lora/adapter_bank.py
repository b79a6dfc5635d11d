"""An RX that remembers: a bounded LRU bank of LoRA adapters keyed by alpha.

A new alpha warm-starts from the adapter of the nearest stored alpha; a
returning alpha continues from its own adapter with ``AdaptConfig.warm_steps``
steps (little or no fine-tuning). Every adapter trained is stored back.

Persistence (``directory``): one ``alpha-XXXX.pt`` per adapter (a flat dict of
plain tensors, written with ``torch.save`` and read with
``torch.load(weights_only=True)``) and ``manifest.json`` with the format
version, the codec fingerprint and model digest the adapters belong to, and the
sha256, size and LRU order of every file. A bank written for other artifacts,
by another format version, or with a file whose checksum does not match is
refused with :class:`AdapterBankError` naming the problem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.modes.pca_lora.alignment import AdaptReport, AlignmentStrategy, LoraAlignment
from common.codecs.pca import Codec
from common.learn.lora import LoraState

BANK_FORMAT_VERSION = 1
MANIFEST = "manifest.json"

log = logging.getLogger("semalign.bank")


class AdapterBankError(RuntimeError):
    """A persisted bank that cannot be used (other artifacts, other format, corrupt file)."""


def model_digest(model: nn.Module) -> str:
    """sha256 hex of the model's parameters (in state-dict order, float32 little-endian)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().to(torch.float32).numpy().astype("<f4").tobytes())
    return h.hexdigest()


def _state_to_tensors(state: LoraState) -> dict[str, torch.Tensor]:
    out = {"layers": torch.tensor(state.layers, dtype=torch.int64),
           "scaling": torch.tensor(state.scaling, dtype=torch.float64)}
    for i in range(len(state.layers)):
        out[f"A.{i}"] = state.A[i].detach().clone()
        out[f"B.{i}"] = state.B[i].detach().clone()
        if state.d is not None:
            out[f"d.{i}"] = state.d[i].detach().clone()
    return out


def _state_from_tensors(t: dict[str, torch.Tensor], where: str) -> LoraState:
    try:
        layers = tuple(int(v) for v in t["layers"].tolist())
        A = [t[f"A.{i}"].float() for i in range(len(layers))]
        B = [t[f"B.{i}"].float() for i in range(len(layers))]
        d = [t[f"d.{i}"].float() for i in range(len(layers))] if "d.0" in t else None
        scaling = float(t["scaling"])
    except (KeyError, TypeError, ValueError) as e:
        raise AdapterBankError(f"{where}: not an adapter file ({type(e).__name__}: {e})") from e
    for a, b in zip(A, B):
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterBankError(f"{where}: adapter shapes {tuple(a.shape)} / {tuple(b.shape)} do not pair")
    return LoraState(layers, A, B, d, scaling)


class AdapterBank:
    """Adapters by alpha, at most ``capacity``, least recently used evicted first.

    ``directory`` (optional) makes the bank persistent; ``fingerprint`` and
    ``model_sha`` tie it to one codec and one frozen model.
    """

    def __init__(self, capacity: int, fingerprint: str, model_sha: str,
                 directory: str | Path | None = None):
        if capacity < 1:
            raise ValueError(f"bank capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.fingerprint = fingerprint
        self.model_sha = model_sha
        self.directory = Path(directory) if directory else None
        self._entries: OrderedDict[int, LoraState] = OrderedDict()
        self._files: dict[int, dict] = {}
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)
            if (self.directory / MANIFEST).exists():
                self._load()
            else:
                self._write_manifest()

    # ------------------------------------------------------------ lookup

    def __len__(self) -> int:
        return len(self._entries)

    def alphas(self) -> list[int]:
        """Stored alphas, least recently used first."""
        return list(self._entries)

    def get(self, alpha: int) -> LoraState | None:
        """The adapter for exactly ``alpha`` (marks it recently used)."""
        state = self._entries.get(alpha)
        if state is not None:
            self._entries.move_to_end(alpha)
        return state

    def nearest(self, alpha: int) -> tuple[int, LoraState] | None:
        """``(stored alpha, adapter)`` closest to ``alpha`` (ties: the larger alpha), or None."""
        if not self._entries:
            return None
        best = min(self._entries, key=lambda a: (abs(a - alpha), -a))
        self._entries.move_to_end(best)
        return best, self._entries[best]

    # ------------------------------------------------------------ update

    def put(self, alpha: int, state: LoraState) -> None:
        """Store (or replace) the adapter for ``alpha``; evicts the least recently used beyond capacity."""
        self._entries[alpha] = state
        self._entries.move_to_end(alpha)
        if self.directory:
            self._save_entry(alpha, state)
        while len(self._entries) > self.capacity:
            old, _ = self._entries.popitem(last=False)
            info = self._files.pop(old, None)
            if self.directory and info:
                (self.directory / info["file"]).unlink(missing_ok=True)
            log.info("adapter bank: evicted alpha=%d (capacity %d)", old, self.capacity)
        if self.directory:
            self._write_manifest()

    # ------------------------------------------------------------ persistence

    def _save_entry(self, alpha: int, state: LoraState) -> None:
        name = f"alpha-{alpha:04d}.pt"
        path = self.directory / name
        tmp = path.with_name(name + ".tmp")
        torch.save(_state_to_tensors(state), tmp)
        os.replace(tmp, path)
        data = path.read_bytes()
        self._files[alpha] = {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    def _write_manifest(self) -> None:
        manifest = {"format_version": BANK_FORMAT_VERSION, "fingerprint": self.fingerprint,
                    "model_sha256": self.model_sha, "capacity": self.capacity,
                    "lru": [dict(alpha=a, **self._files[a]) for a in self._entries if a in self._files]}
        path = self.directory / MANIFEST
        tmp = path.with_name(MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, path)

    def _load(self) -> None:
        path = self.directory / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise AdapterBankError(f"{path}: unreadable ({e})") from e
        if not isinstance(manifest, dict) or manifest.get("format_version") != BANK_FORMAT_VERSION:
            got = manifest.get("format_version") if isinstance(manifest, dict) else None
            raise AdapterBankError(f"{path}: bank format version {got!r}, this build reads version "
                                   f"{BANK_FORMAT_VERSION}; move the directory away to start a new bank")
        if manifest.get("fingerprint") != self.fingerprint or manifest.get("model_sha256") != self.model_sha:
            raise AdapterBankError(f"{path}: the bank was built for other artifacts (basis "
                                   f"{str(manifest.get('fingerprint'))[:12]}..., model "
                                   f"{str(manifest.get('model_sha256'))[:12]}...) than the RX's (basis "
                                   f"{self.fingerprint[:12]}..., model {self.model_sha[:12]}...); "
                                   "use another --adapter-bank directory")
        for entry in manifest.get("lru", []):
            try:
                alpha, name, digest = int(entry["alpha"]), str(entry["file"]), str(entry["sha256"])
            except (KeyError, TypeError, ValueError) as e:
                raise AdapterBankError(f"{path}: bad entry {entry!r}") from e
            file = self.directory / Path(name).name
            if not file.exists():
                raise AdapterBankError(f"{file}: listed in {MANIFEST} but missing")
            data = file.read_bytes()
            actual = hashlib.sha256(data).hexdigest()
            if actual != digest:
                raise AdapterBankError(f"{file}: sha256 {actual[:12]}... does not match {MANIFEST} "
                                       f"({digest[:12]}...); the file is corrupt or replaced")
            try:
                tensors = torch.load(file, weights_only=True, map_location="cpu")
            except Exception as e:  # torch raises several classes for a bad file
                raise AdapterBankError(f"{file}: cannot be read as plain tensors ({e})") from e
            if not isinstance(tensors, dict):
                raise AdapterBankError(f"{file}: expected a dict of tensors")
            self._entries[alpha] = _state_from_tensors(tensors, str(file))
            self._files[alpha] = {"file": file.name, "sha256": digest, "bytes": len(data)}
        while len(self._entries) > self.capacity:
            old, _ = self._entries.popitem(last=False)
            self._files.pop(old, None)
        log.info("adapter bank %s: %d adapters loaded (alphas %s)", self.directory, len(self._entries),
                 sorted(self._entries))


class BankedAlignment(AlignmentStrategy):
    """LoRA alignment that warm-starts from, and stores into, an :class:`AdapterBank`.

    Exact alpha in the bank: ``warm_steps`` steps from its adapter. Otherwise
    the nearest stored alpha's adapter is the starting point (the first
    layer's ``A`` lives in ``d_raw`` space, so it carries across alphas), with
    the full step count. The report says which.
    """

    name = "lora"

    def __init__(self, inner: LoraAlignment, bank: AdapterBank):
        self.inner = inner
        self.bank = bank

    def adapt(self, model: nn.Sequential, z: np.ndarray, y: np.ndarray, codec: Codec
              ) -> tuple[nn.Sequential, AdaptReport]:
        alpha = int(z.shape[1])
        exact = self.bank.get(alpha)
        if exact is not None:
            init, init_alpha, steps = exact, alpha, self.inner.config.warm_steps
        else:
            near = self.bank.nearest(alpha)
            init, init_alpha = (near[1], near[0]) if near else (None, None)
            steps = None
        merged, report, state = self.inner.adapt_state(model, z, y, codec, init=init,
                                                       init_alpha=init_alpha, steps=steps)
        if report.kept == "adapted" and state is not None:
            self.bank.put(alpha, state)
        return merged, report
