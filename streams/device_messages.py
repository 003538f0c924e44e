"""Messages of the device topics as the kafka runtime reads them: slice markers, and a
slice's messages decoded into an :class:`EventBatch` in stream order with everything
invalid set apart as :class:`Rejected` (the dead letters).

The device workers and the cloud process read the same topics with the same rules, so
both see exactly the same valid events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.schema import (
    CLICK,
    EXPOSURE,
    Click,
    Exposure,
    Reason,
    Rejected,
    Watermark,
    decode,
)

SOURCE = "device-topics"


def header(headers: Any, name: str) -> bytes | None:
    """A header's value from Kafka headers (a list of pairs or a mapping)."""
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    for key, value in items:
        if key == name:
            return value
    return None


def marker_slice(raw: bytes, headers: Any) -> tuple[int, int, bool] | None:
    """(slice, watermark ts, end of stream) if the message is a slice marker."""
    tag = header(headers, "slice")
    if tag is None:
        return None
    event = decode(raw)
    ts = event.ts if isinstance(event, Watermark) else 0
    return int(tag), ts, header(headers, "end") is not None


@dataclass
class DecodedSlice:
    """A slice's valid events in stream order, each one's producer timestamp (ms) and
    raw bytes, and the rejected messages."""

    batch: EventBatch
    produced_ms: np.ndarray
    raws: list[bytes]
    rejected: list[Rejected]

    def keep(self, mask: np.ndarray, reason: Reason, detail: str) -> None:
        """Keep the events of ``mask``; reject the others with ``reason``."""
        b = self.batch
        self.rejected += [Rejected(reason, f"{detail} (stream position {int(b.index[j])})",
                                   self.raws[j], SOURCE)
                          for j in np.flatnonzero(~mask).tolist()]
        self.batch = EventBatch(b.index[mask], b.user[mask], b.item[mask], b.ts[mask],
                                b.event[mask])
        self.produced_ms = self.produced_ms[mask]
        self.raws = [r for r, m in zip(self.raws, mask.tolist(), strict=True) if m]


def decode_slice(messages: list[tuple[bytes, Any, int]], n_devices: int, n_items: int,
                 ) -> DecodedSlice:
    """Decode ``(value, headers, producer timestamp ms)`` messages of device topics.

    A valid event is a click or exposure of a known device and item carrying its stream
    position (header ``pos``); a position seen twice keeps its first message. Rejected:
    malformed or unknown records, unknown ids, a missing position, duplicates."""
    rows, rejected = [], []
    for value, headers, produced in messages:
        event = decode(value, source=SOURCE)
        pos = header(headers, "pos")
        if isinstance(event, Rejected):
            rejected.append(event)
        elif not isinstance(event, Click | Exposure):
            rejected.append(Rejected(Reason.UNKNOWN_EVENT,
                                     f"{type(event).__name__} on a device topic",
                                     value[:256], SOURCE))
        elif event.device >= n_devices or event.item >= n_items:
            rejected.append(Rejected(Reason.UNKNOWN_ID,
                                     f"device {event.device} / item {event.item} outside "
                                     f"this run's {n_devices} devices / {n_items} items",
                                     value, SOURCE))
        elif pos is None or not pos.isdigit():
            rejected.append(Rejected(Reason.MISSING_FIELD, "no stream position header",
                                     value, SOURCE))
        else:
            kind = CLICK if isinstance(event, Click) else EXPOSURE
            rows.append((int(pos), event.device, event.item, event.ts, kind, produced, value))
    rows.sort(key=lambda r: r[0])
    table = np.array([r[:6] for r in rows], dtype=np.int64).reshape(-1, 6)
    decoded = DecodedSlice(
        EventBatch(table[:, 0], table[:, 1], table[:, 2], table[:, 3],
                   table[:, 4].astype(np.int8)),
        table[:, 5].astype(np.float64), [r[6] for r in rows], rejected)
    first = np.ones(len(table), dtype=bool)
    first[1:] = np.diff(table[:, 0]) != 0
    decoded.keep(first, Reason.DUPLICATE, "stream position repeated in the slice")
    return decoded


def after_position(decoded: DecodedSlice, last_pos: np.ndarray) -> None:
    """Reject events at or before their device's last applied stream position
    (``last_pos`` per event): state and position commit together, so these are
    duplicates in the input, not redeliveries."""
    decoded.keep(decoded.batch.index > last_pos, Reason.DUPLICATE,
                 "stream position already applied")
