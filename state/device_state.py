"""Device state as fixed-layout columns: one row per device, one array per field.

A :class:`StateSpec` names each field's dtype and shape; the in-memory table stores
``[n_devices, *shape]`` arrays, and the same layout packs a device's row into compact
bytes for a remote store (float32/int32 bytes, never pickle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

StateRows = dict[str, np.ndarray]


@dataclass(frozen=True)
class StateField:
    dtype: str
    shape: tuple[int, ...] = ()

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64)))


StateSpec = dict[str, StateField]


def spec_nbytes(spec: StateSpec) -> int:
    """Bytes of one device's state."""
    return sum(f.nbytes for f in spec.values())


class DeviceStateTable:
    """All devices' state in memory, gathered and scattered by device id."""

    def __init__(self, spec: StateSpec, n_devices: int) -> None:
        self.spec = spec
        self.columns: StateRows = {
            name: np.zeros((n_devices, *f.shape), dtype=f.dtype) for name, f in spec.items()
        }

    @property
    def bytes_per_device(self) -> int:
        return spec_nbytes(self.spec)

    def gather(self, devices: np.ndarray) -> StateRows:
        return {name: column[devices] for name, column in self.columns.items()}

    def scatter(self, devices: np.ndarray, rows: StateRows) -> None:
        for name, column in self.columns.items():
            column[devices] = rows[name]


def pack_row(spec: StateSpec, rows: StateRows, k: int) -> bytes:
    """The bytes of row ``k`` of ``rows`` in the spec's field order."""
    return b"".join(np.ascontiguousarray(rows[name][k], dtype=f.dtype).tobytes()
                    for name, f in spec.items())


def unpack_rows(spec: StateSpec, blobs: list[bytes | None]) -> StateRows:
    """Rows from packed bytes; a missing blob (``None``) is a fresh, zeroed device."""
    rows = {name: np.zeros((len(blobs), *f.shape), dtype=f.dtype) for name, f in spec.items()}
    size = spec_nbytes(spec)
    for k, blob in enumerate(blobs):
        if blob is None:
            continue
        if len(blob) != size:
            raise ValueError(f"state blob of {len(blob)} bytes, layout needs {size}")
        offset = 0
        for name, f in spec.items():
            rows[name][k] = np.frombuffer(blob, dtype=f.dtype, count=int(np.prod(f.shape)),
                                          offset=offset).reshape(f.shape)
            offset += f.nbytes
    return rows
