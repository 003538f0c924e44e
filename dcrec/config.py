"""Every setting of a dcrec run, typed and validated in one place.

Durations accept seconds or a number with a unit (``90s``, ``30m``, ``6h``, ``1d``, ``2w``).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> int:
    """Seconds in a duration such as ``3600``, ``"90s"``, ``"6h"`` or ``"1.5d"``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or e.g. '6h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(value))
        if not match:
            raise ValueError(f"cannot read {value!r} as a duration (e.g. 90s, 30m, 6h, 1d)")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return int(seconds)


Duration = Annotated[int, BeforeValidator(parse_duration)]

COLUMN_ROLES = ("user", "item", "timestamp", "event", "category", "rating")


def parse_columns(value: object) -> dict[str, str]:
    """A column mapping ``role=column`` from ``"user=uid,item=iid"`` or a dict; roles are
    ``user, item, timestamp, event, category, rating``."""
    if isinstance(value, dict):
        pairs = {str(k): str(v) for k, v in value.items()}
    else:
        pairs = {}
        for part in str(value or "").split(","):
            if not part.strip():
                continue
            role, sep, column = part.partition("=")
            if not sep or not column.strip():
                raise ValueError(f"column mapping {part!r} is not role=column")
            pairs[role.strip()] = column.strip()
    unknown = sorted(set(pairs) - set(COLUMN_ROLES))
    if unknown:
        raise ValueError(f"unknown column role(s) {unknown}; known: {', '.join(COLUMN_ROLES)}")
    return pairs


ColumnMapping = Annotated[dict[str, str], BeforeValidator(parse_columns)]


def bind_host(value: object) -> str:
    """An address or host name a dcrec server binds to. The defaults are loopback
    (DESIGN.md: network services bind to loopback unless configured otherwise).

    >>> bind_host("127.0.0.1"), bind_host("localhost")
    ('127.0.0.1', 'localhost')
    """
    import ipaddress

    host = str(value).strip()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", host):
        raise ValueError(f"{value!r} is not an IP address or host name")
    return host


