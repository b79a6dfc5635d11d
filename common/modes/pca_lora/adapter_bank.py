"""An RX that remembers: a bounded LRU bank of adapters (any recipe's :class:`LoraState`) keyed by
owner and alpha.

The owner is who trained an adapter: the RX session's owner (its TX's CURVE
key; on a plain socket the digest of its HELLO credential), so one key's
payloads never change what another key's rounds use; a session bound to
nothing (a plain HELLO without a credential) keeps nothing. ``--bank-shared``
makes every session one owner (:data:`SHARED`: the operator trusts every key
it admits). :meth:`AdapterBank.owner` is one owner's view, which
:class:`~common.modes.pca_lora.banked_alignment.BankedAlignment` adapts through.

Within an owner, a new alpha warm-starts from the adapter of the nearest
stored alpha; a returning alpha reuses its own adapter without training when
the hold-out check accepts it (``AdaptConfig.warm_steps = 0``; else continues
from it for that many steps), and needs no training vectors at all: the RX
announces the owner's stored alphas to its TX. Every adapter kept is stored
back. ``capacity`` bounds the adapters of all owners together (least recently
used evicted first): a busy key can evict another key's adapters (they are
trained again), never change them.

Persistence (``directory``): one ``<owner>-alpha-XXXX.pt`` per adapter
(``<owner>``: 32 hex digits of the owner's sha256; a flat dict of plain
tensors, written with ``torch.save`` and read with
``torch.load(weights_only=True)``) and ``manifest.json`` with the format
version, the codec fingerprint and model digest the adapters belong to, and the
owner digest, alpha, sha256, size and LRU order of every file.

Crash safety: every file is written to a temporary file in the same directory,
fsynced and renamed into place; an adapter never overwrites the file the
current manifest points to (a replaced adapter alternates between
``...-alpha-XXXX.pt`` and ``...-alpha-XXXX-1.pt``); the manifest is written last (same
way) and the directory fsynced, and only then are the files it no longer lists
removed. ``kill -9`` or a power cut at any point leaves the previous or the new
bank, both complete. Leftovers (temporary or unlisted files) are removed on load.

Loading: a bank written for other artifacts, by another format version (version
1 kept one adapter per alpha for every key: it is refused, not migrated, as
nothing says whose its adapters were), or whose manifest is unreadable is
refused with :class:`AdapterBankError` naming the problem (the RX must not
silently start from someone else's adapters). An entry whose file is missing,
does not match its sha256 or cannot be read as plain tensors is skipped with a
warning (the file is renamed ``*.corrupt``), never fatal;
:attr:`AdapterBank.skipped` lists what was skipped and why.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from common.artifacts import load_tensors
from common.files import atomic_write_bytes
from common.learn.lora import LoraState

BANK_FORMAT_VERSION = 2  # 2: adapters keyed by (owner, alpha); 1 (refused): by alpha, shared by every key
MANIFEST = "manifest.json"
SHARED = "shared"  # the one owner of every session under --bank-shared
_OWN_FILE = re.compile(r"^([0-9a-f]{32}-alpha-\d+(-1)?\.pt|([0-9a-f]{32}-alpha-\d+(-1)?\.pt|manifest\.json)(\.\w+)?\.tmp)$")

log = logging.getLogger("semalign.bank")


def owner_digest(owner: str) -> str:
    """What the bank records of ``owner`` (a CURVE key, z85; a credential digest; :data:`SHARED`):
    32 hex digits of its sha256."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


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
    """Adapters by (owner, alpha), at most ``capacity`` of all owners together, least recently used
    evicted first.

    ``directory`` (optional) makes the bank persistent; ``fingerprint`` and
    ``model_sha`` tie it to one codec and one frozen model. Owners are
    recorded as :func:`owner_digest` (``okey`` below).
    """

    def __init__(self, capacity: int, fingerprint: str, model_sha: str,
                 directory: str | Path | None = None):
        if capacity < 1:
            raise ValueError(f"bank capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.fingerprint = fingerprint
        self.model_sha = model_sha
        self.directory = Path(directory) if directory else None
        self._entries: OrderedDict[tuple[str, int], LoraState] = OrderedDict()  # (okey, alpha), LRU first
        self._files: dict[tuple[str, int], dict] = {}
        self.skipped: list[tuple] = []  # (alpha, file, why) of entries skipped on load
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)
            if (self.directory / MANIFEST).exists():
                self._load()
            else:
                self._write_manifest()

    def owner(self, owner: str) -> "OwnerBank":
        """The view of ``owner``'s adapters (what
        :class:`~common.modes.pca_lora.banked_alignment.BankedAlignment` reads and writes)."""
        return OwnerBank(self, owner_digest(owner))

    # ------------------------------------------------------------ lookup

    def __len__(self) -> int:
        return len(self._entries)

    def alphas(self, okey: str) -> list[int]:
        """Owner ``okey``'s stored alphas, least recently used first."""
        return [a for o, a in self._entries if o == okey]

    def get(self, okey: str, alpha: int) -> LoraState | None:
        """Owner ``okey``'s adapter for exactly ``alpha`` (marks it recently used)."""
        state = self._entries.get((okey, alpha))
        if state is not None:
            self._entries.move_to_end((okey, alpha))
        return state

    def nearest(self, okey: str, alpha: int) -> tuple[int, LoraState] | None:
        """``(stored alpha, adapter)`` of owner ``okey`` closest to ``alpha`` (ties: the larger alpha), or None."""
        mine = self.alphas(okey)
        if not mine:
            return None
        best = min(mine, key=lambda a: (abs(a - alpha), -a))
        self._entries.move_to_end((okey, best))
        return best, self._entries[(okey, best)]

    # ------------------------------------------------------------ update

    def put(self, okey: str, alpha: int, state: LoraState) -> None:
        """Store (or replace) owner ``okey``'s adapter for ``alpha``; evicts the least recently used
        adapter (of any owner) beyond capacity.

        With a directory, the adapter's file is on disk (fsynced) before the
        manifest that lists it, and files are removed only once the manifest
        no longer lists them.
        """
        key = (okey, alpha)
        info = self._save_entry(key, state) if self.directory else None
        obsolete = []
        if info is not None:
            old = self._files.get(key)
            if old and old["file"] != info["file"]:
                obsolete.append(old["file"])
            self._files[key] = info
        self._entries[key] = state
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            old_key, _ = self._entries.popitem(last=False)
            old_info = self._files.pop(old_key, None)
            if old_info:
                obsolete.append(old_info["file"])
            log.info("adapter bank: evicted owner %s... alpha=%d (capacity %d)", old_key[0][:8], old_key[1],
                     self.capacity)
        if self.directory:
            self._write_manifest()  # the commit point
            for name in obsolete:
                (self.directory / name).unlink(missing_ok=True)

    # ------------------------------------------------------------ persistence

    def _save_entry(self, key: tuple[str, int], state: LoraState) -> dict:
        """Write the adapter of ``key = (okey, alpha)`` to a file the committed manifest does not list;
        returns its manifest entry."""
        buf = io.BytesIO()
        torch.save(_state_to_tensors(state), buf)
        data = buf.getvalue()
        current = self._files.get(key, {}).get("file")
        name = f"{key[0]}-alpha-{key[1]:04d}.pt"
        if name == current:
            name = f"{key[0]}-alpha-{key[1]:04d}-1.pt"
        atomic_write_bytes(self.directory / name, data)  # the manifest write syncs the directory
        return {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    def _write_manifest(self) -> None:
        manifest = {"format_version": BANK_FORMAT_VERSION, "fingerprint": self.fingerprint,
                    "model_sha256": self.model_sha, "capacity": self.capacity,
                    "lru": [dict(owner=o, alpha=a, **self._files[(o, a)]) for o, a in self._entries
                            if (o, a) in self._files]}
        atomic_write_bytes(self.directory / MANIFEST, json.dumps(manifest, indent=1).encode(), fsync_dir=True)

    def _skip(self, alpha, file: Path | None, why: str) -> None:
        self.skipped.append((alpha, str(file) if file else None, why))
        log.warning("adapter bank %s: skipping alpha=%s: %s (the RX will train it again)",
                    self.directory, alpha, why)
        if file is not None and file.exists():
            try:
                os.replace(file, file.with_name(file.name + ".corrupt"))
            except OSError:
                pass

    def _load(self) -> None:
        path = self.directory / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise AdapterBankError(f"{path}: unreadable ({e}); move the directory away (or pass another "
                                   "--adapter-bank) to start a new bank") from e
        if not isinstance(manifest, dict) or manifest.get("format_version") != BANK_FORMAT_VERSION:
            got = manifest.get("format_version") if isinstance(manifest, dict) else None
            raise AdapterBankError(f"{path}: bank format version {got!r}, this build reads version "
                                   f"{BANK_FORMAT_VERSION} (adapters kept per TX key; version 1 shared them "
                                   "between keys and cannot say whose they are); move the directory away "
                                   "to start a new bank")
        if manifest.get("fingerprint") != self.fingerprint or manifest.get("model_sha256") != self.model_sha:
            raise AdapterBankError(f"{path}: the bank was built for other artifacts (basis "
                                   f"{str(manifest.get('fingerprint'))[:12]}..., model "
                                   f"{str(manifest.get('model_sha256'))[:12]}...) than the RX's (basis "
                                   f"{self.fingerprint[:12]}..., model {self.model_sha[:12]}...); "
                                   "use another --adapter-bank directory")
        lru = manifest.get("lru", [])
        if not isinstance(lru, list):
            self._skip("?", None, f"{MANIFEST} 'lru' is {type(lru).__name__}, not a list")
            lru = []
        for entry in lru:
            try:
                okey, alpha = str(entry["owner"]), int(entry["alpha"])
                name, digest = str(entry["file"]), str(entry["sha256"])
            except (KeyError, TypeError, ValueError) as e:
                self._skip("?", None, f"bad {MANIFEST} entry {entry!r} ({type(e).__name__})")
                continue
            file = self.directory / Path(name).name
            try:
                data = file.read_bytes()
            except OSError as e:
                self._skip(alpha, None, f"{file}: listed in {MANIFEST} but missing or unreadable ({e})")
                continue
            actual = hashlib.sha256(data).hexdigest()
            if actual != digest:
                self._skip(alpha, file, f"{file}: sha256 {actual[:12]}... does not match {MANIFEST} "
                                        f"({digest[:12]}...); the file is corrupt or replaced")
                continue
            try:
                state = _state_from_tensors(load_tensors(file, AdapterBankError, data), str(file))
            except AdapterBankError as e:
                self._skip(alpha, file, str(e))
                continue
            self._entries[(okey, alpha)] = state
            self._entries.move_to_end((okey, alpha))
            self._files[(okey, alpha)] = {"file": file.name, "sha256": digest, "bytes": len(data)}
        while len(self._entries) > self.capacity:
            old, _ = self._entries.popitem(last=False)
            self._files.pop(old, None)
        if self.skipped:
            self._write_manifest()  # the next start loads cleanly
        self._remove_leftovers()
        log.info("adapter bank %s: %d adapters of %d owners loaded%s", self.directory, len(self._entries),
                 len({o for o, _ in self._entries}), f", {len(self.skipped)} skipped" if self.skipped else "")

    def _remove_leftovers(self) -> None:
        """Temporary files and adapters the manifest does not list (a crash between write and commit)."""
        listed = {info["file"] for info in self._files.values()}
        for p in self.directory.iterdir():
            if _OWN_FILE.match(p.name) and p.name not in listed:
                try:
                    p.unlink()
                except OSError as e:
                    log.warning("adapter bank: cannot remove leftover %s (%s)", p, e)


@dataclass(frozen=True)
class OwnerBank:
    """One owner's adapters in ``bank`` (``okey``: its :func:`owner_digest`): lookups and stores by alpha."""

    bank: AdapterBank
    okey: str

    def __len__(self) -> int:
        return len(self.alphas())

    def alphas(self) -> list[int]:
        return self.bank.alphas(self.okey)

    def get(self, alpha: int) -> LoraState | None:
        return self.bank.get(self.okey, alpha)

    def nearest(self, alpha: int) -> tuple[int, LoraState] | None:
        return self.bank.nearest(self.okey, alpha)

    def put(self, alpha: int, state: LoraState) -> None:
        self.bank.put(self.okey, alpha, state)
