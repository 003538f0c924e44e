"""``dcrec worker`` whose consumer loses two messages on their first delivery, the way
faust drops a message below its read offset: never handed to the worker, the consumer
moving on. On partition 0 a click in the middle of the stream (later messages reveal the
hole) and on partition 1 the end marker of the exposure topic (nothing follows it: only
the broker's end offset tells). Used by tests/test_kafka_runtime.py."""

from __future__ import annotations

from dcrec.streams import device_worker
from dcrec.streams.device_messages import marker_slice
from dcrec.streams.topics import CLICKS, EXPOSURES

from dcrec.cli import app

offer = device_worker.DeviceWorker.offer
dropped: set[tuple[str, int, int]] = set()


def lossy_offer(self, topic, partition, entry):  # type: ignore[no-untyped-def]
    marker = marker_slice(entry.value, entry.headers)
    lost = ((topic.endswith(CLICKS) and partition == 0 and entry.offset == 40)
            or (topic.endswith(EXPOSURES) and partition == 1 and marker is not None
                and marker[2]))
    if lost and (topic, partition, entry.offset) not in dropped:
        dropped.add((topic, partition, entry.offset))
        return device_worker.Offered.NOT_OWNED  # neither kept nor acknowledged
    return offer(self, topic, partition, entry)


device_worker.DeviceWorker.offer = lossy_offer  # type: ignore[method-assign]
app()
