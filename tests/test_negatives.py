"""Evaluation negatives: fixed by seed and stream position, never a touched item."""

from __future__ import annotations

import numpy as np
from dcrec.replay.negatives import NegativeSampler

USERS = np.array([0, 0, 1, 0, 1, 0])
ITEMS = np.array([5, 6, 5, 7, 8, 9])
POSITIONS = np.array([0, 3, 4, 10, 11, 12])


def test_same_candidates_however_the_stream_is_cut():
    sampler = NegativeSampler(50, 20, seed=3)
    whole = sampler.sample(POSITIONS, USERS, ITEMS)
    parts = np.vstack([sampler.sample(POSITIONS[:2], USERS[:2], ITEMS[:2]),
                       sampler.sample(POSITIONS[2:], USERS[2:], ITEMS[2:])])
    assert (whole == parts).all()
    assert (whole[:, 0] == ITEMS).all()
    assert whole.shape == (6, 21)
    assert not (NegativeSampler(50, 20, seed=4).sample(POSITIONS, USERS, ITEMS) == whole).all()


def test_the_true_item_is_never_a_negative():
    sampler = NegativeSampler(12, 10, seed=0)
    out = sampler.sample(np.arange(200), np.zeros(200, dtype=np.int64), np.arange(200) % 12)
    assert not (out[:, 1:] == out[:, :1]).any()


def test_offline_negatives_exclude_every_click_of_the_user():
    sampler = NegativeSampler.for_log(USERS, ITEMS, n_items=12, n_negatives=8, seed=1)
    out = sampler.sample(np.arange(300), np.zeros(300, dtype=np.int64), np.full(300, 5))
    assert not np.isin(out[:, 1:], [5, 6, 7, 9]).any()
    assert np.isin(out[:, 1:], [8]).any()  # user 1's click is fair game for user 0


def test_prequential_negatives_exclude_only_clicks_before_the_event():
    sampler = NegativeSampler.for_log(USERS, ITEMS, n_items=12, n_negatives=8, seed=1,
                                      positions=POSITIONS)
    # between positions 4 and 9 user 0 has touched items 5 and 6, not yet 7 or 9
    early = sampler.sample(np.arange(4, 10), np.zeros(6, dtype=np.int64), np.full(6, 11))
    assert not np.isin(early[:, 1:], [5, 6, 11]).any()
    assert np.isin(early[:, 1:], [7]).any() and np.isin(early[:, 1:], [9]).any()
    # after position 12 items 5, 6, 7 and 9 are all history
    late = sampler.sample(np.arange(13, 313), np.zeros(300, dtype=np.int64), np.full(300, 11))
    assert not np.isin(late[:, 1:], [5, 6, 7, 9, 11]).any()
