"""Device workers as faust-streaming agents keyed by device id.

One agent reads the co-partitioned device topics (faust assigns partition ``p`` of
both to the same worker) with manual acknowledgements: a message is acknowledged only
once the Redis transaction that reflects it has committed, so the offsets faust
commits to Kafka never run ahead of the state. Scale out by starting more workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import faust
from aiokafka.errors import KafkaError
from dcrec.streams.device_worker import DeviceWorker, Entry, Offered
from dcrec.streams.topics import DEVICE_TOPICS, topic_name
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from dcrec.config import FaustSettings

log = logging.getLogger(__name__)


def _transport(fetch_max_wait_ms: int) -> type[faust_aiokafka.Transport]:
    """faust's aiokafka transport with the consumer's fetch wait set: faust fixes it at
    1500 ms, and the embedded broker holds a fetch for a share of that wait even when
    records are there, which is most of the event-to-state latency."""

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport):  # type: ignore[no-untyped-def]
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read when it starts
            return consumer

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport


class DeviceWorkerApp(faust.App):
    """A faust app whose consumer uses ``fetch_max_wait_ms``."""

    fetch_max_wait_ms = 1500

    def _new_transport(self) -> faust_aiokafka.Transport:
        return _transport(self.fetch_max_wait_ms)(self.conf.broker_consumer, self)


def faust_app(app_id: str, bootstrap: str, settings: FaustSettings) -> faust.App:
    """A faust app with the settings that hold group membership on the embedded broker
    (see :class:`~dcrec.config.FaustSettings` for why each has its value)."""
    app = DeviceWorkerApp(
        app_id,
        broker=f"kafka://{bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        broker_rebalance_timeout=settings.broker_rebalance_timeout,
        broker_max_poll_interval=settings.broker_max_poll_interval,
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        broker_commit_interval=settings.broker_commit_interval,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        # at shutdown, messages of an unfinished slice stay unacknowledged on purpose:
        # their state is not committed, so the next owner reads them again
        stream_wait_empty=False,
    )
    app.fetch_max_wait_ms = int(settings.fetch_max_wait * 1000)
    return app


def highwater(app: faust.App, topic: str, partition: int) -> int | None:
    """The broker's end offset of a partition as the consumer last fetched it (None
    before the first fetch)."""
    try:
        return app.consumer.highwater(TP(topic, partition))
    except Exception:  # no consumer or no fetch yet: lag unknown, not an error
        return None


STALL_SECONDS = 60.0        # a worker owning partitions with no slice done for this long
STALL_CHECK_SECONDS = 15.0  # logs what it waits for and its consumer's state, this often
RESYNC_CHECK_SECONDS = 5.0  # how often a waiting worker checks for a lost tail


def consumer_state(app: faust.App) -> str:
    """The consumer's view of its partitions, for a stall report: assigned, paused and
    buffer-full partitions (faust) and fetch positions (aiokafka). Reads private
    attributes: a report, never a decision."""
    def tps(items) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
        return sorted((tp.topic.rsplit(".", 1)[-1], tp.partition) for tp in items)

    consumer = app.consumer
    try:
        fetch = consumer._thread._ensure_consumer()._subscription.subscription.assignment
        positions = {(tp.topic.rsplit(".", 1)[-1], tp.partition):
                     (state.position if state.has_valid_position else None, state.paused,
                      highwater(app, tp.topic, tp.partition))
                     for tp, state in fetch._tp_state.items()}
    except Exception as error:  # a driver without these attributes: say so
        positions = {"unavailable": repr(error)}
    return (f"generation {app.consumer_generation_id}, assigned {tps(consumer.assignment())}, "
            f"paused {tps(consumer._paused_partitions)}, "
            f"buffer-full {tps(consumer._buffered_partitions)}, "
            f"flow {'on' if consumer.flow_active else 'off'}, "
            f"fetch (position, paused, end) {positions}")


def attach_device_agent(app: faust.App, namespace: str, partitions: int,
                        make_worker: Callable[[], DeviceWorker],
                        on_finished: Callable[[DeviceWorker], bool] | None = None) -> None:
    """Register the device agent on ``app``; the :class:`DeviceWorker` is built when the
    app starts (in the worker's event loop)."""
    names = [topic_name(t, namespace) for t in DEVICE_TOPICS]
    topic = app.topic(*names, value_serializer="raw", key_serializer="raw",
                      partitions=partitions)
    holder: dict[str, DeviceWorker] = {}

    def worker() -> DeviceWorker:
        if "worker" not in holder:
            holder["worker"] = make_worker()
        return holder["worker"]

    @app.on_partitions_revoked.connect
    async def _revoked(sender, revoked, **_) -> None:
        worker().revoke({tp.partition for tp in revoked if tp.topic in names})

    @app.on_partitions_assigned.connect
    async def _assigned(sender, assigned, **_) -> None:
        await worker().assign({tp.partition for tp in assigned if tp.topic in names})

    async def seek_back(seeks: dict[tuple[str, int], int]) -> None:
        """Make the consumer read again from each (topic, partition)'s offset (faust's
        own read offset too: it drops anything below it), or from the log's start where
        retention removed the offset."""
        consumer = app.consumer
        targets = {TP(t, p): offset for (t, p), offset in seeks.items()
                   if TP(t, p) in consumer.assignment()}
        if not targets:
            return
        try:
            starts = await consumer.earliest_offsets(*targets)
            for tp, start in starts.items():
                if start > targets[tp]:  # the broker's TopicPartition equals faust's TP
                    worker().skip_to(tp.topic, tp.partition, start)
                    targets[tp] = start
            await consumer.seek_wait(targets)
        except (TimeoutError, KafkaError) as error:  # a rebalance meanwhile, or the broker
            log.warning("seek back to %s failed (%r); the resync check retries", targets,
                        error)

    @app.timer(RESYNC_CHECK_SECONDS)
    async def _resync() -> None:
        core = holder.get("worker")
        if core is not None:
            await seek_back(core.resync(lambda t, p: highwater(app, t, p)))

    @app.timer(STALL_CHECK_SECONDS)
    async def _report_stall() -> None:
        core = holder.get("worker")
        if core is None or time.monotonic() - core.advanced_at < STALL_SECONDS:
            return
        waiting = core.waiting_on()
        if waiting is not None and any(waiting[1].values()):
            # the next offset the worker must see, beside the consumer's fetch position:
            # position past it means messages lost on the way (read again by _resync)
            expected = {(t.rsplit(".", 1)[-1], p): core.expected_offset(t, p)
                        for t in names for p in waiting[1]}
            log.warning("no slice committed for %.0f s: waiting for slice %d of %s; "
                        "next offsets to see %s; %s", time.monotonic() - core.advanced_at,
                        waiting[0], waiting[1], expected, consumer_state(app))

    @app.agent(topic, concurrency=1, name="devices")
    async def devices(stream) -> None:
        manual = stream.noack()
        async for event in manual.events():
            message = event.message
            core = worker()
            entry = Entry(message.offset, message.value, message.headers,
                          int(message.timestamp * 1000) if message.timestamp else 0, event)
            offered = core.offer(message.topic, message.partition, entry)
            if offered is Offered.DONE:
                await manual.ack(event)
            if offered is Offered.GAP:  # messages before it were lost on the way
                await seek_back({(message.topic, message.partition): core.expected_offset(
                    message.topic, message.partition)})
            if offered is not Offered.KEPT:
                continue
            if entry.marker is None:
                continue
            for handle in await core.drain():
                await manual.ack(handle)
            if core.meter is not None:  # after each slice: a few gauges, no I/O
                core.meter.lag("worker", core.lag(lambda t, p: highwater(app, t, p)))
            if on_finished is not None and on_finished(core):
                log.info("stream finished")
