"""``dcrec up`` / ``dcrec down``: the embedded broker and Redis for development."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from typing import Annotated

import typer

from dcrec.cli import app, console

_UP_FILE = "embedded.json"


def _state_path():
    from dcrec.replay.datasets import cache_root

    return cache_root() / _UP_FILE


@app.command()
def up(
    redis_url: Annotated[str | None, typer.Option(
        envvar="DCREC_REDIS_URL", help="use this Redis instead of starting valkey")] = None,
) -> None:
    """Start the embedded Kafka-protocol broker (Tansu) and, unless a Redis URL is
    given, valkey-server, on free loopback ports; print their URLs."""
    from dcrec.infra.embedded import ServiceUnavailableError, start_broker, start_valkey

    path = _state_path()
    if path.exists():
        console.print(f"[red]error:[/red] already up ({path}); run dcrec down first")
        raise typer.Exit(2)
    try:
        services = [start_broker()]
        if redis_url is None:
            services.append(start_valkey())
    except ServiceUnavailableError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    urls = {s.name: s.url for s in services}
    if redis_url is not None:
        urls["redis"] = redis_url
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"urls": urls, "pids": [s.pid for s in services]}))
    for name, url in urls.items():
        print(f"{name}\t{url}")


@app.command()
def down() -> None:
    """Stop what ``dcrec up`` started."""
    path = _state_path()
    if not path.exists():
        console.print("nothing is up")
        return
    for pid in json.loads(path.read_text())["pids"]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    path.unlink()
    console.print("stopped")
