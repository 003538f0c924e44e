"""What the processes of one kafka run share through Redis besides device state:
partition progress, cloud-job outputs, counters and evaluation totals."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec
import numpy as np
import redis

# event-to-state latency histogram: bucket b holds latencies in [1.05^(b-1), 1.05^b) ms
LATENCY_BASE = 1.05


@dataclass
class Progress:
    """Where one partition stands, committed with the state it produced: the next
    slice to process, the next offset to read per topic, the job clock, the last cloud
    boundary whose outputs were applied and the model versions being served."""

    next_slice: int = 0
    offsets: dict[str, int] = field(default_factory=dict)
    next_job: int | None = None
    applied_boundary: int = -1
    versions: dict[str, int] = field(default_factory=dict)
    watermark: int | None = None

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(self.__dict__)

    @classmethod
    def decode(cls, raw: bytes | None) -> Progress:
        return cls(**msgspec.msgpack.decode(raw)) if raw else cls()


def progress_keys(keys: Callable[..., str], partitions: Iterable[int]) -> list[str]:
    """The Redis keys of partitions' :class:`Progress` (one key each, so a worker's
    commit WATCHes only its own partitions)."""
    return [keys("progress", p) for p in partitions]


def read_progress(client: redis.Redis, keys: Callable[..., str], partitions: Iterable[int],
                  ) -> list[Progress]:
    """The committed progress of ``partitions``, in order."""
    return [Progress.decode(raw) for raw in client.mget(progress_keys(keys, partitions))]


def latency_buckets(latency_ms: np.ndarray) -> dict[int, int]:
    """Counts of latencies per histogram bucket."""
    if len(latency_ms) == 0:
        return {}
    bucket = np.ceil(np.log(np.maximum(latency_ms, 1e-3)) / np.log(LATENCY_BASE)).astype(int)
    ids, counts = np.unique(bucket, return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist(), strict=True))


def latency_percentile(buckets: dict[int, int], q: float) -> float:
    """The ``q``-th percentile (0-100) of a latency histogram: its bucket's upper edge."""
    if not buckets:
        return 0.0
    ids = np.array(sorted(buckets))
    counts = np.array([buckets[b] for b in ids])
    rank = q / 100.0 * counts.sum()
    index = int(np.searchsorted(np.cumsum(counts), rank, side="left"))
    return float(LATENCY_BASE ** ids[min(index, len(ids) - 1)])
