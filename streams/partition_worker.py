"""One step of a device worker on a Kafka partition: decode a poll's records, drop what
the state already holds, run the device processor, commit state and position together.

This is the I/O edge around a pure processor: the processor sees an
:class:`EventBatch` exactly as in the local runtime; invalid records become dead
letters with their reason; the new rows and the partition's next offset are committed
in one transaction by :class:`~dcrec.state.redis_state.RedisDeviceState`, so replaying
records after a crash is a no-op for those already applied.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from dcrec.state.redis_state import Partition, RedisDeviceState
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.processor import DeviceBatch, DeviceProcessor, Outputs
from dcrec.streams.schema import (
    CLICK,
    EXPOSURE,
    Click,
    DeadLetter,
    Exposure,
    Reason,
    Rejected,
)
from dcrec.streams.schema import dead_letter as to_dead_letter
from dcrec.streams.schema import decode as decode_event


@dataclass
class StepResult:
    """What one step did: events applied, records skipped as already applied, dead
    letters to publish, and the processor's outputs."""

    applied: int = 0
    skipped: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    outputs: Outputs | None = None


def apply_records(processor: DeviceProcessor, store: RedisDeviceState, partition: Partition,
                  records: list[tuple[int, bytes]], n_candidates: int = 101) -> StepResult:
    """Apply ``(offset, value)`` records of one partition, in offset order."""
    result = StepResult()
    if not records:
        return result
    committed = store.committed(partition)
    offsets, users, items, ts, kinds = [], [], [], [], []
    for offset, value in records:
        if offset < committed:
            result.skipped += 1
            continue
        event = decode_event(value, source=f"{partition[0]}/{partition[1]}")
        if isinstance(event, Rejected) or not isinstance(event, Click | Exposure):
            rejected = event if isinstance(event, Rejected) else Rejected(
                Reason.UNKNOWN_EVENT, f"{type(event).__name__} on a device topic", value,
                f"{partition[0]}/{partition[1]}")
            result.dead_letters.append(to_dead_letter(rejected, ts=int(time.time())))
            continue
        offsets.append(offset)
        users.append(event.device)
        items.append(event.item)
        ts.append(event.ts)
        kinds.append(CLICK if isinstance(event, Click) else EXPOSURE)
    next_offset = records[-1][0] + 1
    if not offsets:
        store.commit(np.zeros(0, dtype=np.int64), {}, {partition: next_offset})
        return result
    batch = EventBatch(np.asarray(offsets, dtype=np.int64), np.asarray(users, dtype=np.int64),
                       np.asarray(items, dtype=np.int64), np.asarray(ts, dtype=np.int64),
                       np.asarray(kinds, dtype=np.int8))
    evaluate = np.zeros(len(offsets), dtype=bool)
    device_batch = DeviceBatch.build(batch, evaluate,
                                     np.zeros((0, n_candidates), dtype=np.int64))
    rows = store.gather(device_batch.devices)
    new_rows, outputs = processor(rows, device_batch)
    store.commit(device_batch.devices, new_rows, {partition: next_offset})
    result.applied = len(offsets)
    result.outputs = outputs
    return result
