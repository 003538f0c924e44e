"""A slice of an event stream as columns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EventBatch:
    """A contiguous, time-ordered slice of an event stream, as columns.

    ``index`` is each event's position in the whole stream (int64), so that anything
    keyed by event (sampled evaluation negatives, seeds) is independent of how the
    stream is cut into batches.
    """

    index: np.ndarray
    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    event: np.ndarray

    def __len__(self) -> int:
        return len(self.user)
