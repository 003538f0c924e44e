"""Event-time slices: where a stream is cut so that every runtime sees the same
micro-batches and fires cloud jobs at the same event times.

The local runtime cuts its micro-batches where the next cloud job is due; the kafka
runtime's replay producer cuts the stream the same way and marks each cut with a
watermark, so workers and the cloud process agree on every boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.local_runtime import slice_batch


@dataclass
class JobClock:
    """When cloud jobs are due: every ``interval`` of event time, starting one interval
    after the first event (the local runtime's rule)."""

    interval: int
    next_job: int | None = None

    def due(self, now: int) -> list[int]:
        """The job times due at event time ``now`` (oldest first); advances the clock."""
        if self.next_job is None:
            self.next_job = now + self.interval
        jobs = []
        while now >= self.next_job:
            jobs.append(self.next_job)
            self.next_job += self.interval
        return jobs


def event_time_slices(batches: Iterable[EventBatch], cloud_interval: int,
                      ) -> Iterator[EventBatch]:
    """The micro-batches the local runtime processes: each source batch cut where a
    cloud job falls due."""
    clock = JobClock(cloud_interval)
    for batch in batches:
        start = 0
        while start < len(batch):
            clock.due(int(batch.ts[start]))
            assert clock.next_job is not None
            stop = start + int(np.searchsorted(batch.ts[start:], clock.next_job, side="left"))
            yield slice_batch(batch, start, stop)
            start = stop
