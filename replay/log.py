"""The in-memory interaction log every loader produces and every replay consumes.

A log is columnar (numpy arrays, one row per event), sorted by time with a stable
tie-break on the order the source gave, and uses dense ids: users ``0..n_users-1``,
items ``0..n_items-1``. Original ids stay in ``user_ids`` / ``item_ids`` so reports can
name them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.schema import CLICK, EXPOSURE, Rejected

__all__ = ["EventBatch", "InteractionLog"]


@dataclass
class InteractionLog:
    """A time-ordered log of click and exposure events with dense ids.

    Attributes:
        name: dataset name used in reports (``ml-100k``, ``world``, a file stem).
        user, item: int32 dense ids per event.
        ts: int64 unix seconds per event, non-decreasing.
        event: int8 per event, ``CLICK`` (1) or ``EXPOSURE`` (0).
        user_ids, item_ids: original ids (as strings), indexed by dense id.
        item_category: int32 primary category per item, or None.
        category_names: names of the categories, indexed by category id.
        item_titles: titles per item, or None.
        user_features: categorical user attributes, each an int32 array per user
            (e.g. ``age``, ``gender``, ``occupation``), with their vocabularies in
            ``user_feature_names``.
        rejected: input rows that failed validation, with their reasons.
    """

    name: str
    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    event: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_category: np.ndarray | None = None
    category_names: list[str] | None = None
    item_titles: list[str] | None = None
    user_features: dict[str, np.ndarray] = field(default_factory=dict)
    user_feature_names: dict[str, list[str]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.user)
        for col in ("item", "ts", "event"):
            if len(getattr(self, col)) != n:
                raise ValueError(f"column {col!r} has {len(getattr(self, col))} rows, user has {n}")
        if n and np.any(np.diff(self.ts) < 0):
            raise ValueError("log is not sorted by timestamp")

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_events(self) -> int:
        return len(self.user)

    @property
    def n_clicks(self) -> int:
        return int(np.count_nonzero(self.event == CLICK))

    @property
    def n_exposures(self) -> int:
        return int(np.count_nonzero(self.event == EXPOSURE))

    @property
    def has_exposures(self) -> bool:
        return self.n_exposures > 0

    def select(self, mask: np.ndarray, name: str | None = None) -> InteractionLog:
        """Rows where ``mask`` holds; ids and side information are kept as they are."""
        return InteractionLog(
            name=name or self.name,
            user=self.user[mask],
            item=self.item[mask],
            ts=self.ts[mask],
            event=self.event[mask],
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            item_category=self.item_category,
            category_names=self.category_names,
            item_titles=self.item_titles,
            user_features=self.user_features,
            user_feature_names=self.user_feature_names,
            rejected=self.rejected,
        )

    def time_window(self, start: int | None = None, end: int | None = None) -> InteractionLog:
        """Events with ``start <= ts < end`` (either bound optional)."""
        mask = np.ones(self.n_events, dtype=bool)
        if start is not None:
            mask &= self.ts >= start
        if end is not None:
            mask &= self.ts < end
        return self.select(mask)

    def head(self, n: int) -> InteractionLog:
        """The first ``n`` events in time order."""
        mask = np.zeros(self.n_events, dtype=bool)
        mask[:n] = True
        return self.select(mask)

    def clicks_per_user(self) -> np.ndarray:
        """Number of clicks of each user (activity), indexed by dense user id."""
        return np.bincount(self.user[self.event == CLICK], minlength=self.n_users)

    def batches(self, size: int) -> Iterator[EventBatch]:
        """The log as consecutive batches of at most ``size`` events."""
        for start in range(0, self.n_events, size):
            stop = min(start + size, self.n_events)
            yield EventBatch(
                index=np.arange(start, stop, dtype=np.int64),
                user=self.user[start:stop],
                item=self.item[start:stop],
                ts=self.ts[start:stop],
                event=self.event[start:stop],
            )
