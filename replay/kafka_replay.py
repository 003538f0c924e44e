"""A replay on the kafka runtime: topics, a cloud process, device workers, the replay
producer, and the report read back from Redis.

Every process of a run reads the run's specification from Redis (``dcrec:{run}:spec``)
and builds the same preset from it, so ``dcrec worker --run R`` and ``dcrec cloud --run
R`` started by hand join a run the same way the replay starts them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import redis
from dcrec.infra.services import endpoints
from dcrec.models.metrics import METRIC_NAMES, ROUND_METRICS, RankingEvaluator
from dcrec.replay.driver import ReplaySource, open_source, peak_rss_mb, preset_context
from dcrec.state.device_state import spec_nbytes
from dcrec.state.redis_store import HEADER, RedisDeviceStore, RunKeys, redis_client
from dcrec.streams.live_metrics import SERVING, Meter, describe_run, serve_metrics
from dcrec.streams.presets import build_pipeline
from dcrec.streams.processor import PARAMETER_AGE_BINS
from dcrec.streams.replay_producer import ReplayProducer, produce_slices
from dcrec.streams.run_keys import latency_percentile, read_progress
from dcrec.streams.schema import decode
from dcrec.streams.slices import event_time_slices
from dcrec.streams.topics import CLICKS, create_topics

from dcrec.config import KafkaRuntimeSettings, ReplayConfig

log = logging.getLogger(__name__)


def write_spec(client: redis.Redis, run: str, config: ReplayConfig,
               settings: KafkaRuntimeSettings, bootstrap: str, aligned: bool) -> None:
    spec = {"config": config.model_dump(), "settings": settings.model_dump(),
            "bootstrap": bootstrap, "aligned": aligned, "namespace": run}
    client.set(RunKeys(run)("spec"), json.dumps(spec))


def read_spec(client: redis.Redis, run: str) -> dict:
    raw = client.get(RunKeys(run)("spec"))
    if raw is None:
        raise ValueError(f"no run {run!r} in this Redis")
    return json.loads(raw)


def _partitions(settings: KafkaRuntimeSettings) -> int:
    return settings.topics[CLICKS].partitions


@contextmanager
def exported_metrics(client: redis.Redis, run: str, role: str, host: str, port: int,
                     ) -> Iterator[str]:
    """Serve this process's ``/metrics`` on ``host:port`` while the block runs, its
    address recorded in the run's Redis keys (``dcrec:{run}:metrics``)."""
    server = serve_metrics(host, port)
    key, name = RunKeys(run)("metrics"), f"{role}:{os.getpid()}"
    client.hset(key, name, server.url)
    log.info("%s of run %s: metrics at %s/metrics", role, run, server.url)
    try:
        yield server.url
    finally:
        with suppress(redis.RedisError):
            client.hdel(key, name)
        server.close()


def metrics_targets(client: redis.Redis, run: str) -> dict[str, str]:
    """The ``/metrics`` addresses the processes of run ``run`` recorded, by process."""
    return {k.decode(): v.decode() for k, v in client.hgetall(RunKeys(run)("metrics")).items()}


