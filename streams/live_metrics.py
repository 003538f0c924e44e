"""The live metrics of a dcrec process, defined once, exported to Prometheus at
``/metrics``.

Runtimes record into them at their edges — the local runtime after each micro-batch,
cloud job and routed output; a kafka device worker after each committed slice; the
cloud process after each job; the replay producer after each slice — never inside a
processor, and never per event (a micro-batch or slice is one update). Counters only
grow: a dashboard or Prometheus turns them into rates, e.g. the rolling prequential
HR@10 is the rate of ``dcrec_scored_quality_total{metric="HR@10"}`` over the rate of
``dcrec_scored_clicks_total``.

Every kafka-runtime process serves ``/metrics`` on loopback (:func:`serve_metrics`),
each at its own port (``KafkaRuntimeSettings.metrics_port``, 9460: the replay process,
where ``--dashboard`` serves its page too; 9461 the cloud process; 9462 + i device
worker i); a port in use falls back to a free one, and every process records its
address in the run's Redis keys (``dcrec:{run}:metrics``) so the dashboard finds it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from dcrec.models.metrics import ndcg_at
from dcrec.streams.processor import Outputs
from dcrec.streams.schema import Hint, ParamRequest, Release, Threshold, Upload
from dcrec.streams.topics import (
    CLICKS,
    DEADLETTER,
    EXPOSURES,
    HINTS,
    RELEASES,
    REQUESTS,
    THRESHOLD,
    UPLOADS,
)
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

QUALITY = ("HR@10", "NDCG@10", "AUC")  # the rolling prequential quality, per method

RUN = Info("dcrec_run", "The run this process belongs to: run id, dataset, method, "
           "runtime and the process's role", registry=REGISTRY)
EVENTS = Counter("dcrec_events", "Events consumed (direction=in) and produced "
                 "(direction=out), per topic of the event flow", ["topic", "direction"],
                 registry=REGISTRY)
DEAD_LETTERS = Counter("dcrec_dead_letters", "Rejected input, per reason", ["reason"],
                       registry=REGISTRY)
CONSUMER_LAG = Gauge("dcrec_consumer_lag", "Messages on the broker beyond what a consumer "
                     "has committed (workers) or read (cloud), per topic and partition",
                     ["consumer", "topic", "partition"], registry=REGISTRY)
BATCH_SECONDS = Histogram(
    "dcrec_batch_seconds", "Processing time of one micro-batch (local runtime) or one "
    "slice of a worker's partitions (kafka runtime)", registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
EVENT_LATENCY = Histogram(
    "dcrec_event_latency_seconds", "Kafka runtime: from the producer's send to the commit "
    "of the device state (a sample of each slice's events)", registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
UPLOADS_SENT = Counter("dcrec_uploads", "Device uploads (negative memory, metapatches, "
                       "TTT states)", registry=REGISTRY)
BYTES = Counter("dcrec_bytes", "Bytes between devices and cloud (direction=up|down)",
                ["direction"], registry=REGISTRY)
PARAM_REQUESTS = Counter("dcrec_param_requests", "Requests devices sent for cloud "
                         "parameters or corrections", registry=REGISTRY)
REQUESTS_SHED = Counter("dcrec_requests_shed", "Requests the cloud's door turned away at "
                        "capacity", registry=REGISTRY)
THRESHOLD_VALUE = Gauge("dcrec_request_threshold", "The MRS threshold the cloud set "
                        "(IntellectReq)", ["method"], registry=REGISTRY)
THRESHOLD_LEVEL = Gauge("dcrec_request_threshold_level", "Share of the devices' MRS sample "
                        "under the threshold", ["method"], registry=REGISTRY)
REQUEST_LOAD = Gauge("dcrec_request_load", "Requests per click since the previous "
                     "threshold: the cloud's load", ["method"], registry=REGISTRY)
REQUEST_CAPACITY = Gauge("dcrec_request_capacity", "Share of clicks the cloud can answer",
                         ["method"], registry=REGISTRY)
QUEUE_LENGTH = Gauge("dcrec_cloud_queue_length", "Requests the cloud admitted and has not "
                     "worked off yet", ["method"], registry=REGISTRY)
QUEUE_BOUND = Gauge("dcrec_cloud_queue_bound", "Requests the cloud may hold waiting",
                    ["method"], registry=REGISTRY)
CLOUD_JOB_SECONDS = Histogram(
    "dcrec_cloud_job_seconds", "Duration of one cloud job (training, distillation, "
    "threshold)", registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
MODEL_VERSION = Gauge("dcrec_model_version", "Latest released version, per model",
                      ["model"], registry=REGISTRY)
SCORED_CLICKS = Counter("dcrec_scored_clicks", "Clicks scored before the device learnt "
                        "them (prequential), per method", ["method"], registry=REGISTRY)
SCORED_QUALITY = Counter("dcrec_scored_quality", "Sum over scored clicks of HR@10, "
                         "NDCG@10 and AUC, per method; over dcrec_scored_clicks_total, the "
                         "mean", ["method", "metric"], registry=REGISTRY)

# what each emitted event is on the topics of the event flow
_TOPIC_OF = {Upload: UPLOADS, Release: RELEASES, Hint: HINTS, Threshold: THRESHOLD,
             ParamRequest: REQUESTS}


_SAMPLES = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created")}


def exported_names() -> set[str]:
    """Every sample name this process's ``/metrics`` can show (``_total``, ``_bucket``,
    ``_info`` … included), whether or not it has a sample yet."""
    return {family.name + suffix for family in REGISTRY.collect()
            for suffix in _SAMPLES.get(family.type, ("",))}


def topic_of(event: Any) -> str | None:
    """The topic an emitted event travels on (None: it is not a message)."""
    return _TOPIC_OF.get(type(event))


class Meter:
    """One runtime's recorder into the process's metrics (see the module docstring)."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.shed_seen = 0

    def device_events(self, clicks: int, exposures: int, seconds: float | None = None,
                      ) -> None:
        """A micro-batch or slice of device events consumed (``seconds``: its
        processing time)."""
        if clicks:
            EVENTS.labels(CLICKS, "in").inc(clicks)
        if exposures:
            EVENTS.labels(EXPOSURES, "in").inc(exposures)
        if seconds is not None:
            BATCH_SECONDS.observe(seconds)

    def produced(self, clicks: int, exposures: int) -> None:
        """Device events the replay producer sent."""
        if clicks:
            EVENTS.labels(CLICKS, "out").inc(clicks)
        if exposures:
            EVENTS.labels(EXPOSURES, "out").inc(exposures)

    def event_latency(self, seconds: Iterable[float]) -> None:
        """Event-to-state latencies of a sample of a slice's events."""
        for value in seconds:
            EVENT_LATENCY.observe(float(value))

    def communication(self, uploads: int = 0, requests: int = 0, bytes_up: int = 0,
                      bytes_down: int = 0) -> None:
        if uploads:
            UPLOADS_SENT.inc(uploads)
        if requests:
            PARAM_REQUESTS.inc(requests)
        if bytes_up:
            BYTES.labels("up").inc(bytes_up)
        if bytes_down:
            BYTES.labels("down").inc(bytes_down)

    def outputs(self, out: Outputs) -> None:
        """The communication an :class:`Outputs` counted."""
        self.communication(out.uploads, out.requests, out.bytes_up, out.bytes_down)

    def sent(self, topics: Mapping[str, int], direction: str = "out") -> None:
        """Messages per topic, e.g. ``{"cloud.hints": 943}``."""
        for topic, n in topics.items():
            if n:
                EVENTS.labels(topic, direction).inc(n)

    def emitted(self, events: Iterable[Any]) -> None:
        """Outputs emitted by a processor or a cloud job, counted per topic; thresholds
        set the request gauges."""
        tally: Tally[str] = Tally()
        for event in events:
            topic = topic_of(event)
            if topic is not None:
                tally[topic] += 1
            if isinstance(event, Threshold):
                self.threshold(event)
        self.sent(tally)

    def threshold(self, event: Threshold) -> None:
        THRESHOLD_VALUE.labels(self.method).set(event.threshold)
        THRESHOLD_LEVEL.labels(self.method).set(event.level)
        REQUEST_LOAD.labels(self.method).set(event.load)
        REQUEST_CAPACITY.labels(self.method).set(event.capacity)

    def released(self, model: str, version: int) -> None:
        MODEL_VERSION.labels(model).set(version)

    def cloud_job(self, seconds: float) -> None:
        CLOUD_JOB_SECONDS.observe(seconds)

    def dead_letters(self, reasons: Mapping[str, int]) -> None:
        for reason, n in reasons.items():
            if n:
                DEAD_LETTERS.labels(str(reason)).inc(n)
        self.sent({DEADLETTER: sum(reasons.values())})

    def ranked(self, ranks: np.ndarray, aucs: np.ndarray) -> None:
        """Scored clicks as the evaluator ranked them: their ranks and AUCs."""
        self.quality(len(ranks), float((ranks <= 10).sum()), float(ndcg_at(ranks, 10).sum()),
                     float(aucs.sum()))

    def quality(self, n: int, hr10: float, ndcg10: float, auc: float) -> None:
        """``n`` scored clicks and the sums of their HR@10, NDCG@10 and AUC."""
        if not n:
            return
        SCORED_CLICKS.labels(self.method).inc(n)
        for metric, total in zip(QUALITY, (hr10, ndcg10, auc), strict=True):
            SCORED_QUALITY.labels(self.method, metric).inc(total)

    def service(self, service: Any) -> None:
        """The load of a cloud service answering requests: its door's queue and the
        requests shed since the last call (services without a door have neither)."""
        door = getattr(service, "admission", None)
        if door is not None:
            QUEUE_LENGTH.labels(self.method).set(door.queue)
            QUEUE_BOUND.labels(self.method).set(door.queue_bound)
        shed = int(getattr(service, "shed", 0))
        if shed > self.shed_seen:
            REQUESTS_SHED.inc(shed - self.shed_seen)
            self.shed_seen = shed

    def lag(self, consumer: str, lags: Mapping[tuple[str, int], int]) -> None:
        """Lag per (topic, partition) of a consumer."""
        for (topic, partition), n in lags.items():
            CONSUMER_LAG.labels(consumer, topic, str(partition)).set(max(int(n), 0))

    def forget_lag(self, consumer: str, topics: Iterable[str], partitions: Iterable[int],
                   ) -> None:
        """Partitions this process no longer consumes leave the lag gauge."""
        partitions = list(partitions)
        for topic in topics:
            for p in partitions:
                with contextlib.suppress(KeyError):
                    CONSUMER_LAG.remove(consumer, topic, str(p))


