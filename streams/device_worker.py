"""The device side of the kafka runtime, apart from the consumer that feeds it.

Messages of the two device topics (``events.exposure``, ``events.click``) arrive per
partition, cut into slices by the replay producer's watermarks (see
:mod:`dcrec.streams.slices`). A worker processes, for the partitions it owns, one slice
at a time — the events of every owned partition at that slice in stream order, as one
micro-batch — with exactly the processor the local runtime runs:

1. jobs due at the slice's watermark: in an event-time replay the worker waits for the
   cloud process to finish them, then applies their releases and queues their hints;
2. invalid messages become dead letters (``events.deadletter``, a counter per reason);
3. candidates, predict-before-update, the processor call, uploads to ``device.uploads``;
4. one Redis MULTI/EXEC commits the new device rows, the partition's progress (the next
   offset of each topic), evaluation totals and counters — state and position together.

After a crash the consumer may deliver messages again: those before the committed
offsets are skipped, and a device's last applied stream position makes re-applying an
event a no-op. Messages the consumer skips are read again
(:mod:`dcrec.streams.read_continuity`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from dcrec.models.metrics import ROUND_METRICS, hit_rate_at, ndcg_at, rank_of_positive, row_auc
from dcrec.state.click_history import occurrence
from dcrec.state.redis_registry import RedisModelRegistry
from dcrec.state.redis_store import RedisDeviceStore, RunKeys
from dcrec.streams.device_messages import (
    DecodedSlice,
    after_position,
    decode_slice,
    marker_slice,
)
from dcrec.streams.live_metrics import Meter
from dcrec.streams.local_runtime import CandidateSampler
from dcrec.streams.processor import PARAMETER_AGE_BINS, DeviceBatch, DeviceProcessor
from dcrec.streams.read_continuity import Continuity, ReadContinuity
from dcrec.streams.run_keys import Progress, latency_buckets, progress_keys, read_progress
from dcrec.streams.schema import (
    CLICK,
    Hint,
    ParamRequest,
    Threshold,
    Upload,
    dead_letter,
    decode,
    encode,
)
from dcrec.streams.slices import JobClock
from dcrec.streams.topics import (
    DEADLETTER,
    DEVICE_TOPICS,
    REQUESTS,
    UPLOADS,
    device_partition,
    topic_name,
)

log = logging.getLogger(__name__)

# (topic, value, key, partition, headers) -> None; flushed before each commit
Send = Callable[[str, bytes, bytes | None, int | None, list[tuple[str, bytes]]], None]


class Offered(enum.Enum):
    """What :meth:`DeviceWorker.offer` did with a message."""

    KEPT = "kept"            # buffered: acknowledge once its slice is committed
    DONE = "done"            # already reflected in the committed state: acknowledge now
    NOT_OWNED = "not owned"  # a partition this worker does not own (any more): leave it
    #                          unacknowledged — its owner reads it from the committed offset
    REPEAT = "repeat"  # buffered already, or due again after a seek back: leave it
    GAP = "gap"        # messages before it never arrived: seek the consumer back to
    #                    :meth:`DeviceWorker.expected_offset` (see streams.read_continuity)


@dataclass
class Entry:
    """A buffered message: its offset, value, headers, producer timestamp (ms) and
    the consumer's handle for acknowledging it."""

    offset: int
    value: bytes
    headers: Any
    timestamp_ms: int
    handle: Any = None
    marker: tuple[int, int, bool] | None = None
    received_ms: float = 0.0


@dataclass
class WorkerConfig:
    """How a worker runs: the run's id and topic namespace, event-time alignment."""

    run: str
    namespace: str
    partitions: int
    n_devices: int
    n_items: int
    warmup: int
    cloud_interval: int
    aligned: bool = True
    backoff_max: float = 2.0


@dataclass
class PartitionBuffer:
    entries: dict[str, deque[Entry]]
    continuity: ReadContinuity
    closed: dict[str, int] = field(default_factory=dict)  # highest marker slice seen
    end: int | None = None  # the slice number of the end marker: no slice follows


