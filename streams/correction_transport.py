"""CoCorrRec's corrections over Kafka: the device worker's
:data:`~dcrec.streams.processor.Responder` and the cloud's correction server.

A worker sends a wave of correction requests to ``param.requests`` (keyed and
partitioned by device) and waits, up to a timeout, for the answers on
``param.responses``; the answer to a request is the response with its device, click
position and model version. The cloud process runs a :class:`CorrectionServer` thread
beside its jobs: it reads ``param.requests``, answers with the GCN of the version each
device serves (:class:`~dcrec.streams.cocorrrec_pipeline.CorrectionService`) and writes
``param.responses``. Requests that are not valid events become dead letters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from dcrec.streams.cocorrrec_pipeline import CorrectionService
from dcrec.streams.schema import (
    ParamRequest,
    ParamResponse,
    Reason,
    Rejected,
    dead_letter,
    decode,
    encode,
)
from dcrec.streams.topics import DEADLETTER, REQUESTS, RESPONSES, device_partition, topic_name

log = logging.getLogger(__name__)

Send = Callable[[str, bytes, bytes | None, int | None, list], None]


class KafkaResponder:
    """The worker's way to the cloud's correction server (a blocking round trip per
    wave of requests). Keeps each answered request's round-trip time (ms) and counts
    requests that got no answer within ``timeout`` seconds."""

    def __init__(self, bootstrap: str, namespace: str, partitions: int, send: Send,
                 flush: Callable[[], None], timeout: float) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topic = topic_name(REQUESTS, namespace)
        self.partitions, self.send, self.flush, self.timeout = partitions, send, flush, timeout
        # fetches return at once when records are there; Tansu otherwise holds a fetch
        # for the whole wait, so a short wait keeps the round trip short
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                      enable_auto_commit=False, fetch_max_wait_ms=10,
                                      client_id="dcrec-corrections")
        tps = [TopicPartition(topic_name(RESPONSES, namespace), p) for p in range(partitions)]
        self.consumer.assign(tps)
        self.consumer.seek_to_end()
        for tp in tps:  # resolve the end now: an answer must not land before our position
            self.consumer.position(tp)
        self.round_trips_ms: list[float] = []
        self.timeouts = 0
        self.bytes_up = self.bytes_down = 0  # payloads: hidden states up, rows down

    def __call__(self, requests: list[ParamRequest]) -> list[ParamResponse | None]:
        sent = time.perf_counter()
        waiting = {(r.device, r.position, r.version): k for k, r in enumerate(requests)}
        for r in requests:
            self.send(self.topic, encode(r), str(r.device).encode(),
                      device_partition(r.device, self.partitions), [])
            self.bytes_up += len(r.payload)
        self.flush()
        answers: list[ParamResponse | None] = [None] * len(requests)
        deadline = sent + self.timeout
        while waiting and time.perf_counter() < deadline:
            for records in self.consumer.poll(timeout_ms=20, max_records=10000).values():
                for record in records:
                    event = decode(record.value)
                    if not isinstance(event, ParamResponse):
                        continue
                    k = waiting.pop((event.device, event.position, event.version), None)
                    if k is not None:
                        answers[k] = event
                        self.bytes_down += len(event.payload)
                        self.round_trips_ms.append((time.perf_counter() - sent) * 1000.0)
        self.timeouts += len(waiting)
        return answers

    def take_stats(self) -> tuple[np.ndarray, dict[str, int]]:
        """Since the last call: the answered requests' round trips (ms), and counters
        (requests unanswered in time, payload bytes up and down)."""
        taken, self.round_trips_ms = self.round_trips_ms, []
        counters = {"correction_timeouts": self.timeouts, "correction_bytes_up": self.bytes_up,
                    "correction_bytes_down": self.bytes_down}
        self.timeouts = self.bytes_up = self.bytes_down = 0
        return np.asarray(taken, np.float64), counters

    def close(self) -> None:
        self.consumer.close()


class CorrectionServer(threading.Thread):
    """Answers ``param.requests`` until stopped (a daemon thread of the cloud process)."""

    def __init__(self, service: CorrectionService, bootstrap: str, namespace: str,
                 partitions: int) -> None:
        super().__init__(name="dcrec-corrections", daemon=True)
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        self.service = service
        self.namespace, self.partitions = namespace, partitions
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                      enable_auto_commit=False, fetch_max_wait_ms=10,
                                      client_id="dcrec-correction-server")
        self.consumer.assign([TopicPartition(topic_name(REQUESTS, namespace), p)
                              for p in range(partitions)])
        self.consumer.seek_to_beginning()
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        self.stopping = threading.Event()
        self.stats: dict[str, float] = {"corrections": 0, "correction_rejected": 0}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                batch = self.consumer.poll(timeout_ms=20, max_records=10000)
                requests = [event for records in batch.values() for record in records
                            if (event := self._request(record.value)) is not None]
                if requests:
                    self._answer(requests)
        except BaseException as error:  # reported by the cloud process, never silent
            self.error = error
            log.exception("correction server failed")
        finally:
            self.producer.flush()
            self.consumer.close()
            self.producer.close()

    def _request(self, raw: bytes) -> ParamRequest | None:
        event = decode(raw, source=REQUESTS)
        if isinstance(event, ParamRequest):
            return event
        rejected = event if isinstance(event, Rejected) else Rejected(
            Reason.UNKNOWN_EVENT, f"{type(event).__name__} on {REQUESTS}", raw[:256], REQUESTS)
        self._dead_letter(rejected)
        return None

    def _dead_letter(self, rejected: Rejected) -> None:
        self.stats["correction_rejected"] += 1
        self.producer.send(topic_name(DEADLETTER, self.namespace),
                           encode(dead_letter(rejected, int(time.time()))))

    def _answer(self, requests: list[ParamRequest]) -> None:
        answers = self.service.respond(requests)
        topic = topic_name(RESPONSES, self.namespace)
        for request, answer in zip(requests, answers, strict=True):
            if answer is None:
                self._dead_letter(Rejected(
                    Reason.BAD_PAYLOAD, f"correction request of device {request.device} "
                    f"(kind {request.kind!r}, {len(request.payload)} B, model version "
                    f"{request.version}) cannot be answered", encode(request)[:256], REQUESTS))
                continue
            self.producer.send(topic, encode(answer), key=str(answer.device).encode(),
                               partition=device_partition(answer.device, self.partitions))
            self.stats["corrections"] += 1
        self.producer.flush()

    def summary(self) -> dict[str, Any]:
        """Counters for the run's cloud stats: corrections answered, rejected, and the
        seconds the GCN took to generate them."""
        door = self.service.summary()   # admission at the door, where a service has it
        return {**self.stats, "correction_seconds": self.service.seconds,
                **{f"service_{k}": door[k] for k in ("shed", "max_queue", "queue_bound")
                   if k in door}}

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