def run_worker(run: str, redis_url: str, metrics_port: int | None = None) -> None:
    """``dcrec worker``: a faust device worker of run ``run`` (until stopped), its
    ``/metrics`` at ``metrics_port`` (None: the run's first worker port)."""
    import torch
    from dcrec.streams.device_worker import DeviceWorker, WorkerConfig
    from dcrec.streams.faust_worker import attach_device_agent, faust_app
    from faust.worker import Worker
    from kafka import KafkaProducer

    torch.set_num_threads(1)
    client = redis_client(redis_url, backoff_max=None)  # DeviceWorker backs off itself
    spec = read_spec(client, run)
    config = ReplayConfig(**spec["config"])
    settings = KafkaRuntimeSettings(**spec["settings"])
    source = open_source(config)
    pipeline = build_pipeline(config.method, preset_context(config, source))
    partitions = _partitions(settings)
    worker_config = WorkerConfig(run, spec["namespace"], partitions, source.n_users,
                                 source.n_items, config.warmup,
                                 config.cloud_interval, spec["aligned"],
                                 settings.redis_backoff_max)
    producer = KafkaProducer(bootstrap_servers=spec["bootstrap"], linger_ms=2)

    def send(topic, value, key, partition, headers) -> None:
        producer.send(topic, value, key=key, partition=partition, headers=headers)

    if pipeline.service is not None:  # CoCorrRec: corrections over the topics
        from dcrec.streams.correction_transport import KafkaResponder

        pipeline.processor.responder = KafkaResponder(  # type: ignore[attr-defined]
            spec["bootstrap"], spec["namespace"], partitions, send, producer.flush,
            settings.correction_timeout if not spec["aligned"] else settings.aligned_wait)

    meter = Meter(config.method)
    describe_run(run, source.name, config.method, "kafka", "worker")

    def make() -> DeviceWorker:
        return DeviceWorker(worker_config, pipeline.processor, source.sampler.sample, client,
                            send, producer.flush, meter)

    app = faust_app(f"dcrec-{run}", spec["bootstrap"], settings.faust)
    attach_device_agent(app, spec["namespace"], partitions, make)
    port = settings.role_metrics_port("worker") if metrics_port is None else metrics_port
    with exported_metrics(client, run, "worker", settings.metrics_host, port):
        Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def run_cloud(run: str, redis_url: str, metrics_port: int | None = None) -> None:
    """``dcrec cloud``: the cloud jobs of run ``run``, until its stream ends; its
    ``/metrics`` at ``metrics_port`` (None: the run's cloud port)."""
    from dcrec.streams.cloud_process import CloudProcess

    spec = read_spec(redis_client(redis_url), run)
    config = ReplayConfig(**spec["config"])
    settings = KafkaRuntimeSettings(**spec["settings"])
    client = redis_client(redis_url, settings.redis_backoff_max)
    source = open_source(config)
    pipeline = build_pipeline(config.method, preset_context(config, source))
    describe_run(run, source.name, config.method, "kafka", "cloud")
    port = settings.role_metrics_port("cloud") if metrics_port is None else metrics_port
    with exported_metrics(client, run, "cloud", settings.metrics_host, port):
        CloudProcess(run, spec["namespace"], spec["bootstrap"], _partitions(settings),
                     source.n_users, source.n_items, pipeline.cloud, pipeline.registry, client,
                     config.cloud_interval, spec["aligned"], pipeline.service,
                     Meter(config.method)).run()


DCREC_CLI = (sys.executable, "-c", "from dcrec.cli import app; app()")


def spawn_role(role: str, run: str, redis_url: str, log_dir: Path, threads: int = 1,
               metrics_port: int = 0, program: Sequence[str] = DCREC_CLI) -> subprocess.Popen:
    """Start ``dcrec worker`` or ``dcrec cloud`` (``program`` followed by the role's
    arguments) for a run as a child process using ``threads`` torch threads, its
    ``/metrics`` at ``metrics_port`` (0: a free port)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_dir / f"{role}-{time.monotonic_ns()}.log", "ab")  # noqa: SIM115
    env = {**os.environ, "DCREC_THREADS": str(threads)}
    return subprocess.Popen(
        [*program, role, "--run", run, "--redis", redis_url,
         "--metrics-port", str(metrics_port)],
        stdout=out, stderr=subprocess.STDOUT, env=env)


def run_finished(client: redis.Redis, run: str, partitions: int, end_slice: int) -> bool:
    keys = RunKeys(run)
    progress = read_progress(client, keys, range(partitions))
    boundary = client.get(keys("cloud", "boundary"))
    return (all(p.next_slice >= end_slice for p in progress)
            and boundary is not None and int(boundary) >= end_slice)


class KafkaRun:
    """One run's processes: the cloud process and the device workers.

    Workers only infer and use one torch thread each. In an event-time replay the cloud
    trains with this process's torch threads, the count the local runtime trains with:
    float reductions differ between thread counts, and the two runtimes' metrics are
    equal only when the training arithmetic is. In a live run it uses one, leaving the
    other cores to the workers' latency."""

    def __init__(self, run: str, redis_url: str, log_dir: Path, aligned: bool,
                 settings: KafkaRuntimeSettings | None = None) -> None:
        import torch

        self.run, self.redis_url, self.log_dir = run, redis_url, log_dir
        self.settings = settings or KafkaRuntimeSettings()
        self.cloud_threads = torch.get_num_threads() if aligned else 1
        self.cloud: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def start(self, workers: int) -> None:
        self.cloud = spawn_role("cloud", self.run, self.redis_url, self.log_dir,
                                self.cloud_threads, self.settings.role_metrics_port("cloud"))
        for _ in range(workers):
            self.add_worker()

    def add_worker(self) -> subprocess.Popen:
        port = self.settings.role_metrics_port("worker", len(self.workers))
        process = spawn_role("worker", self.run, self.redis_url, self.log_dir,
                             metrics_port=port)
        self.workers.append(process)
        return process

    def check(self) -> None:
        """Fail if the cloud process died before the end, or every worker did (one
        worker's death only moves its partitions to the others)."""
        if self.cloud is not None and self.cloud.poll() not in (None, 0):
            raise RuntimeError(f"the cloud process exited with {self.cloud.returncode}; "
                               f"see {self.log_dir}")
        if self.workers and all(w.poll() is not None for w in self.workers):
            raise RuntimeError(f"every device worker exited; see {self.log_dir}")

    def stop(self) -> None:
        for process in [*self.workers, *([self.cloud] if self.cloud else [])]:
            if process.poll() is None:
                process.terminate()
        for process in [*self.workers, *([self.cloud] if self.cloud else [])]:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_assigned(client: redis.Redis, run: str, partitions: int, processes: KafkaRun,
                  timeout: float = 120.0) -> None:
    """Wait until every partition has a worker (faust's first join takes seconds)."""
    deadline = time.monotonic() + timeout
    while client.hlen(RunKeys(run)("owners")) < partitions:
        processes.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"partitions of run {run} not assigned after {timeout:.0f} s")
        time.sleep(0.1)


