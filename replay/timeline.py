"""What the live dashboard shows: a run's metrics sampled into a timeline.

Every ``interval`` seconds a sampler thread reads the metrics of the run's processes —
this process's registry, and the ``/metrics`` of the kafka processes the run recorded in
Redis — adds them up, and turns them into one point: throughput, consumer lag, the
request rate against the threshold and the cloud's capacity, rolling prequential
quality per method, communication, model versions. Counters become rates between
samples; rolling quality and request rate cover at least ``window_clicks`` recent
clicks. The replay loop is never locked or called: it only updates its counters.

Each point is also appended to a recording (JSON lines: ``{"info": …}``, ``{"point":
…}``, and ``{"finished": …}`` at the end), which ``dcrec dashboard`` serves for a
running or finished run.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from dcrec.streams.live_metrics import QUALITY, REGISTRY, SERVING
from dcrec.streams.topics import CLICKS, DEVICE_TOPICS
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from dcrec.config import DashboardSettings

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]
# (sample name, sorted labels) -> value, summed over the processes of a run
Snapshot = dict[tuple[str, Labels], float]
# the metric families of one or more processes
Source = Callable[[], Iterable[Metric]]


_GROWING = ("_total", "_count", "_sum", "_bucket")  # counter-like samples


def this_process() -> Iterable[Metric]:
    """The metric families of this process's registry."""
    return REGISTRY.collect()


