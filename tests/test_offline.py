"""Offline splits: leave-last-out and the MC²-SF phases, by hand on a tiny log."""

from __future__ import annotations

import numpy as np
import pytest
from dcrec.replay.log import InteractionLog
from dcrec.replay.offline import EarlyStopping, UserSequences, loo_split, mc2sf_split
from dcrec.replay.offline_runner import markdown_table, run_method, summarise
from dcrec.streams.presets import PresetContext
from dcrec.streams.schema import CLICK, EXPOSURE


def _log() -> InteractionLog:
    # user 0 clicks items 1..14 (14 clicks, interleaved with user 1's 4 clicks 20..23)
    # and has one exposure, which no split may use
    rows = [(0, i, i) for i in range(1, 15)] + [(1, 20 + k, 100 + k) for k in range(4)]
    rows.append((0, 30, 50))
    rows.sort(key=lambda r: r[2])
    user, item, ts = (np.array(c) for c in zip(*rows, strict=True))
    event = np.where(item == 30, EXPOSURE, CLICK).astype(np.int8)
    return InteractionLog(name="toy", user=user, item=item, ts=ts, event=event,
                          user_ids=["a", "b"], item_ids=[str(i) for i in range(31)])


def test_user_sequences_are_time_ordered_clicks_only():
    seqs = UserSequences.from_log(_log())
    assert seqs.lengths.tolist() == [14, 4]
    assert (seqs.items[:14] - 1).tolist() == list(range(1, 15))


def test_leave_last_out():
    split = loo_split(UserSequences.from_log(_log()), max_len=5)
    # test: the last click of each user, history = everything before (window of 5)
    assert (split.test.target - 1).tolist() == [14, 23]
    assert (split.test.history[0] - 1).tolist() == [9, 10, 11, 12, 13]
    assert split.test.lengths.tolist() == [5, 3]
    assert (split.valid.target - 1).tolist() == [13, 22]
    # train: every click but the first (no history) and the last two
    assert sorted((split.train.target - 1).tolist()) == [*range(2, 13), 21]


def test_mc2sf_phases():
    seqs = UserSequences.from_log(_log())
    cloud = mc2sf_split(seqs, max_len=20, device_model=False)
    device = mc2sf_split(seqs, max_len=20, device_model=True)
    # only user 0 has >= 12 clicks: slow = clicks 1..4 (targets 2..4), fast = 5..9,
    # test = 10..14
    assert (cloud.train.target - 1).tolist() == [2, 3, 4]
    assert (cloud.valid.target - 1).tolist() == [5, 6, 7, 8, 9]
    assert (cloud.test.target - 1).tolist() == [10, 11, 12, 13, 14]
    # the cloud predicts the test phase from the slow phase only
    assert all(length == 4 for length in cloud.test.lengths)
    # a device model sees every click before its target
    assert device.test.lengths.tolist() == [9, 10, 11, 12, 13]


def test_early_stopping_keeps_the_best_state():
    stopper = EarlyStopping(patience=2)
    assert not stopper.update(0, 0.1, {"w": 0})
    assert not stopper.update(1, 0.3, {"w": 1})
    assert not stopper.update(2, 0.2, {"w": 2})
    assert stopper.update(3, 0.25, {"w": 3})
    assert stopper.best_epoch == 1 and stopper.best_state == {"w": 1}


def test_popularity_runs_end_to_end_and_tabulates(tmp_path):
    from dcrec.replay.world import World, WorldConfig

    log = World(WorldConfig(n_users=100, n_items=300, n_clusters=5, n_events=20_000)).to_log()
    ctx = PresetContext(n_users=log.n_users, n_items=log.n_items, seed=0)
    results = [run_method(log, "loo", "popularity", seed, ctx) for seed in (0, 1)]
    summary = summarise(results)
    assert 0 < summary["popularity"]["HR@10"]["mean"] <= 1
    table = markdown_table(summary, "loo on world")
    assert "popularity" in table and "±" in table
    assert 0 < summary["popularity"]["macro-AUC tail"]["mean"] <= 1
    # a run kept from before the activity groups were measured shows a dash
    older = {**results[0], "method": "older", "test": {
        k: v for k, v in results[0]["test"].items() if not k.startswith("macro-AUC")}}
    row = markdown_table(summarise([*results, older]), "t").splitlines()[-1]
    assert row.startswith("| older |") and row.endswith("| — | — |")


def test_negatives_from_any_item_include_the_users_own_clicks():
    """RecBole's sequential configs (``repeatable: True``) draw negatives from every item
    but the target, so a user's earlier (popular) clicks compete with it: popularity
    ranks the target lower than against never-clicked items."""
    from dcrec.replay.world import World, WorldConfig

    log = World(WorldConfig(n_users=100, n_items=300, n_clusters=5, n_events=20_000)).to_log()
    ctx = PresetContext(n_users=log.n_users, n_items=log.n_items, seed=0)
    unclicked = run_method(log, "loo", "popularity", 0, ctx)["test"]
    anything = run_method(log, "loo", "popularity", 0, ctx, negatives="any")["test"]
    assert anything["NDCG@10"] < unclicked["NDCG@10"]
    with pytest.raises(ValueError, match="unknown negatives"):
        run_method(log, "loo", "popularity", 0, ctx, negatives="popular")
