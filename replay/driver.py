"""``dcrec replay``: a log (or the synthetic world) replayed through a runtime, with
prequential evaluation — every click after a user's first ``warmup`` is ranked
against sampled negatives by the device model *before* it learns the click."""

from __future__ import annotations

import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from dcrec.models.metrics import ROUND_METRICS, RankingEvaluator
from dcrec.replay.log import InteractionLog
from dcrec.replay.logging_policy import add_exposures
from dcrec.replay.negatives import NegativeSampler
from dcrec.replay.provenance import source_digest
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.live_metrics import Meter, describe_run
from dcrec.streams.local_runtime import LocalRuntime
from dcrec.streams.presets import PresetContext, build_pipeline
from dcrec.streams.processor import PARAMETER_AGE_BINS
from dcrec.streams.schema import Rejected

from dcrec.config import KafkaRuntimeSettings, ReplayConfig, WorldSettings


@dataclass
class ReplaySource:
    """What the runtime reads: the stream, its sizes, and how to pick negatives."""

    name: str
    n_users: int
    n_items: int
    n_events: int
    batches: Callable[[int], Iterator[EventBatch]]
    sampler: NegativeSampler
    rejected: list[Rejected]
    log: InteractionLog | None = None
    user_features: dict[str, np.ndarray] = field(default_factory=dict)


def _limit(batches: Iterator[EventBatch], max_events: int | None) -> Iterator[EventBatch]:
    seen = 0
    for batch in batches:
        if max_events is not None and seen + len(batch) > max_events:
            keep = max_events - seen
            if keep > 0:
                yield EventBatch(batch.index[:keep], batch.user[:keep], batch.item[:keep],
                                 batch.ts[:keep], batch.event[:keep])
            return
        seen += len(batch)
        yield batch


def load_log(dataset: str, world: WorldSettings, seed: int,
             columns: dict[str, str] | None = None, kcore: int = 0) -> InteractionLog:
    """A whole log in memory: a dataset (with its column mapping and k-core filter), or
    a (small enough) synthetic world. A log with no valid event is an error saying
    why."""
    if dataset == "world":
        from dcrec.replay.world import World, WorldConfig

        return World(WorldConfig(n_users=world.users, n_items=world.items,
                                 n_events=world.events, n_clusters=world.clusters,
                                 seed=seed)).to_log()
    from dcrec.replay.datasets import load_dataset

    log = load_dataset(dataset, kcore=kcore, **(columns or {}))
    if log.n_events == 0:
        raise ValueError(nothing_to_replay(log, kcore))
    return log


def _when(ts: int | None) -> str:
    """A unix time as an ISO date-time (UTC); an open bound as '(open)'."""
    if ts is None:
        return "(open)"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def nothing_to_replay(log: InteractionLog, kcore: int) -> str:
    """Why a log holds no event to replay: its rejected rows, or the k-core filter."""
    reasons = Counter(str(r.reason) for r in log.rejected)
    why = [f"{len(log.rejected):,} rows rejected ("
           + ", ".join(f"{r}: {n:,}" for r, n in sorted(reasons.items())) + ")"] if reasons else []
    if kcore > 0:
        why.append(f"--kcore {kcore} keeps only users and items with ≥ {kcore} clicks")
    return f"no valid events in {log.name}" + (": " + "; ".join(why) if why else "")


def open_source(config: ReplayConfig) -> ReplaySource:
    """Load (or generate) the stream a replay reads."""
    if config.dataset == "world":
        from dcrec.replay.world import World, WorldConfig

        world = World(WorldConfig(n_users=config.world.users, n_items=config.world.items,
                                  n_events=config.world.events,
                                  n_clusters=config.world.clusters, seed=config.seed))
        n_events = min(config.world.events, config.max_events or config.world.events)
        return ReplaySource(
            name="world", n_users=world.n_users, n_items=world.n_items, n_events=n_events,
            batches=lambda size: _limit(world.batches(size), config.max_events),
            sampler=NegativeSampler(world.n_items, config.n_negatives, config.seed),
            rejected=[], user_features=world.user_features,
        )
    log = load_log(config.dataset, config.world, config.seed, config.columns, config.kcore)
    windowed = log.time_window(config.start, config.end)
    if windowed.n_events == 0 and log.n_events > 0:
        raise ValueError(f"no events of {log.name} in the window {_when(config.start)} … "
                         f"{_when(config.end)}; the log runs from {_when(int(log.ts[0]))} "
                         f"to {_when(int(log.ts[-1]))}")
    log = add_exposures(windowed, config.slate_size, seed=config.seed)
    if config.max_events is not None:
        log = log.head(config.max_events)
    clicks = log.event == 1
    sampler = NegativeSampler.for_log(log.user[clicks], log.item[clicks], log.n_items,
                                      config.n_negatives, config.seed,
                                      positions=np.flatnonzero(clicks))
    return ReplaySource(name=log.name, n_users=log.n_users, n_items=log.n_items,
                        n_events=log.n_events, batches=log.batches, sampler=sampler,
                        rejected=log.rejected, log=log, user_features=log.user_features)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def preset_context(config: ReplayConfig, source: ReplaySource) -> PresetContext:
    """What the preset of a replay is built with."""
    m = config.model
    return PresetContext(n_users=source.n_users, n_items=source.n_items, seed=config.seed,
                         max_len=m.max_len, embedding_dim=m.embedding_dim, lr=m.lr, l2=m.l2,
                         batch_size=m.batch_size, epochs_per_job=m.epochs_per_job,
                         train_negatives=m.train_negatives,
                         replay_ratio=m.replay_ratio, replay_capacity=m.replay_capacity,
                         upload_interval=config.upload_interval,
                         request_budget=config.request_budget,
                         request_capacity=config.request_capacity,
                         request_queue=config.request_queue,
                         measured_capacity=config.measured_capacity,
                         user_features=source.user_features)


