"""``dcrec up`` / ``dcrec down``: the embedded broker and Redis, their URLs and PIDs
recorded in a services file, and resolving which broker and Redis a run uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dcrec.infra.broker import start_broker
from dcrec.infra.process import ServiceProcess
from dcrec.infra.redis_server import start_redis

from dcrec.config import KafkaRuntimeSettings


class AlreadyUpError(RuntimeError):
    """``dcrec up`` found services it started earlier still running."""


def services_path(configured: str = "") -> Path:
    """Where ``dcrec up`` records its services: ``configured``, else ``services.json``
    in dcrec's cache folder (``$DCREC_DATA`` or ``~/.cache/dcrec``), so every
    command finds them wherever it runs."""
    if configured:
        return Path(configured)
    from dcrec.replay.datasets import cache_root

    return cache_root() / "services.json"


def up(services_file: Path, redis_url: str = "") -> dict[str, ServiceProcess]:
    """Start the broker and (unless ``redis_url`` is given) valkey-server; record them."""
    running = [n for n, s in recorded(services_file).items() if s.pid]
    if running:
        raise AlreadyUpError(f"{', '.join(running)} already up ({services_file}); "
                             "run `dcrec down` first")
    log_dir = services_file.parent / "services"
    started = {"broker": start_broker(log_dir)}
    if not redis_url:
        started["redis"] = start_redis(log_dir, data_dir=log_dir)
    record = {name: {"url": s.url, "pid": s.pid, "log": s.log} for name, s in started.items()}
    if redis_url:
        record["redis"] = {"url": redis_url, "pid": None, "log": ""}
    services_file.parent.mkdir(parents=True, exist_ok=True)
    services_file.write_text(json.dumps(record, indent=2))
    return started


def recorded(services_file: Path) -> dict[str, ServiceProcess]:
    """The services a ``dcrec up`` recorded that are still running."""
    if not services_file.exists():
        return {}
    out = {}
    for name, entry in json.loads(services_file.read_text()).items():
        service = ServiceProcess(name, entry["url"], entry["pid"] or 0, entry["log"])
        if entry["pid"] is None or service.alive():
            out[name] = service
    return out


def down(services_file: Path) -> list[str]:
    """Stop what ``dcrec up`` started; the names stopped."""
    stopped = []
    for name, service in recorded(services_file).items():
        if service.pid:
            service.stop()
            stopped.append(name)
    services_file.unlink(missing_ok=True)
    return stopped


@dataclass
class Endpoints:
    """The broker and Redis a run talks to, and what it started itself."""

    broker: str
    redis: str
    owned: list[ServiceProcess] = field(default_factory=list)


@contextmanager
def endpoints(settings: KafkaRuntimeSettings, log_dir: Path) -> Iterator[Endpoints]:
    """Configured URLs first, then those of ``dcrec up``, else embedded services
    started for the run and stopped after it."""
    running = recorded(services_path(settings.services_file))
    broker = settings.broker or (running["broker"].url if "broker" in running else "")
    redis_url = settings.redis or (running["redis"].url if "redis" in running else "")
    owned = []
    try:
        if not broker:
            owned.append(start_broker(log_dir))
            broker = owned[-1].url
        if not redis_url:
            owned.append(start_redis(log_dir, data_dir=log_dir))
            redis_url = owned[-1].url
        yield Endpoints(broker, redis_url, owned)
    finally:
        for service in owned:
            service.stop()
