"""Decoding a slice of the device topics: stream order, every invalid message set apart
with its reason, duplicates kept once."""

from __future__ import annotations

import numpy as np
from dcrec.streams.device_messages import after_position, decode_slice, marker_slice
from dcrec.streams.schema import Click, Exposure, Reason, Watermark, encode


def _pos(p: int) -> list[tuple[str, bytes]]:
    return [("pos", str(p).encode())]


def test_valid_events_come_out_in_stream_order_and_invalid_ones_with_reasons():
    messages = [
        (encode(Click(device=1, item=3, ts=20)), _pos(7), 1000),
        (encode(Exposure(device=1, item=4, ts=10)), _pos(2), 1001),
        (b"{oops", _pos(3), 1002),
        (encode(Click(device=9, item=3, ts=20)), _pos(4), 1003),      # device 9 unknown
        (encode(Click(device=0, item=50, ts=20)), _pos(5), 1004),     # item 50 unknown
        (encode(Click(device=0, item=1, ts=20)), [], 1005),           # no position
        (encode(Exposure(device=1, item=4, ts=10)), _pos(2), 1006),   # repeated position
        (encode(Watermark(ts=5)), _pos(6), 1007),                      # not a device event
    ]
    decoded = decode_slice(messages, n_devices=5, n_items=10)
    assert decoded.batch.index.tolist() == [2, 7]
    assert decoded.batch.item.tolist() == [4, 3]
    assert decoded.produced_ms.tolist() == [1001.0, 1000.0]
    assert sorted(r.reason for r in decoded.rejected) == sorted([
        Reason.MALFORMED, Reason.UNKNOWN_ID, Reason.UNKNOWN_ID, Reason.MISSING_FIELD,
        Reason.DUPLICATE, Reason.UNKNOWN_EVENT])
    assert all(r.detail and r.raw for r in decoded.rejected)


def test_positions_already_applied_are_duplicates():
    messages = [(encode(Click(device=d, item=1, ts=5)), _pos(p), 0)
                for d, p in ((0, 10), (1, 11), (0, 12))]
    decoded = decode_slice(messages, n_devices=2, n_items=2)
    after_position(decoded, np.array([10, -1, 10]))  # device 0 has applied position 10
    assert decoded.batch.index.tolist() == [11, 12]
    assert [r.reason for r in decoded.rejected] == [Reason.DUPLICATE]


def test_slice_markers_carry_their_slice_watermark_and_end():
    raw = encode(Watermark(ts=99))
    assert marker_slice(raw, [("slice", b"4")]) == (4, 99, False)
    assert marker_slice(raw, [("slice", b"5"), ("end", b"1")]) == (5, 99, True)
    assert marker_slice(raw, []) is None
