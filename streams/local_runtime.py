"""The local runtime: the whole pipeline in one process, on a simulated clock.

Event time drives everything. The stream is read in micro-batches; a micro-batch is
cut where the next cloud job is due, so a job at simulated time ``T`` sees exactly the
events before ``T`` and every event at or after ``T`` is served by what it released.
Within a micro-batch the processor runs vectorised across devices with each device's
events in order, scoring every click before learning from it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
from dcrec.models.training import cloud_job_threads
from dcrec.state.click_history import occurrence
from dcrec.state.device_state import DeviceStateTable
from dcrec.state.registry import ModelRegistry
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.live_metrics import Meter
from dcrec.streams.processor import CloudJob, DeviceBatch, DeviceProcessor, Outputs
from dcrec.streams.schema import CLICK, Hint, Release, Threshold, Upload, encode
from torch.utils.flop_counter import FlopCounterMode

# (positions, users, clicked items) -> candidates [N, 1 + negatives]
CandidateSampler = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
# (users, scores) for every evaluated click
ScoreSink = Callable[[np.ndarray, np.ndarray], None]


@dataclass
class Pipeline:
    """A preset wired up: the device processor and, if the method has one, its cloud job."""

    processor: DeviceProcessor
    cloud: CloudJob | None = None
    registry: ModelRegistry = field(default_factory=ModelRegistry)
    # the cloud's answer to device requests (CoCorrRec's correction service), if any
    service: Any = None


@dataclass
class RunStats:
    """Counters and timings of a run."""

    events: int = 0
    clicks: int = 0
    exposures: int = 0
    evaluated: int = 0
    uploads: int = 0
    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    cloud_jobs: int = 0
    releases: int = 0
    hints: int = 0
    hint_bytes: int = 0
    upload_bytes: int = 0
    cloud_seconds: float = 0.0
    device_seconds: float = 0.0
    # floating-point operations of the device processor's matrix products, when counted
    device_flops: int = 0
    # MRS thresholds the cloud set, with the demand and load they came from
    thresholds: list[dict] = field(default_factory=list)
    # each cloud job: (its event time, clicks evaluated before it) — where rounds begin
    job_marks: list[tuple[int, int]] = field(default_factory=list)
    batch_latency_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    # served clicks per parameter age (processors serving generated parameters)
    parameter_age: np.ndarray | None = None

    def add(self, out: Outputs) -> None:
        self.uploads += out.uploads
        self.requests += out.requests
        self.bytes_up += out.bytes_up
        self.bytes_down += out.bytes_down
        if out.parameter_age is not None:
            self.parameter_age = (out.parameter_age if self.parameter_age is None
                                  else self.parameter_age + out.parameter_age)


def slice_batch(batch: EventBatch, start: int, stop: int) -> EventBatch:
    return EventBatch(batch.index[start:stop], batch.user[start:stop], batch.item[start:stop],
                      batch.ts[start:stop], batch.event[start:stop])


class LocalRuntime:
    """Runs a :class:`Pipeline` over an event stream on the simulated clock."""

    def __init__(self, pipeline: Pipeline, n_devices: int, sample_candidates: CandidateSampler,
                 on_scores: ScoreSink, cloud_interval: int, warmup: int,
                 meter: Meter | None = None, count_flops: bool = False) -> None:
        self.pipeline = pipeline
        # count the device processor's FLOPs (torch's FlopCounterMode: slows it down)
        self.count_flops = count_flops
        self.meter = meter  # the process's live metrics, recorded per batch and job
        self.state = DeviceStateTable(pipeline.processor.state_spec, n_devices)
        self.sample_candidates = sample_candidates
        self.on_scores = on_scores
        self.cloud_interval = cloud_interval
        self.warmup = warmup
        self.clicks_seen = np.zeros(n_devices, dtype=np.int64)
        self.stats = RunStats()
        self.next_job: int | None = None

    def _deliver(self, out: Outputs) -> None:
        """Route a cloud job's emitted events to the devices."""
        self.stats.add(out)
        self._route(out.emitted)

    def _route(self, events: list) -> None:
        """Each emitted event to the hook of its consumer: releases, hints and thresholds
        to the device processor (``on_release``, ``on_hint``, ``on_threshold``), uploads
        to the cloud job
        (``on_upload``); a consumer without the hook ignores the event."""
        processor, cloud = self.pipeline.processor, self.pipeline.cloud
        if self.meter is not None:
            self.meter.emitted(events)
        for event in events:
            if isinstance(event, Release):
                self.stats.releases += 1
                version = self.pipeline.registry.latest(event.model)
                if version is not None and self.meter is not None:
                    self.meter.released(event.model, version.version)
                if version is not None and hasattr(processor, "on_release"):
                    processor.on_release(version, self.pipeline.registry)
            elif isinstance(event, Hint):
                self.stats.hints += 1
                self.stats.hint_bytes += len(encode(event))
                if hasattr(processor, "on_hint"):
                    processor.on_hint(event)
            elif isinstance(event, Threshold):
                self.stats.thresholds.append(msgspec.structs.asdict(event))
                if hasattr(processor, "on_threshold"):
                    processor.on_threshold(event)
            elif isinstance(event, Upload):
                self.stats.upload_bytes += len(encode(event))
                if cloud is not None and hasattr(cloud, "on_upload"):
                    cloud.on_upload(event)

    def _fire_due_jobs(self, now: int) -> int:
        """Run every cloud job due at or before event time ``now``; the next due time."""
        cloud = self.pipeline.cloud
        if self.next_job is None:
            self.next_job = now + self.cloud_interval
        while now >= self.next_job:
            if cloud is not None:
                started = time.perf_counter()
                with cloud_job_threads():
                    out = cloud.run(self.next_job)
                seconds = time.perf_counter() - started
                self.stats.cloud_seconds += seconds
                if self.meter is not None:
                    self.meter.cloud_job(seconds)
                    if out is not None:
                        self.meter.outputs(out)
                self.stats.cloud_jobs += 1
                self.stats.job_marks.append((self.next_job, self.stats.evaluated))
                if out is not None:
                    self._deliver(out)
            self.next_job += self.cloud_interval
        return self.next_job

    def _process(self, batch: EventBatch) -> None:
        started = time.perf_counter()
        clicks = batch.event == CLICK
        click_rank = np.zeros(len(batch), dtype=np.int64)
        if clicks.any():
            click_rank[clicks] = occurrence(batch.user[clicks])
        evaluate = clicks & (self.clicks_seen[batch.user] + click_rank >= self.warmup)
        candidates = self.sample_candidates(batch.index[evaluate], batch.user[evaluate],
                                            batch.item[evaluate])
        device_batch = DeviceBatch.build(batch, evaluate, candidates)
        rows = self.state.gather(device_batch.devices)
        counter = FlopCounterMode(display=False) if self.count_flops else None
        with counter or contextlib.nullcontext():
            new_rows, out = self.pipeline.processor(rows, device_batch)
        if counter is not None:
            self.stats.device_flops += counter.get_total_flops()
        self.state.scatter(device_batch.devices, new_rows)
        np.add.at(self.clicks_seen, batch.user[clicks], 1)
        elapsed = time.perf_counter() - started
        self.stats.device_seconds += elapsed
        self.stats.batch_latency_ms.append(elapsed * 1000.0)
        self.stats.batch_sizes.append(len(batch))
        self.stats.add(out)
        self.on_scores(batch.user[evaluate], out.scores)
        self.stats.events += len(batch)
        self.stats.clicks += int(clicks.sum())
        self.stats.exposures += int(len(batch) - clicks.sum())
        self.stats.evaluated += int(evaluate.sum())
        if self.meter is not None:
            self._record(int(clicks.sum()), len(batch) - int(clicks.sum()), elapsed, out)
        if self.pipeline.cloud is not None:
            self.pipeline.cloud.observe(batch)
        self._route(out.emitted)  # after the cloud saw the batch: uploads inform later jobs

    def _record(self, clicks: int, exposures: int, seconds: float, out: Outputs) -> None:
        meter = self.meter
        assert meter is not None
        meter.device_events(clicks, exposures, seconds)
        meter.outputs(out)
        if self.pipeline.service is not None:
            meter.service(self.pipeline.service)

    def run(self, batches: Iterable[EventBatch],
            progress: Callable[[int], None] | None = None) -> RunStats:
        """Consume the stream; ``progress`` is called with each batch's event count."""
        for batch in batches:
            start = 0
            while start < len(batch):
                next_job = self._fire_due_jobs(int(batch.ts[start]))
                stop = start + int(np.searchsorted(batch.ts[start:], next_job, side="left"))
                self._process(slice_batch(batch, start, stop))
                if progress:
                    progress(stop - start)
                start = stop
        return self.stats
