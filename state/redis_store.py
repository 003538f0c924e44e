"""Device state in Redis: one compact binary row per device, written together with the
stream position it reflects.

A device's value is a small runtime header (events applied, clicks seen, stream
position of the last applied event; int64) followed by the processor's row packed by
:func:`~dcrec.state.device_state.pack_row` (float32/float16/int32 bytes, never JSON or
pickle). Every key of a run lives under ``dcrec:{run}:``.
"""

from __future__ import annotations

import numpy as np
import redis
from dcrec.state.device_state import StateRows, StateSpec, pack_row, unpack_rows
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

HEADER = np.dtype([("events", "<i8"), ("clicks", "<i8"), ("last_pos", "<i8")])


def redis_client(url: str, backoff_max: float | None = 2.0) -> redis.Redis:
    """A client of ``url``. With ``backoff_max``, a call made while Redis is unreachable
    is retried with exponential back-off (at most ``backoff_max`` seconds apart, for
    about half an hour) instead of failing; ``None``: it fails at once, for callers that
    back off themselves (the device worker, whose event loop must not block)."""
    if backoff_max is None:
        return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0))
    retry = Retry(ExponentialBackoff(cap=backoff_max, base=0.05), retries=1000)
    return redis.Redis.from_url(url, retry=retry, socket_connect_timeout=2.0)


class RunKeys:
    """The Redis key names of one run: ``keys("state")`` is ``dcrec:{run}:state``."""

    def __init__(self, run: str) -> None:
        self.prefix = f"dcrec:{run}:"

    def __call__(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)


class RedisDeviceStore:
    """Reads device rows; writes go into a caller's MULTI/EXEC pipeline."""

    def __init__(self, client: redis.Redis, run: str, spec: StateSpec) -> None:
        self.client = client
        self.spec = spec
        self.key = RunKeys(run)("state")

    def gather(self, devices: np.ndarray) -> tuple[np.ndarray, StateRows]:
        """(headers ``[n]`` of :data:`HEADER`, processor rows) of ``devices``; a device
        never seen has a zero header and zeroed rows."""
        blobs = self.client.hmget(self.key, [int(d) for d in devices]) if len(devices) else []
        header = np.zeros(len(devices), HEADER)
        header["last_pos"] = -1
        rows: list[bytes | None] = []
        for k, blob in enumerate(blobs):
            if blob is None:
                rows.append(None)
                continue
            header[k] = np.frombuffer(blob, HEADER, count=1)[0]
            rows.append(blob[HEADER.itemsize:])
        return header, unpack_rows(self.spec, rows)

    def write(self, pipe: redis.client.Pipeline, devices: np.ndarray, header: np.ndarray,
              rows: StateRows) -> None:
        """Queue the rows of ``devices`` into ``pipe`` (a MULTI/EXEC pipeline)."""
        if len(devices) == 0:
            return
        mapping = {int(d): header[k:k + 1].tobytes() + pack_row(self.spec, rows, k)
                   for k, d in enumerate(devices.tolist())}
        pipe.hset(self.key, mapping=mapping)

    def headers(self) -> dict[int, np.void]:
        """The runtime header of every stored device."""
        out = {}
        for device, blob in self.client.hscan_iter(self.key, count=1000):
            out[int(device)] = np.frombuffer(blob, HEADER, count=1)[0]
        return out
