"""The logging policy that produces exposures for logs that have none.

Every method compared sees the same exposures: for each click, a slate of
``slate_size`` items is shown at the click's timestamp — the clicked item plus
``slate_size - 1`` others drawn from the log's item popularity (click counts + 1,
raised to ``alpha``), never the clicked item itself. Draws are a counter hash of
``(seed, click position, slot)``, so the policy does not depend on any model, batch
size or runtime. The shown-but-not-clicked items become exposure events placed just
before their click.

This is a popularity-biased production recommender's stand-in; it is documented, not
tuned, and carries no information about the user (so on such logs the negative memory
can only learn what popularity-biased non-clicks look like).
"""

from __future__ import annotations

import numpy as np
from dcrec.replay.log import InteractionLog
from dcrec.replay.negatives import splitmix64
from dcrec.streams.schema import CLICK, EXPOSURE


def add_exposures(log: InteractionLog, slate_size: int, seed: int,
                  alpha: float = 1.0) -> InteractionLog:
    """The log with ``slate_size - 1`` logged exposures before every click."""
    if log.has_exposures or slate_size <= 1:
        return log
    others = slate_size - 1
    clicks = np.flatnonzero(log.event == CLICK)
    weights = (np.bincount(log.item[clicks], minlength=log.n_items) + 1.0) ** alpha
    cdf = np.cumsum(weights) / weights.sum()
    counters = clicks.astype(np.uint64)[:, None] * np.uint64(1024) + np.arange(
        4 * others, dtype=np.uint64)[None, :]
    uniform = (splitmix64(counters ^ splitmix64(np.full(1, seed, np.uint64))[0])
               >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    drawn = np.minimum(np.searchsorted(cdf, uniform), log.n_items - 1)
    clicked = log.item[clicks][:, None]
    drawn = np.where(drawn == clicked, -1, drawn)
    # keep the first `others` draws that are not the clicked item, in draw order
    order = np.argsort(drawn < 0, axis=1, kind="stable")
    shown = np.take_along_axis(drawn, order, axis=1)[:, :others]
    shown = np.where(shown < 0, (clicked + 1 + np.arange(others)) % log.n_items, shown)

    n = len(clicks)
    block = slate_size
    user = np.repeat(log.user[clicks], block)
    ts = np.repeat(log.ts[clicks], block)
    item = np.empty((n, block), dtype=log.item.dtype)
    item[:, :others] = shown
    item[:, others] = log.item[clicks]
    event = np.full((n, block), EXPOSURE, dtype=np.int8)
    event[:, others] = CLICK
    return InteractionLog(
        name=log.name, user=user, item=item.ravel(), ts=ts, event=event.ravel(),
        user_ids=log.user_ids, item_ids=log.item_ids, item_category=log.item_category,
        category_names=log.category_names, item_titles=log.item_titles,
        user_features=log.user_features, user_feature_names=log.user_feature_names,
        rejected=log.rejected,
    )
