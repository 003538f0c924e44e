"""Device state sent to the cloud every upload interval of event time: MC²-SF's negative
memory r̂₂ (F2S, Algorithm 1), DCCL's metapatch θ̂^(m) — a float vector per device,
as float16 on the wire."""

from __future__ import annotations

import numpy as np
from dcrec.state.device_state import StateRows
from dcrec.streams.processor import DeviceBatch, Outputs
from dcrec.streams.schema import Upload, encode


def upload_event(device: int, ts: int, kind: str, vector: np.ndarray) -> Upload:
    """One device's ``vector`` of ``kind`` (``negative_memory``, ``metapatch``), float16."""
    return Upload(device=device, ts=ts, kind=kind, payload=vector.astype("<f2").tobytes(),
                  dtype="float16")


def upload_payload(upload: Upload) -> np.ndarray:
    """The vector of an upload, as float32."""
    return np.frombuffer(upload.payload, "<" + np.dtype(upload.dtype).str[1:]).astype(np.float32)


def upload_due(state: StateRows, batch: DeviceBatch, interval: int, field: str, kind: str,
               out: Outputs) -> None:
    """Every device of ``batch`` whose last upload (``state["last_upload"]``) is at least
    ``interval`` of event time before its latest event uploads ``state[field]``."""
    last_ts = np.zeros(len(batch.devices), dtype=np.int64)
    np.maximum.at(last_ts, batch.row, batch.events.ts.astype(np.int64))
    due = np.flatnonzero(last_ts - state["last_upload"] >= interval)
    for k in due.tolist():
        upload = upload_event(int(batch.devices[k]), int(last_ts[k]), kind, state[field][k])
        out.emitted.append(upload)
        out.bytes_up += len(encode(upload))
    out.uploads += len(due)
    state["last_upload"][due] = last_ts[due]
