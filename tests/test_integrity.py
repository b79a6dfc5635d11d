"""Integrity: checksummed, versioned tensor files; nothing loads through an unrestricted unpickler."""

import json
import re
from pathlib import Path

import pytest
import torch

from common.artifacts import ArtifactError, load_tensors, save_tensors

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("common", "rx_node", "tx_node", "semalign") for p in (ROOT / d).rglob("*.py")]


def test_tensor_file_round_trip(tmp_path):
    tensors = {"A": torch.randn(4, 8), "B": torch.zeros(8, 4, dtype=torch.float16)}
    side = save_tensors(tmp_path / "bank" / "alpha-12.pt", tensors, {"alpha": 12})
    got, meta = load_tensors(tmp_path / "bank" / "alpha-12.pt")
    assert meta == {"alpha": 12} and side["tensors"]["B"] == {"shape": [8, 4], "dtype": "float16"}
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)


@pytest.mark.parametrize("damage,needle", [
    ("flip a byte", "sha256"),
    ("other version", "format version 99"),
    ("no sidecar", "missing"),
    ("sidecar garbage", "unreadable"),
])
def test_damaged_tensor_file_refused_with_a_clear_message(tmp_path, damage, needle):
    path = tmp_path / "t.pt"
    save_tensors(path, {"w": torch.ones(3)})
    side = path.with_name("t.pt.json")
    if damage == "flip a byte":
        raw = bytearray(path.read_bytes())
        raw[-20] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "other version":
        doc = json.loads(side.read_text())
        doc["format_version"] = 99
        side.write_text(json.dumps(doc))
    elif damage == "no sidecar":
        side.unlink()
    else:
        side.write_text("{not json")
    with pytest.raises(ArtifactError, match=needle):
        load_tensors(path)


def test_save_tensors_refuses_non_tensors(tmp_path):
    with pytest.raises(TypeError, match="torch.Tensor"):
        save_tensors(tmp_path / "x.pt", {"w": [1, 2]})


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unrestricted_unpickling(path):
    text = path.read_text()
    assert not re.search(r"\bpickle\.loads?\(", text), "plain pickle.load: use a restricted Unpickler"
    assert "allow_pickle=True" not in text
    for fn, needed in (("torch.load(", "weights_only=True"), ("np.load(", "allow_pickle=False")):
        for m in re.finditer(re.escape(fn), text):
            call = text[m.start():m.start() + 160]  # the call and its arguments
            assert needed in call, call
    if "pickle.Unpickler" in text:
        assert "def find_class" in text, "an Unpickler subclass must restrict find_class"
