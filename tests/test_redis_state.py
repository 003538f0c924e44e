"""Device state in a real Redis-protocol server, fed from a real Kafka-protocol broker:
state and position commit together, so a worker that dies mid-stream and restarts ends
exactly where a worker that never died does."""

from __future__ import annotations

import numpy as np
import pytest
from dcrec.state.device_state import StateField, StateRows
from dcrec.state.redis_state import RedisDeviceState
from dcrec.streams.partition_worker import apply_records
from dcrec.streams.processor import DeviceBatch, Outputs
from dcrec.streams.schema import CLICK, Click, Exposure, Reason, encode

redis = pytest.importorskip("redis")
kafka = pytest.importorskip("kafka")


class ClickCounter:
    """Counts each device's clicks and exposures and remembers its last item."""

    state_spec = {  # noqa: RUF012
        "clicks": StateField("int32"), "exposures": StateField("int32"),
        "last": StateField("int32"), "checksum": StateField("float32", (4,)),
    }

    def __call__(self, state: StateRows, batch: DeviceBatch) -> tuple[StateRows, Outputs]:
        rows = {k: v.copy() for k, v in state.items()}
        for k in range(len(batch.events)):
            r = batch.row[k]
            if batch.events.event[k] == CLICK:
                rows["clicks"][r] += 1
            else:
                rows["exposures"][r] += 1
            rows["last"][r] = batch.events.item[k]
            # order-sensitive: a reordered or repeated event changes it
            rows["checksum"][r] = rows["checksum"][r] * 0.5 + batch.events.item[k]
        return rows, Outputs(scores=np.zeros((0, 0), np.float32))


@pytest.fixture(scope="module")
def valkey():
    from dcrec.infra.embedded import start_valkey

    with start_valkey() as service:
        yield redis.Redis.from_url(service.url)


@pytest.fixture(scope="module")
def broker():
    from dcrec.infra.embedded import start_broker

    with start_broker() as service:
        yield f"127.0.0.1:{service.port}"


def test_rows_round_trip_as_packed_bytes(valkey):
    store = RedisDeviceState(valkey, ClickCounter.state_spec, namespace="t-rows")
    rows = {"clicks": np.array([3, 0], np.int32), "exposures": np.array([1, 2], np.int32),
            "last": np.array([7, 9], np.int32),
            "checksum": np.arange(8, dtype=np.float32).reshape(2, 4)}
    store.commit(np.array([5, 11]), rows, {("events", 0): 42})
    got = store.gather(np.array([11, 5, 99]))
    assert got["clicks"].tolist() == [0, 3, 0]
    assert got["checksum"][1].tolist() == [0, 1, 2, 3]
    assert len(valkey.get("t-rows:dev:5")) == store.bytes_per_device == 28
    assert store.committed(("events", 0)) == 42
    assert store.committed(("events", 1)) == 0


def _events(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        device, item = int(rng.integers(20)), int(rng.integers(100))
        event = Click(device, item, 1000 + k) if rng.random() < 0.3 else Exposure(
            device, item, 1000 + k)
        out.append(encode(event))
    out[17] = b'{"t": "click", "device": 1, "item": 2, "ts": -1}'  # invalid: dead letter
    out[33] = b"\xff\x00 not an event"
    return out


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap)
    for value in values:
        producer.send(topic, value=value, partition=0)
    producer.flush()
    producer.close()


def _consume(bootstrap: str, topic: str, start: int, limit: int | None = None):
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=2000,
                                   enable_auto_commit=False)
    tp = kafka.TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, start)
    records = []
    for message in consumer:
        records.append((message.offset, message.value))
        if limit is not None and len(records) >= limit:
            break
    consumer.close()
    return records


def _run(store, records, batch: int):
    dead = []
    for start in range(0, len(records), batch):
        result = apply_records(ClickCounter(), store, ("events", 0),
                               records[start:start + batch])
        dead += result.dead_letters
    return dead


def test_a_killed_worker_restarts_to_the_same_state(valkey, broker):
    topic = "device-events-once"
    values = _events(300)
    _produce(broker, topic, values)
    records = _consume(broker, topic, 0)
    assert len(records) == 300

    never_killed = RedisDeviceState(valkey, ClickCounter.state_spec, namespace="t-clean")
    dead = _run(never_killed, records, batch=25)
    assert sorted(d.reason for d in dead) == sorted([Reason.NEGATIVE_TIMESTAMP,
                                                     Reason.MALFORMED])

    killed = RedisDeviceState(valkey, ClickCounter.state_spec, namespace="t-killed")
    _run(killed, records[:150], batch=25)
    # the worker dies while processing the next poll, before its commit: nothing of that
    # poll is in Redis, neither rows nor position
    before = killed.gather(np.arange(20))
    # restart: resume from the committed position, and also see records redelivered
    # from an earlier offset (as a consumer group may after a crash)
    resume = killed.committed(("events", 0))
    assert resume == 150  # six polls of 25 committed before the crash
    redelivered = _consume(broker, topic, resume - 40)
    result = apply_records(ClickCounter(), killed, ("events", 0), redelivered[:60])
    assert result.skipped == 40
    _run(killed, redelivered[60:], batch=25)

    clean, restarted = never_killed.gather(np.arange(20)), killed.gather(np.arange(20))
    for name in ClickCounter.state_spec:
        assert np.array_equal(clean[name], restarted[name]), name
    assert not all(np.array_equal(before[n], restarted[n]) for n in before)
    assert killed.committed(("events", 0)) == never_killed.committed(("events", 0)) == 300
    total = clean["clicks"].sum() + clean["exposures"].sum()
    assert total == 298  # every valid event once, the two invalid ones as dead letters
