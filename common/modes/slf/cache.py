"""The TX's kept alignments (beyond the paper): what a returning TX needs to skip steps 1-3.

After an alignment the RX keeps the aligned decoder under a random
credential that it returns in the upload's RESULT (``common/modes/slf/rx.py``).
The TX keeps, in a directory of its own, the other half: its fine-tuned
transceiver ``TRX'_ij`` (the encoder and codebook it must send with for that
decoder to understand it) and the credential. A later TX process with the
same directory, talking to the same RX, sends SLF_RESUME with the credential
instead of downloading, fine-tuning and uploading.

An entry is keyed by what makes an alignment valid: the RX's decoder weights
(its ``decoder_fingerprint`` HELLO parameter), this TX's own weights, the eps
it was fine-tuned for, the download dtype, and ``l``. Files per entry:
``<key>-l<l>.pt`` (a plain tensor state dict, loaded with
``weights_only=True``) and ``<key>-l<l>.json`` (the credential in hex, the
state's fingerprint, how it was made). Both are created mode 0600 in a 0700
directory: the credential is a bearer secret (see ``docs/modes/slf.md``,
"Kept alignments").
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from common.artifacts import load_tensors
from common.files import atomic_write, atomic_write_bytes
from common.modes.slf.artifacts import state_fingerprint
from common.modes.slf.transceiver import DECODER_LAYERS, Transceiver

log = logging.getLogger("semalign.tx")
CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CachedAlignment:
    """One kept alignment: ``model`` (the fine-tuned transceiver to send with), ``credential`` (the RX's
    secret), ``n_frozen``, and ``meta`` (JSON-able: how it was made)."""

    key: str
    n_frozen: int
    model: Transceiver
    credential: bytes
    meta: dict


def alignment_key(rx_decoder_fingerprint: str, own_fingerprint: str, eps: float, download_dtype: str) -> str:
    """Hex key of the alignments valid for this (RX decoder, TX transceiver, eps, download dtype)."""
    spec = json.dumps({"rx": rx_decoder_fingerprint, "tx": own_fingerprint, "eps": float(eps),
                       "dtype": download_dtype, "v": CACHE_FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:32]


class AlignmentCache:
    """The directory of kept alignments (created 0700 when missing)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _paths(self, key: str, n_frozen: int) -> tuple[Path, Path]:
        return self.dir / f"{key}-l{n_frozen}.pt", self.dir / f"{key}-l{n_frozen}.json"

    def save(self, key: str, n_frozen: int, model: Transceiver, credential: bytes, meta: dict) -> None:
        """Keep the alignment; entries of ``key`` at other ``l`` go (the RX retired their credentials when this
        session re-aligned, or they are older)."""
        for l in range(len(DECODER_LAYERS) + 1):
            if l != n_frozen:
                self.remove(key, l)
        state = {k: t.detach().cpu().contiguous().clone() for k, t in model.state_dict().items()}
        pt, js = self._paths(key, n_frozen)
        atomic_write(pt, lambda f: torch.save(state, f), mode=0o600)
        record = {"format_version": CACHE_FORMAT_VERSION, "n_frozen": n_frozen, "credential": credential.hex(),
                  "fingerprint": state_fingerprint(state), "saved_at": time.time(), **meta}
        atomic_write_bytes(js, json.dumps(record, indent=2).encode(), mode=0o600)

    def lookup(self, key: str, like: Transceiver, n_frozen: int | None = None) -> CachedAlignment | None:
        """The kept alignment for ``key`` and ``n_frozen`` (None: any ``l``, the smallest first), or None.

        ``like``: a transceiver of the right shape to load into. An entry
        that does not load or verify (a damaged or refused file, a record of
        another format, weights that do not match it) is removed (logged) and
        skipped, never raised.
        """
        ls = [n_frozen] if n_frozen is not None else range(len(DECODER_LAYERS) + 1)
        for l in ls:
            pt, js = self._paths(key, l)
            if not (pt.exists() and js.exists()):
                continue
            try:
                meta = json.loads(js.read_text())
                state = load_tensors(pt)  # ArtifactError (a RuntimeError) for a damaged or refused file
                if not isinstance(meta, dict):
                    raise ValueError(f"{js} is not a JSON object")
                if meta.get("format_version") != CACHE_FORMAT_VERSION or meta.get("n_frozen") != l:
                    raise ValueError("another format or l")
                if state_fingerprint(state) != meta.get("fingerprint"):
                    raise ValueError("weights do not match their fingerprint")
                credential = bytes.fromhex(meta["credential"])
                model = Transceiver(like.shape)
                model.load_state_dict(state)
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
                log.warning("kept alignment %s unusable (%s); removing it", pt, e)
                self.remove(key, l)
                continue
            return CachedAlignment(key, l, model.eval(), credential, meta)
        return None

    def remove(self, key: str, n_frozen: int) -> None:
        for p in self._paths(key, n_frozen):
            p.unlink(missing_ok=True)
