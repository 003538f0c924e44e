"""Device state in Redis, committed together with the stream position that produced it.

Each device's row is one Redis string of packed bytes (the :class:`StateSpec` layout:
float32/int32/float16 bytes, never JSON or pickle) under ``{namespace}:dev:{device}``.
The next offset to read of every input partition lives in the hash
``{namespace}:offsets``. :meth:`RedisDeviceState.commit` writes the new rows *and* the
offsets in one MULTI/EXEC transaction, so a worker killed at any moment restarts from a
position that matches its state exactly: events before the committed offset are already
in the state and are skipped (:meth:`RedisDeviceState.unapplied`), events after it are
not and are applied once.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import redis
from dcrec.state.device_state import StateRows, StateSpec, pack_row, spec_nbytes, unpack_rows

Partition = tuple[str, int]  # (topic, partition)


def _field(partition: Partition) -> str:
    return f"{partition[0]}/{partition[1]}"


class RedisDeviceState:
    """Gather and commit device rows in Redis (or any Redis-protocol server)."""

    def __init__(self, client: redis.Redis, spec: StateSpec, namespace: str = "dcrec") -> None:
        self.client = client
        self.spec = spec
        self.namespace = namespace
        self.offsets_key = f"{namespace}:offsets"

    @property
    def bytes_per_device(self) -> int:
        return spec_nbytes(self.spec)

    def key(self, device: int) -> str:
        return f"{self.namespace}:dev:{device}"

    def gather(self, devices: np.ndarray) -> StateRows:
        """The rows of ``devices``; a device never seen is a zeroed row."""
        if len(devices) == 0:
            return unpack_rows(self.spec, [])
        blobs = self.client.mget([self.key(int(d)) for d in devices])
        return unpack_rows(self.spec, blobs)

    def committed(self, partition: Partition) -> int:
        """The next offset to read of ``partition`` (0 when nothing was committed)."""
        value = self.client.hget(self.offsets_key, _field(partition))
        return int(value) if value is not None else 0

    def unapplied(self, partition: Partition, offsets: np.ndarray) -> np.ndarray:
        """Mask of the ``offsets`` of ``partition`` not yet in the state."""
        return np.asarray(offsets) >= self.committed(partition)

    def commit(self, devices: np.ndarray, rows: StateRows,
               next_offsets: Mapping[Partition, int]) -> None:
        """Write the devices' rows and the partitions' next offsets atomically."""
        pipe = self.client.pipeline(transaction=True)
        if len(devices):
            pipe.mset({self.key(int(d)): pack_row(self.spec, rows, k)
                       for k, d in enumerate(devices)})
        if next_offsets:
            pipe.hset(self.offsets_key,
                      mapping={_field(p): int(o) for p, o in next_offsets.items()})
        pipe.execute()

    def clear(self) -> None:
        """Delete this namespace's rows and offsets."""
        keys = list(self.client.scan_iter(f"{self.namespace}:*", count=1000))
        for start in range(0, len(keys), 1000):
            self.client.delete(*keys[start:start + 1000])
