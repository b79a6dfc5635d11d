"""The look-ahead alpha policy and its accuracy table."""

from __future__ import annotations

import json

import pytest

from common.modes.pca_lora.budget import PayloadLayout, n_train_max
from common.modes.pca_lora.policy import (
    AccuracyTable,
    BudgetView,
    LookaheadPolicy,
    PolicyTableError,
    get_policy,
    largest_fitting,
)

LAYOUT = PayloadLayout.for_dtype("float16")


def _table(tmp_path, alphas):
    path = tmp_path / "policy_table.json"
    path.write_text(json.dumps({"format_version": 1, "method": "lora", "alphas": alphas}))
    return path


def test_interpolates_in_log_n():
    t = AccuracyTable({20: [(0, 0.90), (99, 0.94), (9999, 0.96)]})
    assert t.expected(20, 0) == pytest.approx(0.90)
    assert t.expected(20, 99) == pytest.approx(0.94)
    assert t.expected(20, 999) == pytest.approx(0.95)
    assert t.expected(20, 10**6) == pytest.approx(0.96)  # held beyond the last point


def test_picks_best_expected_accuracy_not_largest():
    table = AccuracyTable({40: [(0, 0.97), (10000, 0.975)], 200: [(0, 0.98), (2000, 0.98)],
                           20: [(0, 0.94), (20000, 0.965)]})
    policy = LookaheadPolicy(table)
    big = BudgetView(1_063_000, 200, 500, 2000, LAYOUT)
    assert policy(big) == 200
    # a deep fade: alpha 200 cannot carry the test vectors; 40 beats 20
    small = BudgetView(150_000, 200, 500, 2000, LAYOUT)
    scores = policy.scores(small)
    assert 200 not in scores and scores[40][0] == n_train_max(150_000, 40, 500, LAYOUT)
    assert policy(small) == 40


def test_falls_back_to_largest_when_nothing_tabulated_fits():
    policy = LookaheadPolicy(AccuracyTable({200: [(0, 0.98)]}))
    view = BudgetView(100_000, 200, 500, 0, LAYOUT)
    assert policy(view) == largest_fitting(view)


def test_get_policy(tmp_path):
    path = _table(tmp_path, {"20": [[0, 0.9], [100, 0.95]]})
    assert isinstance(get_policy("lookahead", path), LookaheadPolicy)
    assert get_policy("fixed:30")(BudgetView(10**6, 20, 10, 0, LAYOUT)) == 20
    with pytest.raises(ValueError, match="needs --policy-table"):
        get_policy("lookahead")
    with pytest.raises(ValueError, match="fixed:N"):
        get_policy("fixed:x")
    with pytest.raises(ValueError, match="unknown alpha policy"):
        get_policy("nope")


@pytest.mark.parametrize("body, match", [
    ({"format_version": 2, "alphas": {}}, "format version 2"),
    ({"format_version": 1, "alphas": {"20": [[0, 1.5]]}}, "accuracy in"),
    ({"format_version": 1}, "malformed"),
])
def test_bad_tables_refused(tmp_path, body, match):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(body))
    with pytest.raises(PolicyTableError, match=match):
        AccuracyTable.load(path)
