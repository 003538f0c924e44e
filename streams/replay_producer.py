"""The replay producer: a stream of device events onto the device topics with
kafka-python, keyed by device, each event's stream position in a header, and a
watermark after every slice on every partition (see :mod:`dcrec.streams.slices`).

An event-time replay is produced as fast as the producer can; a live replay is paced
at ``speed`` times event time and also cut every ``tick`` seconds of wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from dcrec.streams.event_batch import EventBatch
from dcrec.streams.live_metrics import Meter
from dcrec.streams.schema import CLICK, Click, Exposure, Watermark, encode
from dcrec.streams.topics import CLICKS, DEVICE_TOPICS, EXPOSURES, device_partition, topic_name


class ReplayProducer:
    """Sends device events and slice watermarks for one run."""

    def __init__(self, bootstrap: str, namespace: str, partitions: int,
                 live: bool = False) -> None:
        from kafka import KafkaProducer

        # A live run ships each slice whole when its watermark closes it (``watermark``
        # flushes): a worker applies no event of a slice before the watermark anyway,
        # and one batch per partition and slice keeps the embedded broker's fetches
        # cheap — Tansu 0.6's memory storage lists every batch of a partition on each
        # fetch, so its cost grows with the batches stored (docs/kafka.md).
        # One request in flight per connection: a retried batch can never overtake the
        # next one, so per-device order holds without the idempotent producer.
        self.live = live
        self.producer = KafkaProducer(bootstrap_servers=bootstrap,
                                      linger_ms=1_000 if live else 5,
                                      batch_size=256 * 1024, acks=1, enable_idempotence=False,
                                      max_in_flight_requests_per_connection=1)
        self.namespace = namespace
        self.partitions = partitions
        self.clicks = topic_name(CLICKS, namespace)
        self.exposures = topic_name(EXPOSURES, namespace)
        self.slices = 0
        self.last_ts = 0
        self.closed = False

    def event(self, pos: int, device: int, item: int, ts: int, kind: int,
              due_ms: int | None = None) -> None:
        """One click or exposure at stream position ``pos``; ``due_ms``: the wall time
        (unix ms) a paced replay meant to send it, its record's timestamp, from which the
        workers measure latency (default: when it is sent)."""
        if kind == CLICK:
            topic, value = self.clicks, encode(Click(device=device, item=item, ts=ts))
        else:
            topic, value = self.exposures, encode(Exposure(device=device, item=item, ts=ts))
        self.raw(topic, device_partition(device, self.partitions), value,
                 [("pos", str(pos).encode())], key=str(device).encode(), timestamp_ms=due_ms)

    def raw(self, topic: str, partition: int, value: bytes,
            headers: list[tuple[str, bytes]] | None = None, key: bytes | None = None,
            timestamp_ms: int | None = None) -> None:
        """Any bytes onto a partition (used for hand-made and malformed input too)."""
        self.producer.send(topic, value, key=key, partition=partition, headers=headers or [],
                           timestamp_ms=timestamp_ms)

    def watermark(self, ts: int, end: bool = False) -> int:
        """Close the current slice on every partition of both device topics; the next
        slice's number (``end``: no slice follows)."""
        headers = [("slice", str(self.slices).encode())] + ([("end", b"1")] if end else [])
        value = encode(Watermark(ts=int(ts)))
        for name in DEVICE_TOPICS:
            for p in range(self.partitions):
                self.producer.send(topic_name(name, self.namespace), value, partition=p,
                                   headers=headers)
        self.slices += 1
        self.last_ts = max(self.last_ts, int(ts))
        if self.live:
            self.producer.flush()
        return self.slices

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.producer.flush()
            self.producer.close()


def produce_slices(producer: ReplayProducer, slices: Iterable[EventBatch],
                   speed: float | None = None, tick: float = 0.02,
                   progress: Callable[[int], None] | None = None,
                   meter: Meter | None = None) -> dict[int, int]:
    """Produce every slice with a watermark before each (carrying its first event
    time); the caller ends the stream (``producer.watermark(..., end=True)``).
    ``speed``: pace at that many times event time (live), with a watermark at least
    every ``tick`` seconds; ``meter`` counts the events sent, per slice. Returns events
    produced per device."""
    produced: dict[int, int] = {}
    started, origin = time.monotonic(), None
    to_unix = time.time() - started   # monotonic seconds -> unix seconds
    paced = speed is not None and 0 < speed < float("inf")
    for batch in slices:
        if len(batch) == 0:
            continue
        producer.watermark(int(batch.ts[0]))
        last_cut = time.monotonic()
        columns = zip(batch.index.tolist(), batch.user.tolist(), batch.item.tolist(),
                      batch.ts.tolist(), batch.event.tolist(), strict=True)
        for pos, device, item, ts, kind in columns:
            due_ms = None
            if speed:
                origin = ts if origin is None else origin
                due = started + (ts - origin) / speed
                wait = due - time.monotonic()
                if wait > 0:  # a live run sends each event when it is due at ``speed``
                    time.sleep(wait)
                if time.monotonic() - last_cut >= tick:
                    producer.watermark(ts)
                    last_cut = time.monotonic()
                if paced:  # latency counts from when the event was due, not sent
                    due_ms = int((due + to_unix) * 1000)
            producer.event(pos, device, item, ts, kind, due_ms)
            produced[device] = produced.get(device, 0) + 1
        producer.last_ts = max(producer.last_ts, int(batch.ts[-1]))
        if meter is not None:
            clicks = int((batch.event == CLICK).sum())
            meter.produced(clicks, len(batch) - clicks)
        if progress:
            progress(len(batch))
    producer.producer.flush()
    return produced

