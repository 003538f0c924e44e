"""A real Kafka-protocol broker (Tansu) and Redis-protocol server (valkey-server) on
free loopback ports, started and stopped by the tests that use them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dcrec.infra.broker import start_broker
from dcrec.infra.process import ServiceProcess
from dcrec.infra.redis_server import start_redis


class Services:
    """The broker and Redis of a test session; Redis can be restarted in place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.broker = start_broker(root / "logs")
        self.redis = start_redis(root / "logs", data_dir=root / "redis")
        self.port = int(self.redis.url.rsplit(":", 1)[1].split("/")[0])

    def stop_redis(self) -> None:
        self.redis.stop()

    def start_redis(self) -> ServiceProcess:
        self.redis = start_redis(self.root / "logs", port=self.port, data_dir=self.root / "redis")
        return self.redis

    def close(self) -> None:
        self.redis.stop()
        self.broker.stop()


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    started = Services(tmp_path_factory.mktemp("kafka-services"))
    try:
        yield started
    finally:
        started.close()
