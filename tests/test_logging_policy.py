"""The logging policy: fixed slates around every click, the same for every method."""

from __future__ import annotations

import numpy as np
from dcrec.replay.log import InteractionLog
from dcrec.replay.logging_policy import add_exposures
from dcrec.streams.schema import CLICK, EXPOSURE


def _clicks(n: int = 500, n_items: int = 50) -> InteractionLog:
    rng = np.random.default_rng(0)
    item = (rng.zipf(1.5, size=n) - 1) % n_items
    return InteractionLog(name="clicks", user=rng.integers(0, 20, size=n), item=item,
                          ts=np.arange(n) * 10, event=np.full(n, CLICK, dtype=np.int8),
                          user_ids=[str(u) for u in range(20)],
                          item_ids=[str(i) for i in range(n_items)])


def test_each_click_gets_a_slate_of_exposures_just_before_it():
    log = _clicks()
    shown = add_exposures(log, slate_size=5, seed=0)
    assert shown.n_clicks == log.n_clicks and shown.n_exposures == 4 * log.n_clicks
    slates = shown.item.reshape(-1, 5)
    assert (shown.event.reshape(-1, 5)[:, :4] == EXPOSURE).all()
    assert (slates[:, 4] == log.item).all()
    assert (slates[:, :4] != slates[:, 4:]).all()  # the clicked item is never an exposure
    assert (shown.ts.reshape(-1, 5) == log.ts[:, None]).all()
    assert (shown.user.reshape(-1, 5) == log.user[:, None]).all()


def test_the_policy_is_fixed_by_the_seed_and_biased_to_popular_items():
    log = _clicks()
    a, b = add_exposures(log, 5, seed=0), add_exposures(log, 5, seed=0)
    assert np.array_equal(a.item, b.item)
    assert not np.array_equal(a.item, add_exposures(log, 5, seed=1).item)
    exposed = np.bincount(a.item[a.event == EXPOSURE], minlength=log.n_items)
    clicked = np.bincount(log.item, minlength=log.n_items)
    assert np.corrcoef(exposed, clicked)[0, 1] > 0.8


def test_logs_with_exposures_are_left_alone():
    shown = add_exposures(_clicks(), 3, seed=0)
    assert add_exposures(shown, 5, seed=0) is shown