BindHost = Annotated[str, BeforeValidator(bind_host)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """Model sizes and cloud-training settings. ``None`` takes each model's default:
    RecBole's for gru4rec/sasrec (embedding 64, lr 1e-3), MC²-SF §5.1.4 for din
    (embedding 32, Adam lr 5e-4, L2 1e-4)."""

    embedding_dim: int | None = Field(None, ge=2, le=1024)
    max_len: int = Field(50, ge=1, le=1000)
    lr: float | None = Field(None, gt=0, le=1)
    l2: float | None = Field(None, ge=0)
    batch_size: int = Field(256, ge=1)
    epochs_per_job: int = Field(2, ge=1, le=100)
    train_negatives: int = Field(4, ge=1)
    replay_ratio: int | None = Field(
        None, ge=0, le=100, description="past samples a cloud job rehearses per new one "
        "(experience replay); None: the preset's (4 for EC-CDR, 0 otherwise)")
    replay_capacity: int = Field(50_000, ge=1, description="most recent samples kept "
                                 "for rehearsal")


class WorldSettings(_Strict):
    """Size of the synthetic world when ``dataset == "world"`` (see docs/world.md)."""

    users: int = Field(2000, ge=10)
    items: int = Field(1000, ge=10)
    events: int = Field(200_000, ge=100)
    clusters: int = Field(20, ge=2)


class ReplayConfig(_Strict):
    """One replay: which log, which method, how the stream is cut and evaluated."""

    dataset: str = "ml-100k"
    columns: ColumnMapping = Field(default_factory=dict,
                                   description="role=column for CSV/Parquet/JSON logs")
    kcore: int = Field(0, ge=0, description="keep users and items with this many clicks")
    method: str = "gru4rec"
    runtime: Literal["local", "kafka"] = "local"
    seed: int = Field(0, ge=0)
    max_events: int | None = Field(None, ge=1)
    start: int | None = None
    end: int | None = None
    cloud_interval: Duration = 86400
    upload_interval: Duration = 3600
    request_budget: float = Field(0.1, ge=0, le=1)
    request_capacity: float | None = Field(
        None, gt=0, description="requests per stream second the cloud can answer")
    request_queue: int = Field(100, ge=1, description="requests the cloud may hold waiting")
    measured_capacity: bool = Field(
        False, description="the threshold and the door also keep requests within what the "
        "service's measured time per answer can serve at the run's speed (wall-clock "
        "dependent)")
    warmup: int = Field(5, ge=0, description="clicks of a user before their clicks are scored")
    n_negatives: int = Field(100, ge=1)
    micro_batch: int = Field(4096, ge=1)
    slate_size: int = Field(5, ge=1, le=100,
                            description="logging-policy slate for logs without exposures")
    activity_groups: int = Field(20, ge=1)
    model: ModelConfig = ModelConfig()
    world: WorldSettings = WorldSettings()

    @model_validator(mode="after")
    def _consistent(self) -> ReplayConfig:
        if self.columns and self.dataset in ("ml-100k", "world"):
            raise ValueError(f"columns map a CSV/Parquet/JSON log's columns; {self.dataset} "
                             "has its own")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError(f"the window's start ({self.start}) must come before its end "
                             f"({self.end})")
        return self


# --- the kafka runtime: broker, Redis, topics, workers ----------------------------------


class TopicSettings(_Strict):
    """One topic of DESIGN.md's event flow: partitions, retention and compaction."""

    partitions: int = Field(4, ge=1, le=1024)
    retention: Duration = 7 * 86400
    compact: bool = False


def _default_topics() -> dict[str, TopicSettings]:
    keyed = TopicSettings(partitions=4)
    single = TopicSettings(partitions=1)
    return {
        "events.exposure": keyed,
        "events.click": keyed,
        "device.uploads": keyed,
        # the latest version per model is what matters: compact, keep forever-ish
        "cloud.releases": TopicSettings(partitions=1, retention=30 * 86400, compact=True),
        "cloud.hints": keyed,
        "param.requests": keyed,
        "param.responses": keyed,
        "control.threshold": TopicSettings(partitions=1, compact=True),
        "events.deadletter": single,
    }


class FaustSettings(_Strict):
    """Settings of the faust-streaming device workers.

    DESIGN.md records why the first two are what they are: the embedded broker (Tansu
    0.6) makes a group join wait the full rebalance timeout, so it is low (3 s: the first
    join takes seconds, not minutes); aiokafka leaves a group whose fetcher sits idle
    for ``max_poll_interval``, so it is high (1000 s). With both low the worker hit
    ``UnknownMemberIdError`` on commit; with both at defaults the first join hung.
    """

    broker_rebalance_timeout: float = Field(3.0, gt=0)
    broker_max_poll_interval: float = Field(1000.0, gt=0)
    broker_session_timeout: float = Field(10.0, gt=0)
    broker_heartbeat_interval: float = Field(1.0, gt=0)
    # offsets reach Kafka only after the state they cover is in Redis (manual acks), so
    # committing often only shortens what a restarted worker has to skip
    broker_commit_interval: float = Field(1.0, gt=0)
    # how long the broker may hold a fetch with no new records; faust fixes 1500 ms, and
    # the embedded broker holds a fetch for a share of the wait even when records are
    # there (aiokafka on Tansu 0.6, 3,000 msg/s: p50/p99 produce-to-consume 131/259 ms
    # at 500 ms, 30/57 at 100 ms, 11/18 at 20 ms)
    fetch_max_wait: float = Field(0.02, gt=0, le=10)


class KafkaRuntimeSettings(_Strict):
    """Where the broker and Redis are, and how the topics and workers are set up.

    An empty ``broker``/``redis`` means: the services ``dcrec up`` started (their URLs
    are recorded in ``services_file``), or, failing that, embedded ones started for the
    run and stopped after it.
    """

    broker: str = ""
    redis: str = ""
    services_file: str = ""  # "": services.json in the cache folder
    topics: dict[str, TopicSettings] = Field(default_factory=_default_topics)
    faust: FaustSettings = FaustSettings()
    workers: int = Field(1, ge=1, le=64)
    # live runs: X times real (event) time, or 0 for as fast as the producer can
    speed: float = Field(0.0, ge=0)
    # live runs: a watermark closes a slice at least this often (seconds of wall time)
    watermark_tick: float = Field(0.02, gt=0, le=10)
    # Redis unreachable: retry with exponential back-off up to this many seconds apart
    redis_backoff_max: float = Field(2.0, gt=0)
    # CoCorrRec: how long a device waits for the cloud's correction before serving its
    # own vector — live runs: the device's tolerance (the paper's Table 5 allows 4.21
    # ms on a phone; this is for a loopback broker); event-time replays wait for every
    # answer (the cloud may be training), so their results equal the local runtime's
    correction_timeout: float = Field(0.25, gt=0)
    aligned_wait: float = Field(120.0, gt=0)
    # every process of a run serves /metrics (Prometheus) on this host: the replay
    # process at ``metrics_port`` (unless its dashboard serves it), the cloud process at
    # ``metrics_port + 1``, device worker i at ``metrics_port + 2 + i``; a port in use
    # falls back to a free one, 0 takes free ports. Each process records its address in
    # the run's Redis keys (``dcrec:{run}:metrics``), where the dashboard finds it.
    metrics_host: BindHost = "127.0.0.1"
    metrics_port: int = Field(9460, ge=0, le=65535 - 66)

    def role_metrics_port(self, role: str, index: int = 0) -> int:
        """The /metrics port of ``role`` (replay, cloud, worker ``index``)."""
        if self.metrics_port == 0:
            return 0
        offsets = {"replay": 0, "cloud": 1, "worker": 2 + index}
        return self.metrics_port + offsets[role]


class DashboardSettings(_Strict):
    """The live dashboard (``dcrec dashboard``, ``dcrec replay --dashboard``): where it
    is served, how often it samples the metrics, where it records what it sampled."""

    host: BindHost = "127.0.0.1"
    # the page, its JSON (/api/timeline) and this process's /metrics; 0: a free port
    port: int = Field(9460, ge=0, le=65535)
    # seconds between two samples of the metrics (the charts' resolution)
    interval: float = Field(0.5, ge=0.05, le=60)
    # rolling quality and request rate: over at least this many recent clicks
    window_clicks: int = Field(2000, ge=1)
    # samples kept for the page (older ones stay in the recording)
    max_points: int = Field(7200, ge=10)
    # recordings of the sampled timeline, one JSON-lines file per run
    record_dir: str = "runs/live"
