"""Starting a local service process: a free loopback port, readiness, stopping by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen | None = None,
                  ) -> None:
    """Block until ``host:port`` accepts connections (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


@dataclass
class ServiceProcess:
    """A service started by dcrec: its name, URL, PID and log file."""

    name: str
    url: str
    pid: int
    log: str
    process: subprocess.Popen | None = None

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
        if not self.alive():
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None:
                try:
                    self.process.wait(timeout=0.05)
                    return
                except subprocess.TimeoutExpired:
                    continue
            if not self.alive():
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()


def start_service(name: str, url: str, port: int, args: list[str], log_dir: Path,
                  log_name: str, timeout: float, env: dict[str, str] | None = None,
                  ) -> ServiceProcess:
    """Start ``args`` detached from the terminal's signals (output to
    ``log_dir/log_name.log``); return once it listens on ``127.0.0.1:port``, or stop it
    and raise."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{log_name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                   start_new_session=True)
    service = ServiceProcess(name, url, process.pid, str(log_path), process)
    try:
        wait_for_port("127.0.0.1", port, timeout, process)
    except BaseException:
        service.stop()
        raise
    return service
