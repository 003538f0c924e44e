"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dcrec.models.metrics import (
    RankingEvaluator,
    head_and_tail,
    hit_rate_at,
    ndcg_at,
    rank_of_positive,
    row_auc,
)

# column 0 is the true item
SCORES = np.array([
    [0.9, 0.1, 0.5, 0.3],   # best: rank 1
    [0.2, 0.3, 0.1, 0.0],   # one above: rank 2
    [0.5, 0.5, 0.5, 0.1],   # two ties count against it: rank 3
    [0.0, 0.1, 0.2, 0.3],   # last: rank 4
])


def test_rank_counts_ties_against_the_true_item():
    assert rank_of_positive(SCORES).tolist() == [1, 2, 3, 4]


def test_a_constant_scorer_gets_the_worst_rank():
    assert rank_of_positive(np.zeros((2, 101))).tolist() == [101, 101]


def test_hit_rate_and_ndcg_by_hand():
    ranks = np.array([1, 2, 3, 4])
    assert hit_rate_at(ranks, 1).tolist() == [1, 0, 0, 0]
    assert hit_rate_at(ranks, 3).tolist() == [1, 1, 1, 0]
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(4), 0.0]
    assert ndcg_at(ranks, 3) == pytest.approx(expected)


def test_row_auc_by_hand():
    # row 0: 3 of 3 below; row 1: 2 of 3; row 2: 1 below + 2 ties -> (1 + 1) / 3; row 3: 0
    assert row_auc(SCORES) == pytest.approx([1.0, 2 / 3, 2 / 3, 0.0])


def test_evaluator_summary_by_hand_and_independent_of_batching():
    users = np.array([0, 0, 1, 2])
    one = RankingEvaluator()
    one.add(users, SCORES)
    split = RankingEvaluator()
    split.add(users[:1], SCORES[:1])
    split.add(users[1:], SCORES[1:])
    summary = one.summary()
    assert summary == split.summary()
    assert summary["HR@1"] == pytest.approx(0.25)
    assert summary["HR@5"] == pytest.approx(1.0)
    assert summary["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert summary["NDCG@5"] == pytest.approx(
        (1 + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)) / 4)
    assert summary["AUC"] == pytest.approx((1 + 2 / 3 + 2 / 3 + 0) / 4)
    # UAUC: user 0 mean (1 + 2/3) / 2, user 1: 2/3, user 2: 0
    assert summary["UAUC"] == pytest.approx(((1 + 2 / 3) / 2 + 2 / 3 + 0) / 3)


def test_empty_evaluator_reports_nan_not_zero():
    assert all(math.isnan(v) for v in RankingEvaluator().summary().values())


def test_head_and_tail_by_hand():
    """Four users, one row each, two activity groups: the two most active users are
    the head, the two least active the tail."""
    evaluator = RankingEvaluator()
    # user AUCs: 1.0, 0.5, 0.0, 0.75 (row AUC against four negatives)
    evaluator.add(np.array([0, 1, 2, 3]), np.array([
        [5.0, 1.0, 1.0, 1.0, 1.0],
        [2.0, 1.0, 1.0, 3.0, 3.0],
        [0.0, 1.0, 1.0, 1.0, 1.0],
        [2.0, 1.0, 1.0, 1.0, 3.0],
    ]))
    activity = np.array([1, 9, 3, 7])  # most active first: users 1, 3 | 2, 0
    groups = evaluator.activity_groups(activity, n_groups=4)
    assert [g["macro_auc"] for g in groups] == [0.5, 0.75, 0.0, 1.0]
    assert head_and_tail(groups) == {"macro-AUC head": 0.625, "macro-AUC tail": 0.5}


def test_segments_split_the_rows_at_the_given_counts_by_hand():
    evaluator = RankingEvaluator()
    evaluator.add(np.array([0, 1]), SCORES[:2])       # ranks 1, 2
    evaluator.add(np.array([2, 3]), SCORES[2:])       # ranks 3, 4
    # cuts before row 1 and (twice, an empty segment) before row 3
    segments = evaluator.segments([1, 3, 3])
    assert [(s["segment"], s["rows"]) for s in segments] == [(0, 1), (1, 2), (3, 1)]
    assert segments[0]["NDCG@10"] == 1.0
    assert segments[1]["NDCG@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2)
    assert segments[2]["HR@10"] == 1.0 and segments[2]["AUC"] == 0.0
    assert segments[1]["AUC"] == pytest.approx(np.mean(row_auc(SCORES[1:3])))
