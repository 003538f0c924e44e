"""The synthetic world: determinism, laziness, stream structure and its ground truth."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from dcrec.replay.log import InteractionLog
from dcrec.replay.world import BLOCK_SLATES, EPOCH, World, WorldConfig
from dcrec.streams.schema import CLICK, EXPOSURE

SMALL = WorldConfig(n_users=300, n_items=200, n_clusters=10, n_events=30_000)


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig(n_users=500, n_items=400, n_clusters=20, n_events=200_000))


@pytest.fixture(scope="module")
def log(world: World) -> InteractionLog:
    return world.to_log()


def _columns(world: World, size: int) -> dict[str, np.ndarray]:
    batches = list(world.batches(size))
    return {f: np.concatenate([getattr(b, f) for b in batches])
            for f in ("index", "user", "item", "ts", "event")}


def _click_clusters(world: World, log: InteractionLog, mask: np.ndarray) -> np.ndarray:
    clusters = world.item_category[log.item[mask & (log.event == CLICK)]]
    counts = np.bincount(clusters, minlength=world.n_clusters).astype(float)
    return counts / counts.sum()


# --- determinism and laziness ---------------------------------------------------------------


def test_same_seed_gives_identical_stream() -> None:
    a, b = World(SMALL).to_log(), World(SMALL).to_log()
    for col in ("user", "item", "ts", "event"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    np.testing.assert_array_equal(a.item_category, b.item_category)
    for name in a.user_features:
        np.testing.assert_array_equal(a.user_features[name], b.user_features[name])


def test_different_seed_gives_different_stream() -> None:
    a = World(SMALL).to_log()
    b = World(WorldConfig(**{**SMALL.__dict__, "seed": 1})).to_log()
    assert not np.array_equal(a.item, b.item)
    assert not np.array_equal(a.user, b.user)


def test_stream_does_not_depend_on_batch_size() -> None:
    world = World(WorldConfig(n_users=100, n_items=100, n_clusters=8, n_events=25_003))
    reference = _columns(world, 10**6)
    for size in (1, 7, 4096, 20_480, 25_003):
        got = _columns(world, size)
        for col, expected in reference.items():
            np.testing.assert_array_equal(got[col], expected, err_msg=f"{col} with size {size}")
    np.testing.assert_array_equal(reference["index"], np.arange(25_003))


def test_batches_have_the_requested_size() -> None:
    sizes = [len(b) for b in World(SMALL).batches(7_000)]
    assert sizes == [7_000] * 4 + [2_000]
    with pytest.raises(ValueError, match="batch size"):
        next(World(SMALL).batches(0))


def test_exact_event_count_truncates_last_slate() -> None:
    n = BLOCK_SLATES * 5 * 2 + 3  # crosses two block boundaries, ends mid-slate
    log = World(WorldConfig(n_users=200, n_items=100, n_clusters=8, n_events=n)).to_log()
    assert log.n_events == n


def test_generation_is_lazy() -> None:
    n_events = 1_000_000
    world = World(WorldConfig(n_users=5_000, n_items=2_000, n_events=n_events))
    materialised = n_events * (8 + 4 + 4 + 8 + 1)  # index, user, item, ts, event
    tracemalloc.start()
    try:
        count = clicks = 0
        for batch in world.batches(10_000):
            count += len(batch)
            clicks += int(np.count_nonzero(batch.event == CLICK))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n_events and clicks > 0
    assert peak < materialised / 3, f"peak {peak / 1e6:.1f} MB"


# --- stream structure ---------------------------------------------------------------------


def test_timestamps_non_decreasing_within_the_span(world: World, log: InteractionLog) -> None:
    assert np.all(np.diff(log.ts) >= 0)
    assert log.ts[0] >= EPOCH == world.start_ts
    assert log.ts[-1] <= world.end_ts == EPOCH + 60 * 86_400
    # events spread over the whole span, not bunched at its start
    days = (log.ts - EPOCH) // 86_400
    assert len(np.unique(days)) >= 55


def test_slates_exposures_then_at_most_one_click(world: World, log: InteractionLog) -> None:
    k = world.config.slate_size
    user, item, ts, event = (
        getattr(log, c).reshape(-1, k) for c in ("user", "item", "ts", "event"))
    assert np.all(user == user[:, :1]) and np.all(ts == ts[:, :1])
    assert np.all(event[:, :-1] == EXPOSURE)  # a click can only be the slate's last event
    assert np.all(np.isin(event, (CLICK, EXPOSURE)))
    assert all(len(set(row)) == k for row in item[:2000].tolist())  # distinct items in a slate
    click_rate = np.mean(event[:, -1] == CLICK)
    assert 0.2 < click_rate < 0.8
    np.testing.assert_array_equal(world.slate_of(np.arange(10)), np.arange(10) // k)


def test_log_carries_ids_categories_and_features(world: World, log: InteractionLog) -> None:
    assert log.name == "world"
    assert log.n_users == world.n_users and log.n_items == world.n_items
    assert log.user_ids[3] == "u3" and log.item_ids[5] == "i5"
    assert log.item_category.dtype == np.int32 and len(log.item_category) == world.n_items
    assert set(np.unique(log.item_category)) == set(range(world.n_clusters))
    assert len(log.category_names) == world.n_clusters
    assert set(log.user_features) == {"age", "region"}
    for name, values in log.user_features.items():
        assert values.dtype == np.int32 and len(values) == world.n_users
        assert values.max() < len(log.user_feature_names[name])


# --- ground truth ---------------------------------------------------------------------------


def test_activity_is_long_tailed(world: World, log: InteractionLog) -> None:
    per_user = np.sort(np.bincount(log.user, minlength=world.n_users))[::-1]
    assert per_user[: world.n_users // 10].sum() > 0.4 * per_user.sum()


def test_zipf_activity_is_long_tailed() -> None:
    world = World(WorldConfig(**{**SMALL.__dict__, "activity": "zipf"}))
    per_user = np.sort(np.bincount(world.to_log().user, minlength=world.n_users))[::-1]
    assert per_user[: world.n_users // 10].sum() > 0.4 * per_user.sum()


def test_disliked_clusters_are_shown_but_rarely_clicked(world: World, log: InteractionLog) -> None:
    clusters = world.item_category[log.item]
    disliked = world.disliked[log.user, clusters]
    theta = world.interest(log.user, log.ts)[np.arange(log.n_events), clusters]
    liked = theta > 0.2
    clicked = log.event == CLICK
    assert disliked.mean() > 0.01  # the logging policy still shows them
    assert clicked[disliked].mean() < 0.1 * clicked[liked].mean()
    counts = world.disliked.sum(axis=1)
    assert counts.min() >= 1 and counts.max() <= 2
    assert np.all(world.interest(np.arange(world.n_users), world.start_ts)[world.disliked] == 0)


def test_clicked_items_have_higher_utility(world: World, log: InteractionLog) -> None:
    utility = world.utility(log.user, log.item, log.ts)
    assert utility.dtype == np.float32 and utility.shape == (log.n_events,)
    assert utility[log.event == CLICK].mean() > utility[log.event == EXPOSURE].mean() + 1.0
    grid = world.utility(np.arange(3)[:, None], np.arange(4)[None, :], world.start_ts)
    assert grid.shape == (3, 4)


def test_drift_changes_clicks_of_drifting_users_only(world: World, log: InteractionLog) -> None:
    assert 0.15 < world.drifting.mean() < 0.25
    (drift_ts,) = world.drift_ts
    assert drift_ts == EPOCH + 30 * 86_400
    after = log.ts >= drift_ts
    drifting = world.drifting[log.user]

    def change(users: np.ndarray) -> float:
        before = _click_clusters(world, log, users & ~after)
        return 0.5 * float(np.abs(before - _click_clusters(world, log, users & after)).sum())

    assert change(drifting) > 0.25
    assert change(~drifting) < 0.1
    users = np.arange(world.n_users)
    before_theta = world.interest(users, drift_ts - 1)
    after_theta = world.interest(users, drift_ts)
    moved = np.abs(before_theta - after_theta).sum(axis=1) > 0
    np.testing.assert_array_equal(moved, world.drifting)
    assert np.all(np.argmax(before_theta, 1)[moved] != np.argmax(after_theta, 1)[moved])


def test_user_features_correlate_with_dominant_cluster(world: World) -> None:
    dominant = np.argmax(world.interest(np.arange(world.n_users), world.start_ts), axis=1)
    feats = world.user_features
    key = feats["age"] * len(world.user_feature_names["region"]) + feats["region"]
    # accuracy of guessing a user's dominant cluster from (age, region) alone
    hits = sum(np.bincount(dominant[key == k]).max() for k in np.unique(key))
    baseline = np.bincount(dominant).max()
    assert hits > 3 * baseline


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_users": 0}, "n_users"),
        ({"n_events": 0}, "n_events"),
        ({"n_items": 3, "slate_size": 5, "n_clusters": 2, "dislikes": (0, 0)}, "n_items"),
        ({"n_clusters": 3}, "n_clusters"),
        ({"days": 0.0}, "days"),
        ({"seed": -1}, "seed"),
        ({"n_users": 2.5}, "n_users must be an int"),
        ({"days": float("nan")}, "days must be finite"),
        ({"dislikes": (2, 1)}, "dislikes"),
        ({"dislikes": 1}, "dislikes"),
        ({"activity": "pareto"}, "activity"),
        ({"drift_fraction": 1.5}, "drift_fraction"),
        ({"drift_at": (0.6, 0.3)}, "drift_at"),
        ({"drift_at": (1.0,)}, "drift_at"),
        ({"policy_mix": (0.5, 0.5, 0.5)}, "policy_mix"),
        ({"policy_mix": (1.0, 0.0)}, "policy_mix"),
        ({"temperature": 0.0}, "temperature"),
        ({"interest_alpha": -1.0}, "interest_alpha"),
        ({"diurnal_amplitude": 1.0}, "diurnal_amplitude"),
        ({"session_slates": 0.5}, "session_slates"),
        ({"feature_noise": 2.0}, "feature_noise"),
    ],
)
def test_config_validation(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorldConfig(**changes)


def test_no_drift_and_zero_dislikes_are_allowed() -> None:
    world = World(WorldConfig(**{**SMALL.__dict__, "drift_at": (), "dislikes": (0, 0)}))
    assert not world.drifting.any() and not world.disliked.any()
    assert world.to_log().n_events == SMALL.n_events