def wait_finished(client: redis.Redis, run: str, partitions: int, end_slice: int,
                  processes: KafkaRun, timeout: float) -> None:
    """Wait until every partition and the cloud are past ``end_slice``."""
    deadline = time.monotonic() + timeout
    while not run_finished(client, run, partitions, end_slice):
        processes.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run} not finished after {timeout:.0f} s")
        time.sleep(0.1)


@contextmanager
def applied_progress(client: redis.Redis, run: str,
                     progress: Callable[[int], None] | None) -> Iterator[None]:
    """Call ``progress`` with the events the workers newly committed, twice a second,
    until the block ends."""
    if progress is None:
        yield
        return
    stop = threading.Event()
    reported = 0

    def report() -> None:
        nonlocal reported
        applied = int(client.hget(RunKeys(run)("stats"), "events") or 0)
        progress(applied - reported)
        reported = applied

    def poll() -> None:
        while not stop.wait(0.5):
            report()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        report()


def _first_ts(source: ReplaySource, config: ReplayConfig) -> int:
    """The event time of the stream's first event (where the job clock starts)."""
    first = next(iter(source.batches(config.micro_batch)), None)
    return int(first.ts[0]) if first is not None and len(first) else 0


def served_rounds(totals: dict[str, float], first_ts: int, cloud_interval: int,
                  cloud_jobs: int) -> list[dict]:
    """The report's ``rounds`` from the workers' per-round sums (field ``"{t}:{metric}"``,
    ``t`` the event time the round's serving ended, when the next job fell due): the
    local runtime's :func:`~dcrec.replay.driver.cloud_rounds`, round ``k`` the clicks
    served after ``k`` cloud jobs. Jobs fall due every ``cloud_interval`` from one
    interval after the stream's first event (``JobClock``)."""
    first_job = first_ts + cloud_interval
    sums: dict[int, dict[str, float]] = {}
    for key, value in totals.items():
        until, name = key.rsplit(":", 1)
        k = (0 if until == "start" or cloud_jobs == 0
             else (int(until) - first_job) // cloud_interval)
        sums.setdefault(k, {}).setdefault(name, 0.0)
        sums[k][name] += value
    return [{"round": k, "from_ts": None if k == 0 else first_job + (k - 1) * cloud_interval,
             "clicks": int(sums[k]["n"]),
             **{m: sums[k][m] / sums[k]["n"] for m in ROUND_METRICS}}
            for k in sorted(sums) if sums[k].get("n", 0) > 0]


def kafka_report(client: redis.Redis, run: str, config: ReplayConfig, source: ReplaySource,
                 state_bytes: int, wall: float) -> dict:
    """The replay report (DESIGN.md's contract) from what the run left in Redis."""
    keys = RunKeys(run)
    stats = {k.decode(): int(v) for k, v in client.hgetall(keys("stats")).items()}
    cloud = {k.decode(): float(v) for k, v in client.hgetall(keys("cloud", "stats")).items()}
    totals = {k.decode(): float(v) for k, v in client.hgetall(keys("eval")).items()}
    n = totals.get("n", 0.0)
    metrics = {name: (totals[name] / n if n else float("nan"))
               for name in METRIC_NAMES if name != "UAUC"}
    auc_sum = {int(k): float(v) for k, v in client.hgetall(keys("eval", "user_auc")).items()}
    auc_n = {int(k): int(v) for k, v in client.hgetall(keys("eval", "user_n")).items()}
    users = np.array(sorted(auc_sum), dtype=np.int64)
    per_user = np.array([auc_sum[u] / auc_n[u] for u in users.tolist()])
    metrics["UAUC"] = float(per_user.mean()) if len(users) else float("nan")
    metrics = {name: metrics[name] for name in METRIC_NAMES}
    clicks_seen = np.zeros(source.n_users, np.int64)
    for device, blob in client.hscan_iter(keys("state"), count=1000):
        clicks_seen[int(device)] = np.frombuffer(blob, HEADER, count=1)[0]["clicks"]
    evaluator = RankingEvaluator([users], [np.ones(len(users), np.int64)], [per_user])
    latency = {int(k): int(v) for k, v in client.hgetall(keys("latency")).items()}
    delivery = {int(k): int(v)
                for k, v in client.hgetall(keys("latency", "delivery")).items()}
    correction = {int(k): int(v)
                  for k, v in client.hgetall(keys("latency", "correction")).items()}
    reasons = {k.decode(): int(v) for k, v in client.hgetall(keys("deadletters")).items()}
    events = stats.get("events", 0)
    dead = sum(reasons.values())
    loaded = {str(r.reason): 0 for r in source.rejected}
    for r in source.rejected:
        loaded[str(r.reason)] += 1
    all_reasons = {k: loaded.get(k, 0) + reasons.get(k, 0) for k in sorted({*loaded, *reasons})}
    clicks = stats.get("clicks", 0)
    requests = stats.get("requests", 0) + int(cloud.get("requests", 0))
    return {
        "dataset": source.name, "method": config.method, "runtime": "kafka",
        "seed": config.seed,
        "events": {"clicks": clicks, "exposures": stats.get("exposures", 0),
                   "invalid": len(source.rejected) + dead, "invalid_reasons": all_reasons,
                   "evaluated": stats.get("evaluated", 0)},
        "metrics": metrics,
        "comm": {
            "uploads": stats.get("uploads", 0) + int(cloud.get("uploads", 0)),
            "requests": requests,
            "request_rate": requests / clicks if clicks else 0.0,
            "bytes_up": stats.get("bytes_up", 0) + int(cloud.get("bytes_up", 0)),
            "bytes_down": stats.get("bytes_down", 0) + int(cloud.get("bytes_down", 0)),
            "releases": int(cloud.get("releases", 0)), "hints": int(cloud.get("hints", 0)),
            "hint_bytes": int(cloud.get("hint_bytes", 0)),
            "upload_bytes": stats.get("upload_bytes", 0),
            "cloud_jobs": int(cloud.get("cloud_jobs", 0)),
        },
        **({"parameter_age": {label: stats.get(f"parameter_age {label}", 0)
                              for label in PARAMETER_AGE_BINS}}
           if any(f"parameter_age {label}" in stats for label in PARAMETER_AGE_BINS)
           else {}),
        "perf": {
            "wall_seconds": wall,
            "events_per_second": events / wall if wall > 0 else 0.0,
            "device_events_per_second": events / wall if wall > 0 else 0.0,
            "cloud_seconds": cloud.get("cloud_seconds", 0.0),
            # event-to-state: from the producer's send to the Redis commit of the state
            "p50_ms": latency_percentile(latency, 50),
            "p99_ms": latency_percentile(latency, 99),
            # its transport share: from the producer's send to the worker receiving it
            "delivery_p50_ms": latency_percentile(delivery, 50),
            "delivery_p99_ms": latency_percentile(delivery, 99),
            "peak_rss_mb": peak_rss_mb(),
            "state_bytes_per_device": state_bytes,
        },
        "groups": evaluator.activity_groups(clicks_seen, config.activity_groups),
        "rounds": served_rounds(
            {k.decode(): float(v) for k, v in client.hgetall(keys("eval", "rounds")).items()},
            _first_ts(source, config), config.cloud_interval, int(cloud.get("cloud_jobs", 0))),
        **({"corrections": correction_report(stats, cloud, correction)}
           if correction or cloud.get("corrections") else {}),
        # mean event time from a cloud job falling due to its outputs reaching devices
        **({"cloud_service": {k: int(cloud.get(f"service_{k}", 0))
                              for k in ("shed", "max_queue", "queue_bound")}}
           if "service_queue_bound" in cloud else {}),
        **({"thresholds": thresholds} if (thresholds := [
            msgspec.structs.asdict(decode(raw))
            for raw in client.zrange(keys("cloud", "thresholds"), 0, -1)]) else {}),
        "release_lag_seconds": (stats.get("release_lag_seconds", 0)
                                / max(stats.get("releases_applied", 0), 1)),
        # offsets a worker found missing from the broker (streams.read_continuity)
        "offsets_lost": stats.get("offsets_lost", 0),
        "config": config.model_dump(),
    }


def correction_report(stats: dict[str, int], cloud: dict[str, float],
                      round_trips: dict[int, int]) -> dict[str, float]:
    """CoCorrRec's Table 5 as measured on the topics: bytes up and down per correction,
    the cloud's time to generate one, and the device's wait from sending its hidden
    states to holding the correction (p50/p99)."""
    requests = stats.get("requests", 0)
    answered = stats.get("corrections_answered", 0)
    return {
        "requests": requests, "answered": answered,
        "timeouts": stats.get("correction_timeouts", 0),
        "rejected": int(cloud.get("correction_rejected", 0)),
        "bytes_up_per_request": stats.get("correction_bytes_up", 0) / requests
        if requests else 0.0,
        "bytes_down_per_correction": stats.get("correction_bytes_down", 0) / answered
        if answered else 0.0,
        "generate_ms_per_correction": 1000.0 * cloud.get("correction_seconds", 0.0)
        / max(cloud.get("corrections", 0.0), 1.0),
        "round_trip_p50_ms": latency_percentile(round_trips, 50),
        "round_trip_p99_ms": latency_percentile(round_trips, 99),
    }


@dataclass
class KafkaSession:
    """A kafka run under way: its Redis, its processes and the replay producer."""

    run: str
    config: ReplayConfig
    source: ReplaySource
    settings: KafkaRuntimeSettings
    client: redis.Redis
    processes: KafkaRun
    producer: ReplayProducer
    state_bytes: int
    started: float = field(default_factory=time.perf_counter)

    @property
    def partitions(self) -> int:
        return _partitions(self.settings)

    def finish(self, timeout: float = 3600.0, produced: dict[int, int] | None = None,
               ) -> dict:
        """Close the stream, wait until workers and cloud are through it, and report.
        With ``produced`` (valid events sent per device) the report says how many
        devices' applied-event counters in Redis differ from it (lost or doubled)."""
        self.producer.watermark(self.producer.last_ts, end=True)
        end_slice = self.producer.slices - 1
        self.producer.close()
        wait_finished(self.client, self.run, self.partitions, end_slice, self.processes,
                      timeout)
        wall = time.perf_counter() - self.started
        report = kafka_report(self.client, self.run, self.config, self.source,
                              self.state_bytes, wall)
        report["perf"]["training_threads"] = self.processes.cloud_threads
        speed = self.settings.speed
        report["kafka"] = {"run": self.run, "workers": self.settings.workers,
                           "partitions": self.partitions, "slices": end_slice,
                           "release_lag_seconds": report.pop("release_lag_seconds"),
                           "offsets_lost": report.pop("offsets_lost"),
                           "mode": "event-time" if speed == 0 else f"live x{speed:g}"}
        if produced is not None:
            applied = {d: int(h["events"]) for d, h in RedisDeviceStore(
                self.client, self.run, {}).headers().items()}
            devices = set(produced) | set(applied)
            report["kafka"]["device_counters"] = {
                "devices": len(devices), "events_produced": sum(produced.values()),
                "events_applied": sum(applied.values()),
                "mismatched_devices": sum(produced.get(d, 0) != applied.get(d, 0)
                                          for d in devices)}
        return report


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _reachable(redis_url: str, broker: str, settings: KafkaRuntimeSettings, run: str) -> None:
    """Check Redis once (no back-off: an unreachable one at the start is an error, not
    half an hour of retries) and create the run's topics on the broker; RuntimeError
    saying which cannot be used."""
    from kafka.errors import KafkaError

    try:
        with redis_client(redis_url, backoff_max=None) as probe:
            probe.ping()
    except redis.ConnectionError as error:
        raise RuntimeError(f"the kafka runtime cannot reach Redis at {redis_url}: "
                           f"{error}") from None
    try:
        create_topics(broker, settings, namespace=run)
    except KafkaError as error:
        raise RuntimeError(f"the kafka runtime cannot use its broker {broker}: "
                           f"{error}") from None


@contextmanager
def kafka_session(config: ReplayConfig, source: ReplaySource,
                  settings: KafkaRuntimeSettings, run: str | None = None,
                  on_start: Callable[[str, str], None] | None = None,
                  ) -> Iterator[KafkaSession]:
    """Topics, run specification, cloud process and device workers of a new run, its
    producer ready; everything started is stopped on leaving. ``on_start`` is called
    with the run id and its Redis URL once the processes are up. This process serves
    ``/metrics`` (the producer's counters) unless it already does (a dashboard)."""
    run = run or f"r{uuid.uuid4().hex[:8]}"
    log_dir = Path("runs") / "kafka" / run
    pipeline = build_pipeline(config.method, preset_context(config, source))
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C, so the workers, cloud and embedded services this
        # run started are stopped rather than left running
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with endpoints(settings, log_dir) as ends:
        _reachable(ends.redis, ends.broker, settings, run)
        client = redis_client(ends.redis, settings.redis_backoff_max)
        write_spec(client, run, config, settings, ends.broker, aligned=settings.speed == 0)
        processes = KafkaRun(run, ends.redis, log_dir, aligned=settings.speed == 0,
                             settings=settings)
        producer = None
        describe_run(run, source.name, config.method, "kafka", "replay")
        with ExitStack() as metrics:
            if SERVING:  # this process's dashboard serves /metrics already
                client.hset(RunKeys(run)("metrics"), f"replay:{os.getpid()}", SERVING[0].url)
            else:
                metrics.enter_context(exported_metrics(
                    client, run, "replay", settings.metrics_host,
                    settings.role_metrics_port("replay")))
            try:
                processes.start(settings.workers)
                wait_assigned(client, run, _partitions(settings), processes)
                if on_start is not None:
                    on_start(run, ends.redis)
                producer = ReplayProducer(ends.broker, run, _partitions(settings),
                                          live=bool(settings.speed))
                yield KafkaSession(run, config, source, settings, client, processes, producer,
                                   spec_nbytes(pipeline.processor.state_spec))
            finally:
                processes.stop()
                if producer is not None:
                    producer.close()

def run_kafka_replay(config: ReplayConfig, source: ReplaySource,
                     settings: KafkaRuntimeSettings,
                     progress: Callable[[int], None] | None = None,
                     run: str | None = None, timeout: float = 3600.0,
                     while_running: Callable[[KafkaSession], None] | None = None,
                     on_start: Callable[[str, str], None] | None = None,
                     ) -> dict:
    """Replay ``source`` through the kafka runtime and report. ``settings.speed`` 0
    is an event-time replay (the local runtime's results); otherwise a live run paced
    at that speed-up (``inf``: unpaced) whose cloud outputs land when they are ready.
    ``while_running`` is called in a thread once the stream starts (fault injection);
    ``on_start`` with the run id and Redis URL once the run's processes are up."""
    with (kafka_session(config, source, settings, run, on_start) as session,
          applied_progress(session.client, session.run, progress)):
        if while_running is not None:
            threading.Thread(target=while_running, args=(session,), daemon=True).start()
        aligned = settings.speed == 0
        speed = None if aligned or settings.speed == float("inf") else settings.speed
        slices = event_time_slices(source.batches(config.micro_batch), config.cloud_interval)
        produced = produce_slices(session.producer, slices, speed=speed,
                                  tick=settings.watermark_tick, meter=Meter(config.method))
        return session.finish(timeout, produced)