def scrape(url: str, timeout: float = 2.0) -> list[Metric]:
    """The metric families a ``/metrics`` endpoint shows ([] if it does not answer)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except OSError as error:
        log.debug("no metrics from %s: %s", url, error)
        return []
    return list(text_string_to_metric_families(text))


class RunTargets:
    """The ``/metrics`` of a kafka run's processes, as they recorded them in Redis
    (this process's own address left out: :func:`this_process` reads it directly). A
    process that stopped answering — a run's processes stop at its end — counts with
    what it showed last."""

    def __init__(self, redis_url: str, run: str) -> None:
        from dcrec.state.redis_store import redis_client

        # no back-off: a run whose Redis is gone has no targets, and a sample must not wait
        self.client = redis_client(redis_url, backoff_max=None)
        self.run = run
        self.last: dict[str, list[Metric]] = {}  # by address

    def __call__(self) -> list[Metric]:
        import redis
        from dcrec.replay.kafka_replay import metrics_targets

        own = {server.url for server in SERVING}
        try:
            urls = sorted(set(metrics_targets(self.client, self.run).values()) - own)
        except redis.RedisError as error:  # the run is over: what its processes showed
            log.debug("no metrics targets: %s", error)
            urls = []
        for url in urls:
            if families := scrape(url):
                self.last[url] = families
        return [family for families in self.last.values() for family in families]


def snapshot(families: Iterable[Metric]) -> Snapshot:
    """Every sample of ``families``, counters and histograms summed over processes,
    gauges the largest any process shows."""
    values: Snapshot = {}
    for family in families:
        gauge = family.type == "gauge"
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in values:
                values[key] = (max(values[key], sample.value) if gauge
                               else values[key] + sample.value)
            else:
                values[key] = sample.value
    return values


def total(values: Snapshot, name: str, **labels: str | tuple[str, ...]) -> float:
    """The sum of ``name``'s samples whose labels match (a tuple: any of its values)."""
    found = 0.0
    for (sample, sample_labels), value in values.items():
        if sample != name:
            continue
        have = dict(sample_labels)
        if all(have.get(k) in (v if isinstance(v, tuple) else (v,))
               for k, v in labels.items()):
            found += value
    return found


def gauge(values: Snapshot, name: str) -> float | None:
    """A gauge's largest value over its labels (None if no process has set it)."""
    found = [value for (sample, _), value in values.items() if sample == name]
    return max(found) if found else None


def by_label(values: Snapshot, name: str, label: str) -> dict[str, float]:
    """``name``'s samples keyed by one label's value (summed over the others)."""
    found: dict[str, float] = {}
    for (sample, sample_labels), value in values.items():
        if sample == name and (key := dict(sample_labels).get(label)) is not None:
            found[key] = found.get(key, 0.0) + value
    return found


def clicks_of(values: Snapshot) -> float:
    """Clicks the device processors consumed."""
    return total(values, "dcrec_events_total", topic=CLICKS, direction="in")


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def make_point(t: float, now: Snapshot, history: Sequence[tuple[float, Snapshot, float]],
               window_clicks: int) -> dict[str, Any]:
    """One point of the timeline at ``t`` seconds from ``now`` and the earlier
    snapshots ``(t, values, clicks_of(values))``, oldest first (at least one)."""
    last_t, last, _ = history[-1]
    dt = max(t - last_t, 1e-9)
    clicks = clicks_of(now)
    # the newest earlier snapshot at least window_clicks ago, else the oldest
    base, base_clicks = history[0][1], history[0][2]
    for _, earlier, earlier_clicks in reversed(history):
        if clicks - earlier_clicks >= window_clicks:
            base, base_clicks = earlier, earlier_clicks
            break
    d_clicks = clicks - base_clicks
    events = total(now, "dcrec_events_total", topic=DEVICE_TOPICS, direction="in")
    produced = total(now, "dcrec_events_total", topic=DEVICE_TOPICS, direction="out")
    quality = {}
    scored = by_label(now, "dcrec_scored_clicks_total", "method")
    scored_base = by_label(base, "dcrec_scored_clicks_total", "method")
    for method, n in sorted(scored.items()):
        dn = n - scored_base.get(method, 0.0)
        quality[method] = {metric: _ratio(
            total(now, "dcrec_scored_quality_total", method=method, metric=metric)
            - total(base, "dcrec_scored_quality_total", method=method, metric=metric), dn)
            for metric in QUALITY}
    return {
        "t": round(t, 3),
        "events": events,
        "produced": produced,
        "events_per_second": (events - total(last, "dcrec_events_total", topic=DEVICE_TOPICS,
                                              direction="in")) / dt,
        "produced_per_second": (produced - total(last, "dcrec_events_total",
                                                 topic=DEVICE_TOPICS, direction="out")) / dt,
        "lag": total(now, "dcrec_consumer_lag", consumer="worker"),
        "cloud_lag": total(now, "dcrec_consumer_lag", consumer="cloud"),
        "clicks": clicks,
        "requests": total(now, "dcrec_param_requests_total"),
        "request_rate": _ratio(total(now, "dcrec_param_requests_total")
                               - total(base, "dcrec_param_requests_total"), d_clicks),
        "request_capacity": gauge(now, "dcrec_request_capacity"),
        "request_load": gauge(now, "dcrec_request_load"),
        "threshold": gauge(now, "dcrec_request_threshold"),
        "threshold_level": gauge(now, "dcrec_request_threshold_level"),
        "queue": gauge(now, "dcrec_cloud_queue_length"),
        "queue_bound": gauge(now, "dcrec_cloud_queue_bound"),
        "shed": total(now, "dcrec_requests_shed_total"),
        "quality": quality,
        "uploads": total(now, "dcrec_uploads_total"),
        "bytes_up": total(now, "dcrec_bytes_total", direction="up"),
        "bytes_down": total(now, "dcrec_bytes_total", direction="down"),
        "versions": {m: int(v) for m, v in sorted(by_label(
            now, "dcrec_model_version", "model").items())},
        "cloud_jobs": total(now, "dcrec_cloud_job_seconds_count"),
        "cloud_seconds": total(now, "dcrec_cloud_job_seconds_sum"),
        "dead_letters": total(now, "dcrec_dead_letters_total"),
    }


class Timeline(Protocol):
    """What the dashboard page reads."""

    def view(self, since: int) -> dict[str, Any]:
        """``{"info", "status", "points" (from index since), "next", "summary"}``."""
        ...


class LiveTimeline:
    """Samples ``sources`` in a thread every ``settings.interval`` seconds (see the
    module docstring); recorded to ``record`` if given."""

    def __init__(self, settings: DashboardSettings, info: dict[str, Any],
                 sources: list[Source], record: Path | None = None) -> None:
        self.settings = settings
        self.info = dict(info)
        self.sources = list(sources)
        self.record = record
        self.points: deque[dict[str, Any]] = deque(maxlen=settings.max_points)
        self.dropped = 0  # points older than the ones kept
        self.history: deque[tuple[float, Snapshot, float]] = deque(maxlen=settings.max_points)
        self.summary: dict[str, Any] | None = None
        self.lock = threading.Lock()  # the sampler appends while the server reads
        self.stopping = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True, name="dcrec-sampler")
        if record is not None:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text("")
        self._write({"info": self.info})
        # counters grow over the life of the process: the timeline starts from here
        self.baseline = self._read_sources()
        start = self._snapshot()
        self.history.append((0.0, start, clicks_of(start)))

    def start(self) -> LiveTimeline:
        self.thread.start()
        return self

    def add_source(self, source: Source, **info: Any) -> None:
        """Read one more source from the next sample on (a kafka run's processes)."""
        with self.lock:
            self.sources.append(source)
            self.info.update(info)
        self._write({"info": info})

    def _read_sources(self) -> Snapshot:
        families: list[Metric] = []
        for source in list(self.sources):
            families.extend(source())
        return snapshot(families)

    def _snapshot(self) -> Snapshot:
        """The sources now, counters since the timeline began."""
        values = self._read_sources()
        for key, before in self.baseline.items():
            if key in values and key[0].endswith(_GROWING):
                values[key] -= before
        return values

    def sample(self) -> dict[str, Any]:
        """Take one point now."""
        now = self._snapshot()
        t = time.monotonic() - self.started
        point = make_point(t, now, list(self.history), self.settings.window_clicks)
        with self.lock:
            if len(self.points) == self.points.maxlen:
                self.dropped += 1
            self.points.append(point)
            self.history.append((t, now, point["clicks"]))
        self._write({"point": point})
        return point

    def _run(self) -> None:
        while not self.stopping.wait(self.settings.interval):
            try:
                self.sample()
            except Exception:  # a failed sample must not end the dashboard
                log.exception("sampling the metrics failed")

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        """Stop sampling after a last point; ``summary``: what the run reported."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.sample()
        with self.lock:
            self.summary = summary or {}
        self._write({"finished": self.summary})

    def _write(self, line: dict[str, Any]) -> None:
        if self.record is not None:
            with self.record.open("a") as out:
                out.write(json.dumps(json_safe(line), allow_nan=False) + "\n")

    def view(self, since: int) -> dict[str, Any]:
        with self.lock:
            start = max(since - self.dropped, 0)
            points = list(self.points)[start:]
            return {"info": dict(self.info),
                    "status": "finished" if self.summary is not None else "running",
                    "points": points, "next": self.dropped + len(self.points),
                    "summary": self.summary}


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float as None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class RecordedTimeline:
    """A recording, read as it grows (a run still going) or whole (a finished one)."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"no recording at {path}")
        self.path = path
        self.offset = 0
        self.info: dict[str, Any] = {}
        self.points: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None
        self.lock = threading.Lock()

    def _read(self) -> None:
        with self.path.open("rb") as source:
            source.seek(self.offset)
            data = source.read()
        complete = data[:data.rfind(b"\n") + 1]  # a line still being written waits
        self.offset += len(complete)
        for raw in complete.splitlines():
            if not raw.strip():
                continue
            line = json.loads(raw)
            if "info" in line:
                self.info.update(line["info"])
            elif "point" in line:
                self.points.append(line["point"])
            elif "finished" in line:
                self.summary = line["finished"]

    def view(self, since: int) -> dict[str, Any]:
        with self.lock:
            self._read()
            return {"info": dict(self.info),
                    "status": "finished" if self.summary is not None else "running",
                    "points": self.points[max(since, 0):], "next": len(self.points),
                    "summary": self.summary}


def latest_recording(folder: Path) -> Path:
    """The most recently written recording in ``folder``."""
    found = sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no recordings in {folder} (replay with --dashboard)")
    return found[-1]
