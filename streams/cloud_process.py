"""Cloud jobs in their own process: observe the device topics slice by slice, receive
uploads, and at each due job time retrain and release.

The cloud reads every partition of the device topics (manual assignment) and observes
each slice as one batch in stream order — the local runtime's batches. In an
event-time replay it applies the uploads produced for earlier slices before observing
the next (it waits for the workers' committed progress, so none is missing), which is
when the local runtime routes them. A job's outputs go to the Redis registry
(versions, checksums, atomic promotion), to ``cloud.releases`` and ``cloud.hints``, and
to the run's keys the workers read at the same slice boundary.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import numpy as np
import redis
from dcrec.models.training import cloud_job_threads
from dcrec.state.redis_registry import RedisModelRegistry
from dcrec.state.redis_store import RunKeys
from dcrec.state.registry import ModelRegistry
from dcrec.streams.device_messages import after_position, decode_slice, header, marker_slice
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.live_metrics import Meter, Throttle
from dcrec.streams.processor import CloudJob, Outputs
from dcrec.streams.run_keys import read_progress
from dcrec.streams.schema import Hint, Release, Threshold, Upload
from dcrec.streams.schema import decode as decode_event
from dcrec.streams.schema import encode as encode_event
from dcrec.streams.slices import JobClock
from dcrec.streams.topics import (
    DEVICE_TOPICS,
    HINTS,
    RELEASES,
    THRESHOLD,
    UPLOADS,
    topic_name,
)

log = logging.getLogger(__name__)


class CloudProcess:
    """Runs a pipeline's :class:`~dcrec.streams.processor.CloudJob` on the topics."""

    def __init__(self, run: str, namespace: str, bootstrap: str, partitions: int,
                 n_devices: int, n_items: int, cloud: CloudJob | None,
                 registry: ModelRegistry, client: redis.Redis, cloud_interval: int,
                 aligned: bool = True, service: Any = None,
                 meter: Meter | None = None) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        self.meter = meter  # the process's live metrics: jobs, releases, load, lag
        self.sample_due = Throttle(1.0)
        self.namespace = namespace
        self.cloud = cloud
        self.local_registry = registry
        self.registry = RedisModelRegistry(client, run)
        self.client = client
        self.keys = RunKeys(run)
        self.clock = JobClock(cloud_interval)
        self.aligned = aligned
        self.partitions = partitions
        self.n_devices, self.n_items = n_devices, n_items
        self.last_pos = np.full(n_devices, -1, np.int64)  # per device, as the workers keep
        # fetch_max_wait_ms stays at Kafka's 500 ms: a fetch returns as soon as data is
        # there, and the embedded broker (Tansu 0.6, memory storage) answers a fetch with
        # no records when reading a long log takes longer than the wait (seen at 20 ms
        # on a 300k-message partition: the cloud stalled)
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      group_id=None, client_id=f"dcrec-cloud-{run}",
                                      fetch_max_wait_ms=500)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        self.device_tps = [TopicPartition(topic_name(t, namespace), p)
                           for t in DEVICE_TOPICS for p in range(partitions)]
        self.upload_topic = topic_name(UPLOADS, namespace)
        self.upload_tps = [TopicPartition(self.upload_topic, p) for p in range(partitions)]
        self.consumer.assign([*self.device_tps, *self.upload_tps])
        self.consumer.seek_to_beginning()
        self.buffers: dict = {tp: deque() for tp in self.device_tps}
        self.closed: dict = defaultdict(lambda: -1)
        self.uploads: deque = deque()  # (slice, Upload)
        self.wants_uploads = cloud is not None and hasattr(cloud, "on_upload")
        self.stats: dict[str, float] = defaultdict(float)
        self.slice = 0
        self.end: int | None = None
        # CoCorrRec: a thread answering the devices' correction requests beside the jobs
        self.server = None
        if service is not None:
            from dcrec.streams.correction_transport import CorrectionServer

            service.registry = self.registry  # versions as the devices are served them
            self.server = CorrectionServer(service, bootstrap, namespace, partitions)

    def publish_initial(self) -> None:
        """Mirror the versions the pipeline released at build time (version 1)."""
        for model in self.local_registry.models():
            version = self.local_registry.latest(model)
            if version is not None and self.registry.latest(model) is None:
                self.registry.publish(model, self.local_registry.load(version), version.version)
            if version is not None and self.meter is not None:
                self.meter.released(model, version.version)

    def _poll(self, timeout_ms: int = 50) -> None:
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms, max_records=20000).items():
            if tp.topic == self.upload_topic:
                if self.meter is not None:
                    self.meter.sent({UPLOADS: len(records)}, direction="in")
                for r in records:
                    event = decode_event(r.value)
                    if isinstance(event, Upload):
                        tag = header(r.headers, "slice")
                        self.uploads.append((int(tag) if tag else -1, event))
                continue
            queue = self.buffers[tp]
            for r in records:
                marker = marker_slice(r.value, r.headers)
                queue.append((marker, r.value, r.headers))
                if marker is not None:
                    self.closed[tp] = max(self.closed[tp], marker[0])
                    if marker[2]:
                        self.end = marker[0]

    def _slice_ready(self, k: int) -> bool:
        return all(self.closed[tp] >= k + 1 for tp in self.device_tps)

    def _take(self, k: int) -> tuple[EventBatch, int | None]:
        """Slice ``k`` of every partition: its valid events in stream order (the rules
        of the device workers: :func:`decode_slice`) and its watermark."""
        messages, watermark = [], None
        for tp in self.device_tps:
            queue = self.buffers[tp]
            while queue:
                marker, value, headers = queue[0]
                if marker is not None and marker[0] > k:
                    break
                queue.popleft()
                if marker is None:
                    messages.append((value, headers, 0))
                elif marker[0] == k:
                    watermark = marker[1]
        decoded = decode_slice(messages, self.n_devices, self.n_items)
        after_position(decoded, self.last_pos[decoded.batch.user])
        np.maximum.at(self.last_pos, decoded.batch.user, decoded.batch.index)
        return decoded.batch, watermark

    def _workers_done(self, k: int) -> bool:
        """Every partition's committed progress is past slice ``k - 1``."""
        return all(p.next_slice >= k
                   for p in read_progress(self.client, self.keys, range(self.partitions)))

    def _catch_up_uploads(self) -> None:
        """Poll until every upload on the broker now is read: workers flush their uploads
        before committing a slice, so after :meth:`_workers_done` these are all of them."""
        end = self.consumer.end_offsets(self.upload_tps)
        while any(self.consumer.position(tp) < end[tp] for tp in self.upload_tps):
            self._poll(10)

    def _apply_uploads(self, upto: int) -> None:
        keep = deque()
        while self.uploads:
            k, upload = self.uploads.popleft()
            if self.aligned and k > upto:
                keep.append((k, upload))
            elif self.cloud is not None and hasattr(self.cloud, "on_upload"):
                self.cloud.on_upload(upload)
        self.uploads = keep

    def step(self) -> bool:
        """Poll once and process every slice that is whole; ``False`` once the stream's
        end marker is reached and all slices are done."""
        self._poll()
        if self.meter is not None and self.sample_due():
            self._sample()
        while self._slice_ready(self.slice):
            k = self.slice
            # uploads, and requests the cloud's service answered (its load, which sets
            # IntellectReq's threshold), of the slices before k are all in before k's
            # jobs, as in the local runtime
            if self.aligned and (self.wants_uploads or self.server is not None):
                while not self._workers_done(k):
                    self._check_server()
                    self._poll(10)
            if self.wants_uploads:
                if self.aligned:
                    self._catch_up_uploads()
                self._apply_uploads(k - 1)
            batch, watermark = self._take(k)
            jobs = self.clock.due(watermark) if watermark is not None else []
            for at in jobs:
                self._run_job(at, k)
            self.client.set(self.keys("cloud", "boundary"), k)
            if self.cloud is not None and len(batch):
                self.cloud.observe(batch)
            self.slice = k + 1
        if self.end is not None and self.slice >= self.end:
            if self.server is None:  # else: once the server's counters are written (run)
                self.client.set(self.keys("cloud", "boundary"), self.end)
            self._flush_stats()
            return False
        return True

    def _sample(self) -> None:
        """The live metrics sampled, not counted: the service's queue, this consumer's
        lag on the device topics."""
        from kafka.errors import KafkaError

        assert self.meter is not None
        if self.server is not None:
            self.meter.service(self.server.service)
        try:
            end = self.consumer.end_offsets(self.device_tps)
        except KafkaError as error:  # the broker is away: no lag this time
            log.debug("no end offsets: %s", error)
            return
        short = {topic_name(t, self.namespace): t for t in DEVICE_TOPICS}
        self.meter.lag("cloud", {(short[tp.topic], tp.partition):
                                 end[tp] - self.consumer.position(tp) for tp in self.device_tps})

    def _run_job(self, at: int, k: int) -> None:
        if self.cloud is None:
            return
        started = time.perf_counter()
        with cloud_job_threads():
            out: Outputs | None = self.cloud.run(at)
        seconds = time.perf_counter() - started
        self.stats["cloud_seconds"] += seconds
        self.stats["cloud_jobs"] += 1
        if self.meter is not None:
            self.meter.cloud_job(seconds)
            if out is not None:
                self.meter.outputs(out)
                self.meter.emitted(out.emitted)
        if out is None:
            return
        self.stats["uploads"] += out.uploads
        self.stats["requests"] += out.requests
        self.stats["bytes_up"] += out.bytes_up
        self.stats["bytes_down"] += out.bytes_down
        releases: dict[str, int] = {}
        hints: dict[int, bytes] = {}
        threshold: bytes | None = None
        for event in out.emitted:
            if isinstance(event, Release):
                version = self.local_registry.latest(event.model)
                assert version is not None
                current = self.registry.latest(event.model)
                if current is None or current.version < version.version:
                    self.registry.publish(event.model, self.local_registry.load(version),
                                          version.version)
                releases[event.model] = version.version
                if self.meter is not None:
                    self.meter.released(event.model, version.version)
                self.stats["releases"] += 1
                self.producer.send(topic_name(RELEASES, self.namespace), encode_event(event),
                                   key=event.model.encode())
            elif isinstance(event, Threshold):  # IntellectReq: to every device
                threshold = encode_event(event)
                self.stats["thresholds"] += 1
                self.producer.send(topic_name(THRESHOLD, self.namespace), threshold)
            elif isinstance(event, Hint):
                raw = encode_event(event)
                hints[event.device] = raw
                self.stats["hints"] += 1
                self.stats["hint_bytes"] += len(raw)
                self.producer.send(topic_name(HINTS, self.namespace), raw,
                                   key=str(event.device).encode(),
                                   partition=event.device % self.partitions)
        self.producer.flush()
        with self.client.pipeline(transaction=True) as pipe:
            if releases:
                pipe.hset(self.keys("cloud", "releases", k), mapping=releases)
            if hints:
                pipe.hset(self.keys("cloud", "hints", k), mapping=hints)
            if threshold is not None:
                pipe.zadd(self.keys("cloud", "thresholds"), {threshold: k})
            pipe.zadd(self.keys("cloud", "jobs"), {k: k})
            pipe.hset(self.keys("cloud", "job_time"), k, at)  # event time it was due
            pipe.execute()

    def _check_server(self) -> None:
        if self.server is not None and self.server.error is not None:
            raise RuntimeError("the correction server failed") from self.server.error

    def _flush_stats(self) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            for name, value in self.stats.items():
                pipe.hset(self.keys("cloud", "stats"), name, value)
            pipe.execute()

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Process until the end marker (or ``should_stop``); a correction server keeps
        answering until every partition's worker is past the end."""
        self.publish_initial()
        if self.server is not None:
            self.server.start()
        while self.step() and not should_stop():
            self._check_server()
        if self.server is not None:
            while not should_stop() and self.end is not None and not self._workers_done(
                    self.end):
                self._check_server()
                time.sleep(0.05)
            self.server.stop()
            self._check_server()
            self.stats.update(self.server.summary())
            self._flush_stats()
            if self.end is not None:  # the run is complete only with these counters
                self.client.set(self.keys("cloud", "boundary"), self.end)
        self.producer.flush()
        self.consumer.close()
        self.producer.close()
