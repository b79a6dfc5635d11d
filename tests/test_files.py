"""common/files.py: atomic writes, json_safe, read_jsonl, free_port, TOML by tomli_w."""

import json
import socket
import tomllib
from pathlib import Path

import numpy as np
import pytest

from common.files import (atomic_write, atomic_write_bytes, atomic_write_json, free_port, json_safe, read_jsonl,
                          toml_value, write_toml)


def test_atomic_write_replaces_and_leaves_no_tmp(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    atomic_write_bytes(p, b"new", fsync_dir=True)
    assert p.read_bytes() == b"new" and sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]


def test_atomic_write_keeps_old_content_when_the_writer_fails(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def half(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(p, half)
    assert p.read_bytes() == b"old" and [q.name for q in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_mode(tmp_path):
    p = atomic_write_bytes(tmp_path / "secret", b"x", mode=0o600)
    assert p.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("value, expected", [
    (float("nan"), None), (float("-inf"), None), (1.5, 1.5), (np.float32(2.5), 2.5), (np.float32("nan"), None),
    (np.int64(3), 3), (np.arange(3), [0, 1, 2]), ((1, float("inf")), [1, None]), (Path("/a/b"), "/a/b"),
    ({1: {"x": float("nan")}}, {"1": {"x": None}}), ("s", "s"), (None, None), (True, True),
])
def test_json_safe(value, expected):
    got = json_safe(value)
    assert got == expected and type(got) is type(expected)
    json.dumps(got, allow_nan=False)


def test_atomic_write_json_is_strict_json(tmp_path):
    p = atomic_write_json(tmp_path / "r.json", {"acc": float("nan"), "n": np.int32(4)})
    assert json.loads(p.read_text()) == {"acc": None, "n": 4}


def test_read_jsonl_skips_a_torn_last_line_and_refuses_a_torn_middle(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3, "b"')
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    p.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(p)


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("value", [True, 0, -7, 0.1, 1e-30, "plain", 'q"uote\\back\nline', "ü"])
def test_toml_value_round_trips(value):
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_toml_value_refuses_non_scalars():
    with pytest.raises(TypeError):
        toml_value([1])


def test_write_toml_round_trips(tmp_path):
    doc = {"a": 1, "superlink": {"default": "x", "x": {"address": "127.0.0.1:9", "insecure": True}}}
    assert tomllib.loads(write_toml(tmp_path / "c.toml", doc).read_text()) == doc