def describe_run(run: str, dataset: str, method: str, runtime: str, role: str) -> None:
    """Name the run this process serves (``dcrec_run_info``); the gauges of an earlier
    run in this process are cleared."""
    for gauge in (CONSUMER_LAG, THRESHOLD_VALUE, THRESHOLD_LEVEL, REQUEST_LOAD,
                  REQUEST_CAPACITY, QUEUE_LENGTH, QUEUE_BOUND, MODEL_VERSION):
        gauge.clear()
    RUN.info({"run": run, "dataset": dataset, "method": method, "runtime": runtime,
              "role": role})


class Throttle:
    """True at most once every ``seconds`` (sampling, not per-event work)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.last = seconds, float("-inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True


class MetricsHandler(BaseHTTPRequestHandler):
    """``/metrics`` in the Prometheus text format; subclasses add routes in
    :meth:`route` (return False where they have none)."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self.reply(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif not self.route(path):
            self.reply(404, b"not found\n", "text/plain; charset=utf-8")

    def route(self, path: str) -> bool:
        return False

    def reply(self, status: int, body: bytes, content_type: str, cache: bool = False,
              ) -> None:
        """Send ``body`` (``cache``: the browser may keep it for an hour)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def bind(handler: type[BaseHTTPRequestHandler], host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server on ``host:port``, or on a free port if that one is taken (0: any
    free port)."""
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as error:
        if port == 0:
            raise
        log.warning("port %d on %s is taken (%s); serving on a free port", port, host, error)
        server = ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    return server


SERVING: list[MetricsServer] = []  # the servers of this process that show /metrics


class MetricsServer:
    """An HTTP server in a daemon thread; stopped by :meth:`close`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str, port: int) -> None:
        self.server = bind(handler, host, port)
        SERVING.append(self)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.2}, daemon=True,
                                       name="dcrec-http")
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        if self in SERVING:
            SERVING.remove(self)
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(host: str, port: int) -> MetricsServer:
    """``/metrics`` of this process on ``host:port`` (see the module docstring)."""
    return MetricsServer(MetricsHandler, host, port)
