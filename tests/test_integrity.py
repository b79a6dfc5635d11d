"""Integrity: nothing loads through an unrestricted unpickler (an AST check, so no spelling slips past)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("common", "rx_node", "tx_node", "semalign") for p in (ROOT / d).rglob("*.py")]
PICKLE_NAMES = {"load", "loads", "Unpickler", "_Unpickler"}


def _is_const(node: ast.AST | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unpickling_problems(source: str) -> list[str]:
    """Each unrestricted unpickling in ``source``, as ``line: what``.

    Flags any reference to ``pickle.load``/``loads``/``Unpickler`` (however imported or aliased; an
    ``Unpickler`` is allowed only as the base of a class that defines ``find_class``), ``torch.load`` without
    a literal ``weights_only=True`` (``**kwargs`` does not count), and ``np.load`` with ``allow_pickle`` other
    than a literal False.
    """
    tree = ast.parse(source)
    modules: dict[str, str] = {}  # local name -> module (pickle, torch, numpy)
    direct: dict[str, str] = {}   # local name -> "module.attr" imported from a module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                modules[a.asname or a.name.split(".")[0]] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module in ("pickle", "_pickle", "torch", "numpy"):
            for a in node.names:
                direct[a.asname or a.name] = f"{node.module.lstrip('_')}.{a.name}"
    restricted_bases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(isinstance(b, ast.FunctionDef) and b.name == "find_class"
                                                   for b in node.body):
            restricted_bases |= {id(b) for b in node.bases}

    def qualname(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return direct.get(node.id) or (modules.get(node.id) if node.id in modules else None)
        if isinstance(node, ast.Attribute):
            base = qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    problems = []
    for node in ast.walk(tree):
        name = qualname(node) if isinstance(node, (ast.Name, ast.Attribute)) else None
        if name and name.split(".")[0] in ("pickle", "_pickle") and name.split(".")[-1] in PICKLE_NAMES:
            if id(node) not in restricted_bases:
                problems.append(f"{node.lineno}: {name}")
        if isinstance(node, ast.Call):
            fn = qualname(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            if fn == "torch.load" and not _is_const(kw.get("weights_only"), True):
                problems.append(f"{node.lineno}: torch.load without weights_only=True")
            if fn == "numpy.load" and "allow_pickle" in kw and not _is_const(kw["allow_pickle"], False):
                problems.append(f"{node.lineno}: np.load with allow_pickle")
            if fn in ("numpy.load", "torch.load") and None in kw:
                problems.append(f"{node.lineno}: {fn} with **kwargs")
    return problems


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unrestricted_unpickling(path):
    assert unpickling_problems(path.read_text()) == []


@pytest.mark.parametrize("source", [
    "import pickle\npickle.load(f)",
    "import pickle\nx = pickle.loads(\n    blob)",
    "import pickle as p\np.loads(b)",
    "from pickle import loads as safe\nsafe(b)",
    "import pickle\nread = pickle.load\nread(f)",
    "import pickle\npickle.Unpickler(f).load()",
    "import pickle\nclass U(pickle.Unpickler):\n    pass",
    "import torch\ntorch.load(p)",
    "import torch\ntorch.load(p, weights_only=False)",
    "import torch\ntorch.load(p, **opts)",
    "import torch\ntorch.load(\n    " + "a_rather_long_argument_name, " * 8 + "map_location='cpu')\nf(weights_only=True)",
    "import numpy as np\nnp.load(p, allow_pickle=True)",
    "from torch import load\nload(p)",
])
def test_the_check_catches(source):
    assert unpickling_problems(source)


@pytest.mark.parametrize("source", [
    "import torch\ntorch.load(p, weights_only=True, map_location='cpu')",
    "import numpy as np\nnp.load(p)\nnp.load(p, allow_pickle=False)",
    "import pickle\nclass U(pickle.Unpickler):\n    def find_class(self, m, n):\n        raise pickle.UnpicklingError(m)",
    "import pickle\npickle.dumps(x)",
])
def test_the_check_allows(source):
    assert unpickling_problems(source) == []
