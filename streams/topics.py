"""The topics of DESIGN.md's event flow, and creating them from configuration."""

from __future__ import annotations

from dcrec.config import KafkaRuntimeSettings, TopicSettings

EXPOSURES = "events.exposure"
CLICKS = "events.click"
UPLOADS = "device.uploads"
RELEASES = "cloud.releases"
HINTS = "cloud.hints"
REQUESTS = "param.requests"
RESPONSES = "param.responses"
THRESHOLD = "control.threshold"
DEADLETTER = "events.deadletter"
DEVICE_TOPICS = (EXPOSURES, CLICKS)


def topic_name(name: str, namespace: str = "") -> str:
    """The broker-side name of topic ``name`` in a run's namespace (``""``: none)."""
    return f"{namespace}.{name}" if namespace else name


def topic_configs(settings: TopicSettings) -> dict[str, str]:
    """Kafka topic configuration entries of one topic's settings."""
    return {"retention.ms": str(settings.retention * 1000),
            "cleanup.policy": "compact" if settings.compact else "delete"}


def create_topics(bootstrap: str, settings: KafkaRuntimeSettings, namespace: str = "",
                  ) -> list[str]:
    """Create every topic of the event flow that does not exist yet; the names created."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="dcrec-topics")
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(topic_name(name, namespace), spec.partitions, 1,
                           topic_configs=topic_configs(spec))
                  for name, spec in settings.topics.items()
                  if topic_name(name, namespace) not in existing]
        if wanted:
            admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        admin.close()


def device_partition(device: int, partitions: int) -> int:
    """The partition of a device's events: keyed by device id, ``device mod P`` (every
    device topic has the same partition count, so they are co-partitioned)."""
    return device % partitions