class DeviceWorker:
    """Slices in, committed device state out (see the module docstring)."""

    def __init__(self, config: WorkerConfig, processor: DeviceProcessor,
                 sample_candidates: CandidateSampler, client: redis.Redis, send: Send,
                 flush: Callable[[], None], meter: Meter | None = None) -> None:
        self.config = config
        self.meter = meter  # the process's live metrics, recorded per committed slice
        self.processor = processor
        self.sample_candidates = sample_candidates
        self.client = client
        self.keys = RunKeys(config.run)
        self.store = RedisDeviceStore(client, config.run, processor.state_spec)
        self.registry = RedisModelRegistry(client, config.run)
        self.send = send
        self.flush = flush
        self.topics = {topic_name(t, config.namespace): t for t in DEVICE_TOPICS}
        self.progress: dict[int, Progress] = {}
        self.buffers: dict[int, PartitionBuffer] = {}
        self.loaded: dict[str, int] = {}
        self.draining = False  # inside drain(): a slice is being processed
        # bumped on every change of ownership: a slice whose processing awaited across a
        # rebalance is abandoned, not committed with buffers that are no longer current
        self.ownership_epoch = 0
        self.advanced_at = time.monotonic()   # when a slice was last committed

    # --- assignment --------------------------------------------------------------------

    async def assign(self, partitions: set[int]) -> None:
        """Take over ``partitions``: their progress as last committed in Redis."""
        new = sorted(set(partitions) - set(self.progress))
        if new:
            self.ownership_epoch += 1
            self.advanced_at = time.monotonic()
            done = await self._redis(lambda: read_progress(self.client, self.keys, new))
            for p, progress in zip(new, done, strict=True):
                self.progress[p] = progress
                self.buffers[p] = PartitionBuffer(
                    {t: deque() for t in self.topics.values()},
                    ReadContinuity({t: progress.offsets.get(t) for t in self.topics.values()}))
            owner = f"{socket.gethostname()}:{os.getpid()}"
            await self._redis(lambda: self.client.hset(self.keys("owners"),
                                                       mapping=dict.fromkeys(new, owner)))
        for p in set(self.progress) - set(partitions):
            self.revoke({p})

    def revoke(self, partitions: set[int]) -> None:
        """Give up ``partitions``: their unacknowledged messages go to the next owner."""
        if set(partitions) & set(self.progress):
            self.ownership_epoch += 1
        for p in partitions:
            self.progress.pop(p, None)
            self.buffers.pop(p, None)
        if self.meter is not None:
            self.meter.forget_lag("worker", self.topics.values(), partitions)

    def lag(self, highwater: Callable[[str, int], int | None]) -> dict[tuple[str, int], int]:
        """Per owned (topic, partition): messages on the broker past the committed
        offset, given the broker's ``highwater(topic, partition)`` (None: unknown yet)."""
        lags = {}
        for p, progress in self.progress.items():
            for full, name in self.topics.items():
                end = highwater(full, p)
                if end is not None:
                    lags[(name, p)] = max(int(end) - progress.offsets.get(name, 0), 0)
        return lags

    # --- input -------------------------------------------------------------------------

    def offer(self, topic: str, partition: int, entry: Entry) -> Offered:
        """Buffer one message of an owned partition (see :class:`Offered`)."""
        progress = self.progress.get(partition)
        name = self.topics.get(topic)
        if progress is None or name is None:
            return Offered.NOT_OWNED
        if entry.offset < progress.offsets.get(name, 0):
            return Offered.DONE
        buffer = self.buffers[partition]
        continuity = buffer.continuity.check(name, entry.offset, time.monotonic())
        if continuity is Continuity.GAP:
            return Offered.GAP
        if continuity is not Continuity.NEXT:
            return Offered.REPEAT
        entry.received_ms = time.time() * 1000.0
        entry.marker = marker_slice(entry.value, entry.headers)
        buffer.entries[name].append(entry)
        if entry.marker is not None:
            buffer.closed[name] = max(buffer.closed.get(name, -1), entry.marker[0])
            if entry.marker[2]:
                buffer.end = entry.marker[0]
        return Offered.KEPT

    def expected_offset(self, topic: str, partition: int) -> int:
        """The next offset of ``topic`` the worker must see on ``partition``."""
        return self.buffers[partition].continuity.expected.get(self.topics[topic]) or 0

    def skip_to(self, topic: str, partition: int, log_start: int) -> None:
        """The broker's log of ``topic`` on ``partition`` starts at ``log_start`` (a
        partition revoked meanwhile is its next owner's to skip)."""
        if partition in self.buffers:
            self.buffers[partition].continuity.skip_to(self.topics[topic], log_start)

    def resync(self, end: Callable[[str, int], int | None]) -> dict[tuple[str, int], int]:
        """Where to seek back, for each (topic, partition) the worker waits on that has
        had nothing for a while though the broker's ``end(topic, partition)`` is past the
        next offset to see — messages lost on the way at the tail, which no later message
        reveals as a gap. Not while a slice is being processed."""
        waiting = None if self.draining else self.waiting_on()
        if waiting is None:
            return {}
        now = time.monotonic()
        seeks = {}
        for p, names in waiting[1].items():
            continuity = self.buffers[p].continuity
            for full, name in self.topics.items():
                if name in names and continuity.idle_behind(name, end(full, p), now):
                    seeks[(full, p)] = continuity.seek_back(
                        name, now, f"idle on partition {p} with the broker ahead")
        return seeks

    def waiting_on(self) -> tuple[int, dict[int, list[str]]] | None:
        """The lowest pending slice and, for each owned partition at it, the topics whose
        marker closing it has not arrived (None when nothing is owned or every owned
        partition is through its end marker)."""
        if all(self.buffers[p].end is not None and pr.next_slice >= self.buffers[p].end
               for p, pr in self.progress.items()):
            return None
        k = min(p.next_slice for p in self.progress.values())
        return k, {p: [t for t in self.topics.values()
                       if self.buffers[p].closed.get(t, -1) < k + 1]
                   for p, pr in sorted(self.progress.items()) if pr.next_slice == k}

    def _ready_group(self) -> list[int]:
        """Partitions at the lowest pending slice, if every one of them has it whole."""
        if not self.progress:
            return []
        k = min(p.next_slice for p in self.progress.values())
        group = [p for p, pr in self.progress.items() if pr.next_slice == k]
        for p in group:
            closed = self.buffers[p].closed
            if any(closed.get(t, -1) < k + 1 for t in self.topics.values()):
                return []
        return group

    async def drain(self) -> list[Any]:
        """Process every slice that is complete; the handles of the messages whose
        effects are now committed."""
        handles: list[Any] = []
        self.draining = True
        try:
            while group := self._ready_group():
                handles.extend(await self._process_group(group))
        finally:
            self.draining = False
        return handles

    # --- one slice ---------------------------------------------------------------------

    def _take_slice(self, p: int, k: int) -> tuple[list[Entry], list[Any], int | None,
                                                    dict[str, int]]:
        """Pop slice ``k`` of partition ``p``: its messages, handles to acknowledge, its
        opening watermark and the offsets at which slice ``k + 1`` begins."""
        entries, handles, watermark, offsets = [], [], None, {}
        for name, queue in self.buffers[p].entries.items():
            while queue:
                entry = queue[0]
                if entry.marker is not None and entry.marker[0] > k:
                    offsets[name] = entry.offset  # slice k+1 starts at its marker
                    break
                queue.popleft()
                handles.append(entry.handle)
                if entry.marker is not None:
                    if entry.marker[0] == k:
                        watermark = entry.marker[1]
                    continue
                entries.append(entry)
        return entries, handles, watermark, offsets

    async def _process_group(self, group: list[int]) -> list[Any]:
        cfg = self.config
        started = time.perf_counter()
        epoch = self.ownership_epoch
        k = self.progress[group[0]].next_slice
        taken = [self._take_slice(p, k) for p in group]
        entries = [e for t in taken for e in t[0]]
        handles = [h for t in taken for h in t[1]]
        first = self.progress[group[0]]
        watermark = next((t[2] for t in taken if t[2] is not None), first.watermark)
        clock = JobClock(cfg.cloud_interval, first.next_job)
        jobs = clock.due(watermark) if watermark is not None else []

        # cloud outputs: releases to serve, hints to deliver
        if cfg.aligned and jobs:
            await self._wait_cloud(k)
        upper = k if cfg.aligned else await self._redis(self._cloud_boundary)
        applied = first.applied_boundary
        versions = dict(first.versions)
        new_hints: dict[int, bytes] = {}
        lag: Counter[str] = Counter()
        if upper > applied:
            outputs = await self._redis(lambda: self.client.zrangebyscore(
                self.keys("cloud", "jobs"), applied + 1, upper))
            if outputs and watermark is not None:
                # drift of a live run: event time between a job falling due and its
                # outputs reaching devices (an event-time replay: the gap to the next event)
                due = await self._redis(lambda: self.client.hmget(
                    self.keys("cloud", "job_time"), outputs))
                lag.update(release_lag_seconds=sum(max(0, watermark - int(t))
                                                   for t in due if t is not None),
                           releases_applied=len(outputs))
            for boundary in outputs:
                b = int(boundary)
                release = await self._redis(lambda b=b: self.client.hgetall(
                    self.keys("cloud", "releases", b)))
                versions.update({m.decode(): int(v) for m, v in release.items()})
                hints = await self._redis(lambda b=b: self.client.hgetall(
                    self.keys("cloud", "hints", b)))
                owned = set(group)
                new_hints.update({int(d): raw for d, raw in hints.items()
                                  if device_partition(int(d), cfg.partitions) in owned})
            applied = max(applied, upper)
        await self._redis(lambda: self._serve(versions))
        if hasattr(self.processor, "on_threshold"):  # the latest threshold set by then
            await self._redis(lambda: self._apply_threshold(upper))

        decoded = decode_slice([(e.value, e.headers, e.timestamp_ms) for e in entries],
                               cfg.n_devices, cfg.n_items)
        # producer send -> this worker holding the message (the transport's share)
        delivery_ms = np.array([e.received_ms - e.timestamp_ms for e in entries
                                if e.timestamp_ms], np.float64)
        pending_raw, (devices, header, rows), out_stats = await self._run_batch(
            decoded, new_hints, k)
        out_stats["counters"].update(lag)
        # offsets the broker no longer had (see read_continuity): counted, never silent
        out_stats["counters"]["offsets_lost"] += sum(
            self.buffers[p].continuity.take_lost() for p in group if p in self.buffers)

        def commit() -> bool:
            # WATCH the group's progress keys: a commit retried after a lost EXEC reply,
            # or a previous owner finishing this slice after a rebalance, finds the slice
            # done (or its EXEC refused) instead of applying it twice
            with self.client.pipeline(transaction=True) as pipe:
                watched = progress_keys(self.keys, group)
                pipe.watch(*watched)
                if Progress.decode(pipe.get(watched[0])).next_slice > k:
                    return False
                pipe.multi()
                self.store.write(pipe, devices, header, rows)
                self._queue_pending(pipe, pending_raw)
                for name, value in out_stats["counters"].items():
                    if value:
                        pipe.hincrby(self.keys("stats"), name, int(value))
                for name, value in out_stats["eval"].items():
                    pipe.hincrbyfloat(self.keys("eval"), name, float(value))
                # the slice's clicks by the cloud round that served them: the round
                # ends at the next job due (DCCL Fig. 5; "start" before the first watermark)
                served_until = "start" if clock.next_job is None else clock.next_job
                for name in ("n", *ROUND_METRICS):
                    if name in out_stats["eval"]:
                        pipe.hincrbyfloat(self.keys("eval", "rounds"),
                                          f"{served_until}:{name}",
                                          float(out_stats["eval"][name]))
                if out_stats["user_auc"]:
                    for user, (s, n) in out_stats["user_auc"].items():
                        pipe.hincrbyfloat(self.keys("eval", "user_auc"), user, s)
                        pipe.hincrby(self.keys("eval", "user_n"), user, n)
                for reason, n in out_stats["reasons"].items():
                    pipe.hincrby(self.keys("deadletters"), reason, n)
                now_ms = time.time() * 1000.0
                for bucket, n in latency_buckets(now_ms - decoded.produced_ms).items():
                    pipe.hincrby(self.keys("latency"), bucket, n)
                for bucket, n in latency_buckets(delivery_ms).items():
                    pipe.hincrby(self.keys("latency", "delivery"), bucket, n)
                for bucket, n in latency_buckets(out_stats["round_trips"]).items():
                    pipe.hincrby(self.keys("latency", "correction"), bucket, n)
                for p, t in zip(group, taken, strict=True):
                    pr = self.progress[p]
                    offsets = {**pr.offsets, **t[3]}
                    new = Progress(k + 1, offsets, clock.next_job, applied, versions, None)
                    pipe.set(self.keys("progress", p), new.encode())
                pipe.execute()
                return True

        if self.ownership_epoch != epoch:
            # a rebalance while this slice waited (for the cloud, or a correction): the
            # buffers it was taken from are gone; its messages stay unacknowledged and
            # are read again from the committed offsets by whoever owns them now
            log.info("slice %d of partitions %s abandoned: ownership changed", k, group)
            return []
        committed = await self._redis(commit)
        if self.meter is not None and committed:  # a slice done before counts once
            self._record(out_stats, time.perf_counter() - started,
                         time.time() * 1000.0 - decoded.produced_ms)
        for p, t in zip(group, taken, strict=True):
            pr = self.progress[p]
            self.progress[p] = Progress(k + 1, {**pr.offsets, **t[3]}, clock.next_job, applied,
                                        versions, None)
        self.advanced_at = time.monotonic()
        return handles

    def _record(self, out_stats: dict, seconds: float, latency_ms: np.ndarray) -> None:
        """A committed slice into the live metrics (a sample of its events' latency)."""
        meter = self.meter
        assert meter is not None
        c, totals = out_stats["counters"], out_stats["eval"]
        meter.device_events(c["clicks"], c["exposures"], seconds)
        meter.communication(c["uploads"], c["requests"], c["bytes_up"], c["bytes_down"])
        meter.sent(out_stats["sent"])
        meter.dead_letters(out_stats["reasons"])
        meter.quality(int(totals.get("n", 0)), totals.get("HR@10", 0.0),
                      totals.get("NDCG@10", 0.0), totals.get("AUC", 0.0))
        if len(latency_ms):
            sample = latency_ms[np.linspace(0, len(latency_ms) - 1, min(len(latency_ms), 32),
                                            dtype=np.int64)]
            meter.event_latency(sample / 1000.0)

    async def _run_batch(self, decoded: DecodedSlice, new_hints: dict[int, bytes], k: int):
        cfg = self.config
        counters: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        sent: Counter[str] = Counter()  # messages per topic
        devices = np.unique(decoded.batch.user)
        header, rows = await self._redis(lambda: self.store.gather(devices))
        after_position(decoded, header["last_pos"][np.searchsorted(devices,
                                                                   decoded.batch.user)])
        for r in decoded.rejected:
            dl = dead_letter(r, int(time.time()))
            self.send(topic_name(DEADLETTER, cfg.namespace), encode(dl), None, None, [])
            reasons[r.reason] += 1
        batch = decoded.batch
        pending = dict(zip(devices.tolist(), await self._redis(
            lambda: self.client.hmget(self.keys("pending"), devices.tolist()))
            if len(devices) else [], strict=True))
        pending = {d: raw for d, raw in pending.items() if raw is not None}
        pending.update({d: raw for d, raw in new_hints.items() if d in set(devices.tolist())})
        for raw in pending.values():
            hint = decode(raw)
            if isinstance(hint, Hint) and hasattr(self.processor, "on_hint"):
                self.processor.on_hint(hint)
        pending_ops = {"delete": list(pending),
                       "keep": {d: raw for d, raw in new_hints.items() if d not in pending}}
        eval_totals: dict[str, float] = {}
        user_auc: dict[int, tuple[float, int]] = {}
        round_trips = np.zeros(0)
        if len(batch):
            slot = np.searchsorted(devices, batch.user)
            clicks = batch.event == CLICK
            rank = np.zeros(len(batch), np.int64)
            if clicks.any():
                rank[clicks] = occurrence(batch.user[clicks])
            evaluate = clicks & (header["clicks"][slot] + rank >= cfg.warmup)
            candidates = self.sample_candidates(batch.index[evaluate], batch.user[evaluate],
                                                batch.item[evaluate])
            device_batch = DeviceBatch.build(batch, evaluate, candidates)
            own = np.searchsorted(devices, device_batch.devices)
            new_rows, out = self.processor({n: c[own] for n, c in rows.items()}, device_batch)
            for name, column in rows.items():
                column[own] = new_rows[name]
            np.add.at(header["events"], slot, 1)
            np.add.at(header["clicks"], slot[clicks], 1)
            np.maximum.at(header["last_pos"], slot, batch.index)
            counters.update(events=len(batch), clicks=int(clicks.sum()),
                            exposures=int((~clicks).sum()), evaluated=int(evaluate.sum()),
                            uploads=out.uploads, requests=out.requests, bytes_up=out.bytes_up,
                            bytes_down=out.bytes_down)
            if out.parameter_age is not None:
                counters.update({f"parameter_age {label}": int(n) for label, n
                                 in zip(PARAMETER_AGE_BINS, out.parameter_age, strict=True)})
            eval_totals, user_auc = self._evaluation(batch.user[evaluate], out.scores)
            responder = getattr(self.processor, "responder", None)
            if hasattr(responder, "take_stats"):  # CoCorrRec corrections over the topics
                round_trips, correction_counters = responder.take_stats()
                counters.update(corrections_answered=len(round_trips), **correction_counters)
            for event in out.emitted:
                self._emit(event, k, counters, sent)
        self.flush()
        return pending_ops, (devices, header, rows), {
            "counters": counters, "eval": eval_totals, "user_auc": user_auc,
            "reasons": reasons, "round_trips": round_trips, "sent": sent}

    @staticmethod
    def _evaluation(users: np.ndarray, scores: np.ndarray,
                    ) -> tuple[dict[str, float], dict[int, tuple[float, int]]]:
        if len(users) == 0:
            return {}, {}
        if not np.all(np.isfinite(scores)):
            raise ValueError("model produced non-finite scores")
        ranks, aucs = rank_of_positive(scores), row_auc(scores)
        totals = {"n": float(len(ranks)), "HR@1": hit_rate_at(ranks, 1).sum(),
                  "HR@5": hit_rate_at(ranks, 5).sum(), "HR@10": hit_rate_at(ranks, 10).sum(),
                  "NDCG@5": ndcg_at(ranks, 5).sum(), "NDCG@10": ndcg_at(ranks, 10).sum(),
                  "MRR": (1.0 / ranks).sum(), "AUC": aucs.sum()}
        ids, inverse = np.unique(users, return_inverse=True)
        sums = np.bincount(inverse, weights=aucs)
        counts = np.bincount(inverse)
        return totals, {int(u): (float(s), int(n))
                        for u, s, n in zip(ids, sums, counts, strict=True)}

    def _emit(self, event: Any, k: int, counters: Counter[str], sent: Counter[str]) -> None:
        cfg = self.config
        raw = encode(event)
        if isinstance(event, Upload):
            counters["upload_bytes"] += len(raw)
            topic = UPLOADS
        elif isinstance(event, ParamRequest):
            topic = REQUESTS
        else:
            return
        sent[topic] += 1
        self.send(topic_name(topic, cfg.namespace), raw, str(event.device).encode(),
                  device_partition(event.device, cfg.partitions),
                  [("slice", str(k).encode())])

    def _queue_pending(self, pipe: redis.client.Pipeline, ops: dict) -> None:
        if ops["delete"]:
            pipe.hdel(self.keys("pending"), *ops["delete"])
        if ops["keep"]:
            pipe.hset(self.keys("pending"), mapping=ops["keep"])

    def _serve(self, versions: dict[str, int]) -> None:
        """Load the model versions this slice is served with, if not loaded already."""
        for model in sorted(set(versions) | set(self.loaded)):
            want = versions.get(model, 1)
            if self.loaded.get(model, 1) == want:
                continue
            version = self.registry.version(model, want)
            if version is None:
                raise RuntimeError(f"{model} v{want} is not in the registry")
            if hasattr(self.processor, "on_release"):
                self.processor.on_release(version, self.registry)
            self.loaded[model] = want

    def _apply_threshold(self, upper: int) -> None:
        latest = self.client.zrevrangebyscore(self.keys("cloud", "thresholds"), upper,
                                              "-inf", start=0, num=1)
        if latest:
            event = decode(latest[0])
            if isinstance(event, Threshold):
                self.processor.on_threshold(event)  # type: ignore[attr-defined]

    def _cloud_boundary(self) -> int:
        raw = self.client.get(self.keys("cloud", "boundary"))
        return int(raw) if raw is not None else -1

    async def _wait_cloud(self, k: int) -> None:
        """Event-time replay: wait until the cloud process has run the jobs due at
        slice ``k``'s watermark."""
        delay = 0.001
        while await self._redis(self._cloud_boundary) < k:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _redis(self, call: Callable[[], Any]) -> Any:
        """Run a Redis call; while Redis is unreachable, back off and retry."""
        delay = 0.05
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError, redis.WatchError) as error:
                log.warning("redis unavailable (%s); retrying in %.2f s", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.backoff_max)
