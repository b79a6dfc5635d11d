"""The adapter bank survives kill -9 mid-write; a bad entry is skipped, never fatal."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from common.learn.lora import LoraConfig, init_adapters
from common.modes.pca_lora.adapter_bank import MANIFEST, AdapterBank, AdapterBankError, owner_digest

ROOT = Path(__file__).resolve().parents[1]
TX = "tx-key"  # the one owner of the tests below
OK = owner_digest(TX)


def _open(*args):
    """``TX``'s view of the bank ``AdapterBank(*args)`` (``.bank``: the bank)."""
    return AdapterBank(*args).owner(TX)


def _state(seed=0):
    weights = [torch.zeros(16, 8), torch.zeros(4, 16)]
    return init_adapters(weights, (0, 1), LoraConfig(2, 4.0), True, torch.Generator().manual_seed(seed))


# A zygote: imports torch once, then forks one writer per "go" line. Each writer opens the bank
# (capacity 3) and puts adapters for 2 owners x 5 alphas in a loop, so writes, replacements and evictions
# interleave, until the test SIGKILLs it. The zygote reaps it and says "dead".
_ZYGOTE = r"""
import os, sys, random, torch
from common.learn.lora import LoraConfig, init_adapters
from common.modes.pca_lora.adapter_bank import AdapterBank
bank_dir = sys.argv[1]
OWNERS = ("a" * 32, "b" * 32)  # two owners' adapters interleave
weights = [torch.zeros(64, 32), torch.zeros(10, 64)]
zygote = os.getpid()
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            bank = AdapterBank(3, "fp", "model", bank_dir)
            os.write(1, b"writing %d\n" % os.getpid())  # one write: no interleaving with the zygote
            rng = random.Random(os.getpid())
            i = 0
            while os.getppid() == zygote:  # an orphan stops by itself
                i += 1
                state = init_adapters(weights, (0, 1), LoraConfig(4, 8.0), True, torch.Generator().manual_seed(i))
                bank.put(rng.choice(OWNERS), rng.choice((8, 12, 16, 20, 24)), state)
        except BaseException as e:
            os.write(1, ("error %s %s\n" % (type(e).__name__, e)).replace("\n", " ").encode() + b"\n")
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    os.write(1, b"dead %d\n" % status)
"""


def test_bank_always_loads_after_kill_9_mid_write(tmp_path, caplog):
    """Today's bank (fixed names replaced in place, manifest after unlink, no fsync) is unloadable after some kills."""
    bank_dir = tmp_path / "bank"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    zygote = subprocess.Popen([sys.executable, "-c", _ZYGOTE, str(bank_dir)], env=env, cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rng = random.Random(12)
    seen_sizes = []
    writer = None
    try:
        for kill in range(30):
            zygote.stdin.write("go\n")
            zygote.stdin.flush()
            line = zygote.stdout.readline().split()
            assert line[:1] == ["writing"], f"kill {kill}: writer could not open the bank: {line}"
            writer = int(line[1])
            time.sleep(rng.uniform(0.0, 0.08))  # a few puts, killed anywhere inside one
            os.kill(writer, signal.SIGKILL)
            writer = None
            dead = zygote.stdout.readline().split()
            assert dead[0] == "dead" and os.WIFSIGNALED(int(dead[1])), dead

            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="semalign.bank"):
                bank = AdapterBank(3, "fp", "model", bank_dir)  # must not raise
            assert not bank.skipped, f"kill {kill}: entries lost: {bank.skipped}"
            assert not caplog.records
            for okey in ("a" * 32, "b" * 32):
                for alpha in bank.alphas(okey):
                    assert bank.get(okey, alpha) is not None
            seen_sizes.append(len(bank))
            leftovers = [p.name for p in bank_dir.iterdir() if p.name.endswith(".tmp")]
            assert not leftovers
            listed = {e["file"] for e in json.loads((bank_dir / MANIFEST).read_text())["lru"]}
            assert {p.name for p in bank_dir.glob("*.pt")} == listed
    finally:
        if writer is not None:
            os.kill(writer, signal.SIGKILL)
        zygote.stdin.close()
        zygote.kill()
        zygote.wait()
    assert max(seen_sizes) == 3  # the writers did get through puts and evictions


