"""Integrity: nothing loads through an unrestricted unpickler."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("common", "rx_node", "tx_node", "semalign") for p in (ROOT / d).rglob("*.py")]


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
