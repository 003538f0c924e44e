"""The transport alone: how long a record takes from a kafka-python producer through a
Kafka-protocol broker to an aiokafka consumer, by tenth of the run.

No dcrec processing is involved, so this is the floor under ``dcrec bench --runtime
kafka``'s event-to-state latency. Run against the embedded broker it also reports the
broker's CPU time, which shows how its per-fetch cost grows with the batches it holds
(docs/kafka.md, "The embedded broker")::

    dcrec transport --rate 600 --messages 36000 --linger-ms 5
"""

from __future__ import annotations

import asyncio
import struct
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from dcrec.infra.broker import start_broker

_RECORD = struct.Struct("<qd")  # sequence number, unix send time


def _produce(bootstrap: str, topic: str, rate: float, messages: int, linger_ms: int) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms)
    start = time.perf_counter()
    for i in range(messages):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:  # paced: record i is due i / rate seconds after the start
            time.sleep(wait)
        producer.send(topic, _RECORD.pack(i, time.time()), key=str(i % 1000).encode())
    producer.flush()
    producer.close()


async def _consume(bootstrap: str, topic: str, rate: float, messages: int, linger_ms: int,
                   fetch_max_wait_ms: int) -> np.ndarray:
    from aiokafka import AIOKafkaConsumer

    latency_ms = np.full(messages, np.nan)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id="probe",
                                fetch_max_wait_ms=fetch_max_wait_ms,
                                auto_offset_reset="earliest")
    await consumer.start()
    producer = threading.Thread(target=_produce, daemon=True,
                                args=(bootstrap, topic, rate, messages, linger_ms))
    producer.start()
    received, deadline = 0, time.monotonic() + messages / rate + 120
    try:
        while received < messages and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                now = time.time()
                for record in records:
                    i, sent = _RECORD.unpack(record.value)
                    latency_ms[i] = (now - sent) * 1000
                    received += 1
    finally:
        await consumer.stop()
    producer.join(timeout=10)
    return latency_ms


def transport_latency(rate: float, messages: int, linger_ms: int = 5,
                      fetch_max_wait_ms: int = 20, partitions: int = 4,
                      bootstrap: str | None = None) -> dict:
    """Per tenth of the run, p50/p99 ms from send to the consumer holding the record;
    with the embedded broker (``bootstrap`` None) also its CPU seconds."""
    from kafka.admin import KafkaAdminClient, NewTopic

    with tempfile.TemporaryDirectory() as log_dir:
        broker = start_broker(Path(log_dir)) if bootstrap is None else None
        url = broker.url if broker is not None else str(bootstrap)
        try:
            topic = f"probe-{time.monotonic_ns()}"
            admin = KafkaAdminClient(bootstrap_servers=url)
            admin.create_topics([NewTopic(topic, partitions, 1)])
            admin.close()
            cpu = psutil.Process(broker.pid).cpu_times() if broker is not None else None
            started = time.monotonic()
            latency = asyncio.run(_consume(url, topic, rate, messages, linger_ms,
                                           fetch_max_wait_ms))
            wall = time.monotonic() - started
            broker_cpu = None
            if broker is not None and cpu is not None:
                after = psutil.Process(broker.pid).cpu_times()
                broker_cpu = after.user + after.system - cpu.user - cpu.system
        finally:
            if broker is not None:
                broker.stop()
    tenths = [latency[k * messages // 10:(k + 1) * messages // 10] for k in range(10)]
    return {"rate": rate, "messages": messages, "linger_ms": linger_ms,
            "fetch_max_wait_ms": fetch_max_wait_ms, "partitions": partitions,
            "lost": int(np.isnan(latency).sum()), "wall_seconds": wall,
            "broker_cpu_seconds": broker_cpu,
            "tenths": [{"p50_ms": float(np.nanpercentile(t, 50)),
                        "p99_ms": float(np.nanpercentile(t, 99))} for t in tenths]}