def cloud_rounds(evaluator: RankingEvaluator, job_marks: list[tuple[int, int]]) -> list[dict]:
    """Quality per cloud round: the clicks served between one cloud job and the next
    (round 0: before the first job), each with the event time its round began (DCCL
    Fig. 5)."""
    started = [None, *(ts for ts, _ in job_marks)]
    return [{"round": seg["segment"], "from_ts": started[seg["segment"]],
             "clicks": seg["rows"], **{k: seg[k] for k in ROUND_METRICS}}
            for seg in evaluator.segments([evaluated for _, evaluated in job_marks])]


def run_replay(config: ReplayConfig, source: ReplaySource | None = None,
               progress: Callable[[int], None] | None = None,
               kafka: KafkaRuntimeSettings | None = None,
               state_path: Path | None = None,
               on_kafka_run: Callable[[str, str], None] | None = None,
               count_flops: bool = False) -> dict:
    """Replay and evaluate; returns the report (DESIGN.md's contract). The kafka
    runtime takes its broker, Redis and worker settings from ``kafka``, and calls
    ``on_kafka_run`` with the run id and its Redis URL once the run's processes are up.
    ``state_path`` (local runtime): keep every device's final state there, one array
    per field (npz). ``count_flops`` (local runtime): count the device path's FLOPs
    into ``perf`` (it slows the device path: its timings are then not the method's).
    Either runtime records into the process's live metrics."""
    source = source or open_source(config)
    if config.runtime == "kafka":
        if state_path is not None:
            raise ValueError("device state files come from the local runtime; a kafka "
                             "run keeps device state in Redis")
        if count_flops:
            raise ValueError("FLOPs are counted in the local runtime")
        from dcrec.replay.kafka_replay import run_kafka_replay

        return run_kafka_replay(config, source, kafka or KafkaRuntimeSettings(), progress,
                                on_start=on_kafka_run)
    pipeline = build_pipeline(config.method, preset_context(config, source))
    evaluator = RankingEvaluator()
    meter = Meter(config.method)
    describe_run("local", source.name, config.method, "local", "replay")
    reasons = Counter(str(r.reason) for r in source.rejected)
    meter.dead_letters(reasons)  # rows the loader refused
    for model in pipeline.registry.models():
        if (version := pipeline.registry.latest(model)) is not None:
            meter.released(model, version.version)

    def score(users: np.ndarray, scores: np.ndarray) -> None:
        """Evaluate, and count the quality in the metrics as the evaluator ranked it."""
        kept = len(evaluator.ranks)
        evaluator.add(users, scores)
        if len(evaluator.ranks) > kept:
            meter.ranked(evaluator.ranks[-1], evaluator.aucs[-1])

    runtime = LocalRuntime(pipeline, source.n_users, source.sampler.sample, score,
                           config.cloud_interval, config.warmup, meter, count_flops)
    started = time.perf_counter()
    stats = runtime.run(source.batches(config.micro_batch), progress)
    wall = time.perf_counter() - started
    if state_path is not None:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(state_path, **runtime.state.columns)

    latencies = np.repeat(stats.batch_latency_ms, stats.batch_sizes) if stats.events else [0.0]
    return {
        "dataset": source.name,
        "method": config.method,
        "runtime": config.runtime,
        "seed": config.seed,
        "events": {
            "clicks": stats.clicks,
            "exposures": stats.exposures,
            "invalid": len(source.rejected),
            "invalid_reasons": dict(sorted(reasons.items())),
            "evaluated": stats.evaluated,
        },
        "metrics": evaluator.summary(),
        "comm": {
            "uploads": stats.uploads,
            "requests": stats.requests,
            "request_rate": stats.requests / stats.clicks if stats.clicks else 0.0,
            "bytes_up": stats.bytes_up,
            "bytes_down": stats.bytes_down,
            "releases": stats.releases,
            "hints": stats.hints,
            "hint_bytes": stats.hint_bytes,      # of bytes_down: S2F hints (MC²-SF)
            "upload_bytes": stats.upload_bytes,  # of bytes_up: device uploads (F2S, …)
            "cloud_jobs": stats.cloud_jobs,
        },
        **({"parameter_age": dict(zip(PARAMETER_AGE_BINS, stats.parameter_age.tolist(),
                                      strict=True))}
           if stats.parameter_age is not None else {}),
        "perf": {
            "wall_seconds": wall,
            "events_per_second": stats.events / wall if wall > 0 else 0.0,
            "device_events_per_second": (stats.events / stats.device_seconds
                                         if stats.device_seconds > 0 else 0.0),
            "cloud_seconds": stats.cloud_seconds,
            "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)),
            "peak_rss_mb": peak_rss_mb(),
            "state_bytes_per_device": runtime.state.bytes_per_device,
            # a trained preset's metrics are bit-reproducible for one torch thread
            # count, not across them (docs/performance.md)
            "training_threads": torch.get_num_threads(),
            **({"device_flops": stats.device_flops} if count_flops else {}),
        },
        "groups": evaluator.activity_groups(runtime.clicks_seen, config.activity_groups),
        "rounds": cloud_rounds(evaluator, stats.job_marks),
        # the cloud service answering device requests (CoCorrRec corrections, EC-CDR
        # parameters), called in process here
        **({"cloud_service": pipeline.service.summary()}
           if pipeline.service is not None else {}),
        # IntellectReq: each threshold the cloud set, with the demand it came from
        **({"thresholds": stats.thresholds} if stats.thresholds else {}),
        "config": config.model_dump(),
        "code": source_digest(),   # which code made this report
    }
