"""Operations verbs of the kafka runtime on the ``dcrec`` app: ``up``, ``down``,
``topics create``, ``worker``, ``cloud``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from dcrec.cli import app, console
from dcrec.config import KafkaRuntimeSettings

topics_app = typer.Typer(help="Kafka topics of the event flow.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")

ServicesFile = Annotated[Path | None, typer.Option(
    help="where `dcrec up` records URLs and PIDs (default: services.json in the cache)")]
RunOption = Annotated[str, typer.Option(help="the run id (a replay prints it)")]
RedisOption = Annotated[str, typer.Option("--redis", envvar="DCREC_REDIS", help=(
    "Redis URL of the run (default: `dcrec up`'s, else redis://127.0.0.1:6379/0)"))]
MetricsPortOption = Annotated[int | None, typer.Option(
    min=0, max=65535, help="serve /metrics at this port on the run's metrics host "
    "(loopback by default; 0: a free port; default: the role's port, 9461 for the cloud, "
    "9462 for a worker; a port in use: a free one)")]


@app.command()
def up(services_file: ServicesFile = None,
       redis_url: Annotated[str, typer.Option(
           "--redis", envvar="DCREC_REDIS", help="use this Redis instead of starting one")] = "",
       ) -> None:
    """Start the embedded Kafka broker (Tansu) and, with no Redis URL, valkey-server."""
    from dcrec.infra.services import services_path
    from dcrec.infra.services import up as start

    services_file = services_file or services_path()
    try:
        started = start(services_file, redis_url)
    except (RuntimeError, TimeoutError) as error:  # AlreadyUpError, or a start failed
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    print(f"broker  {started['broker'].url}  (pid {started['broker'].pid})")
    if "redis" in started:
        print(f"redis   {started['redis'].url}  (pid {started['redis'].pid})")
    else:
        print(f"redis   {redis_url}  (configured)")
    console.print(f"recorded in {services_file}; `dcrec down` stops them")


@app.command()
def down(services_file: ServicesFile = None) -> None:
    """Stop what `dcrec up` started."""
    from dcrec.infra.services import down as stop
    from dcrec.infra.services import services_path

    stopped = stop(services_file or services_path())
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@topics_app.command("create")
def topics_create(
    broker: Annotated[str, typer.Option(envvar="DCREC_BROKER",
                                        help="bootstrap server (default: dcrec up's)")] = "",
    namespace: Annotated[str, typer.Option(help="prefix of the topic names")] = "",
    services_file: ServicesFile = None,
) -> None:
    """Create the topics of DESIGN.md with the partitions, retention and compaction of
    the configuration."""
    from dcrec.infra.services import recorded, services_path
    from dcrec.streams.topics import create_topics, topic_configs, topic_name

    settings = KafkaRuntimeSettings()
    running = recorded(services_file or services_path())
    broker = broker or (running["broker"].url if "broker" in running else "")
    if not broker:
        console.print("[red]error:[/red] no broker: pass --broker or run `dcrec up`")
        raise typer.Exit(2)
    created = set(create_topics(broker, settings, namespace))
    for name, spec in settings.topics.items():
        full = topic_name(name, namespace)
        state = "created" if full in created else "exists"
        print(f"{full:28s} partitions={spec.partitions:<3d} "
              f"{' '.join(f'{k}={v}' for k, v in topic_configs(spec).items())}  {state}")


def run_redis_url(redis_url: str) -> str:
    """The Redis of a run: the given URL, else `dcrec up`'s, else the local default."""
    from dcrec.infra.services import recorded, services_path

    if redis_url:
        return redis_url
    running = recorded(services_path())
    return running["redis"].url if "redis" in running else "redis://127.0.0.1:6379/0"


@app.command()
def transport(
    rate: Annotated[float, typer.Option(min=0.1, help="records per second")] = 600.0,
    messages: Annotated[int, typer.Option(min=10, help="records to send")] = 36_000,
    linger_ms: Annotated[int, typer.Option(min=0, help="the producer's linger")] = 5,
    fetch_max_wait_ms: Annotated[int, typer.Option(
        min=0, help="the consumer's fetch wait")] = 20,
    partitions: Annotated[int, typer.Option(min=1, help="partitions of the probe topic")] = 4,
    broker: Annotated[str | None, typer.Option(
        help="an existing broker (default: an embedded one, started and stopped)")] = None,
) -> None:
    """The transport alone: send-to-consumer latency per tenth of the run, no dcrec
    processing (the floor under `dcrec bench --runtime kafka`), and the embedded
    broker's CPU time."""
    from dcrec.infra.broker_probe import transport_latency

    result = transport_latency(rate, messages, linger_ms, fetch_max_wait_ms, partitions,
                               broker)
    cpu = result["broker_cpu_seconds"]
    typer.echo(f"{messages:,} records at {rate:,.0f}/s, linger {linger_ms} ms, fetch wait "
               f"{fetch_max_wait_ms} ms: {result['wall_seconds']:.1f} s"
               + (f", broker CPU {cpu:.1f} s" if cpu is not None else "")
               + f", lost {result['lost']}")
    for k, tenth in enumerate(result["tenths"]):
        typer.echo(f"  tenth {k + 1:>2}: p50 {tenth['p50_ms']:7.1f} ms   "
                   f"p99 {tenth['p99_ms']:7.1f} ms")


@app.command()
def worker(run: RunOption, redis_url: RedisOption = "",
           metrics_port: MetricsPortOption = None) -> None:
    """A device worker (faust agent keyed by device id) of a kafka run; start more to
    scale out."""
    from dcrec.replay.kafka_replay import run_worker

    _run_role(run_worker, run, run_redis_url(redis_url), metrics_port)


@app.command()
def cloud(run: RunOption, redis_url: RedisOption = "",
          metrics_port: MetricsPortOption = None) -> None:
    """The cloud jobs of a kafka run, as their own process."""
    from dcrec.replay.kafka_replay import run_cloud

    _run_role(run_cloud, run, run_redis_url(redis_url), metrics_port)


def _run_role(role: Callable[[str, str, int | None], None], run: str, redis_url: str,
              metrics_port: int | None) -> None:
    """Run a kafka run's role; an unknown run or an unreachable Redis is a clear error."""
    import redis

    try:
        role(run, redis_url, metrics_port)
    except ValueError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    except redis.ConnectionError as error:
        console.print(f"[red]error:[/red] cannot reach Redis at {redis_url}: {error}")
        raise typer.Exit(2) from None