def _bank_with(tmp_path, *alphas):
    bank = _open(4, "fp", "model", tmp_path)
    for a in alphas:
        bank.put(a, _state(a))
    return bank


@pytest.mark.parametrize("damage, why", [
    (lambda f: f.write_bytes(f.read_bytes() + b"x"), "sha256"),
    (lambda f: f.unlink(), "missing"),
    (lambda f: f.write_bytes(b""), "sha256"),
])
def test_bad_entry_is_skipped_with_a_warning_not_fatal(tmp_path, caplog, damage, why):
    _bank_with(tmp_path, 10, 20)
    damage(tmp_path / f"{OK}-alpha-0010.pt")
    with caplog.at_level(logging.WARNING, logger="semalign.bank"):
        bank = _open(4, "fp", "model", tmp_path)
    assert bank.alphas() == [20]
    assert [s[0] for s in bank.bank.skipped] == [10] and why in bank.bank.skipped[0][2]
    assert "skipping alpha=10" in caplog.text and why in caplog.text
    # the manifest was rewritten: the next start is clean; a damaged file is kept aside as *.corrupt
    assert _open(4, "fp", "model", tmp_path).bank.skipped == []
    if why == "sha256":
        assert (tmp_path / f"{OK}-alpha-0010.pt.corrupt").exists()


def test_entry_that_is_not_tensors_is_skipped(tmp_path):
    import hashlib

    _bank_with(tmp_path, 10, 20)
    junk = b"not a torch file"
    (tmp_path / f"{OK}-alpha-0020.pt").write_bytes(junk)
    m = json.loads((tmp_path / MANIFEST).read_text())
    for e in m["lru"]:
        if e["alpha"] == 20:
            e["sha256"] = hashlib.sha256(junk).hexdigest()  # a matching digest, but not a tensor file
    m["lru"].append({"alpha": "x"})                         # and a malformed entry
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    bank = _open(4, "fp", "model", tmp_path)
    assert bank.alphas() == [10]
    assert len(bank.bank.skipped) == 2


def test_manifest_level_problems_stay_fatal(tmp_path):
    _bank_with(tmp_path, 10)
    with pytest.raises(AdapterBankError, match="other artifacts"):
        _open(4, "other-fp", "model", tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(AdapterBankError, match="unreadable.*new bank"):
        _open(4, "fp", "model", tmp_path)


def test_replacing_an_alpha_never_overwrites_the_listed_file(tmp_path):
    bank = _bank_with(tmp_path, 10)
    first = json.loads((tmp_path / MANIFEST).read_text())["lru"][0]["file"]
    bank.put(10, _state(99))
    second = json.loads((tmp_path / MANIFEST).read_text())["lru"][0]["file"]
    assert first != second and not (tmp_path / first).exists()
    bank.put(10, _state(7))
    assert json.loads((tmp_path / MANIFEST).read_text())["lru"][0]["file"] == first
    got = _open(4, "fp", "model", tmp_path).get(10)
    torch.testing.assert_close(got.A[0], _state(7).A[0])


def test_leftovers_of_an_interrupted_write_are_removed(tmp_path):
    _bank_with(tmp_path, 10)
    (tmp_path / f"{OK}-alpha-0030.pt.tmp").write_bytes(b"half")
    (tmp_path / f"{OK}-alpha-0040.pt").write_bytes(b"written, never listed")
    (tmp_path / "manifest.json.tmp").write_text("{")
    (tmp_path / f"{OK}-alpha-0050.pt.k3x_9q.tmp").write_bytes(b"half")  # atomic_write's unique temporary name
    (tmp_path / "manifest.json.a1b2c3.tmp").write_text("{")
    (tmp_path / "notes.txt").write_text("not ours")
    bank = _open(4, "fp", "model", tmp_path)
    assert bank.alphas() == [10] and not bank.bank.skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{OK}-alpha-0010.pt", "manifest.json", "notes.txt"]
