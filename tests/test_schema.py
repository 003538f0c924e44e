"""Event schema: every event survives the wire codec; every bad input is rejected with
the reason the dead-letter topic will carry, never with an exception."""

from __future__ import annotations

import msgspec
import pytest
from dcrec.streams.schema import (
    MAX_MESSAGE_BYTES,
    MAX_TIMESTAMP,
    SCHEMA_VERSION,
    Click,
    DeadLetter,
    Exposure,
    Hint,
    ParamRequest,
    ParamResponse,
    Reason,
    Rejected,
    Release,
    Threshold,
    Upload,
    Watermark,
    dead_letter,
    decode,
    encode,
)

EVENTS = [
    Click(device=7, item=42, ts=881250949),
    Exposure(device=7, item=3, ts=881250949, slate=12, position=2),
    Watermark(ts=881250950),
    Upload(device=1, ts=5, kind="negative_memory", payload=b"\x00\x3c" * 32),
    Release(model="din", version=3, ts=9, checksum="ab" * 32),
    Hint(device=2, ts=10, r_n=b"\x01\x02", r_t=b"\x03\x04"),
    ParamRequest(device=3, ts=11, mrs=0.25, summary=b"xyz"),
    ParamResponse(device=3, ts=12, version=4, payload=b"\x00" * 8),
    Threshold(ts=13, threshold=0.4, load=120.0, capacity=100.0),
    DeadLetter(ts=14, source="events.clicks", reason="malformed", detail="x", raw=b"{"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_the_wire_codec(event):
    raw = encode(event)
    assert decode(raw) == event
    assert event.v == SCHEMA_VERSION


def test_msgpack_is_more_compact_than_json():
    click = EVENTS[0]
    assert len(encode(click)) < len(msgspec.json.encode(click))


def test_json_input_is_accepted():
    assert decode(b' {"t": "click", "device": 1, "item": 2, "ts": 3}') == Click(1, 2, 3)


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\xc1\xc1 not msgpack", Reason.MALFORMED),
    (b'{"t": "click", "device": 1,', Reason.MALFORMED),
    (b'{"t": "purchase", "device": 1, "item": 2, "ts": 3}', Reason.UNKNOWN_EVENT),
    (b'{"device": 1, "item": 2, "ts": 3}', Reason.UNKNOWN_EVENT),
    (b'{"t": "click", "device": 1, "item": 2, "ts": 3, "price": 9}', Reason.UNKNOWN_FIELD),
    (b'{"t": "click", "device": 1, "ts": 3}', Reason.MISSING_FIELD),
    (b'{"t": "click", "device": "one", "item": 2, "ts": 3}', Reason.BAD_TYPE),
    (b'{"t": "click", "device": 1, "item": 2, "ts": -5}', Reason.NEGATIVE_TIMESTAMP),
    (b'{"t": "click", "device": 1, "item": 2, "ts": %d}' % (MAX_TIMESTAMP + 1),
     Reason.ABSURD_TIMESTAMP),
    (b'{"t": "click", "device": -1, "item": 2, "ts": 3}', Reason.NEGATIVE_ID),
    (b'{"t": "exposure", "device": 1, "item": 4294967296, "ts": 3}', Reason.UNKNOWN_ID),
    (b'{"t": "click", "device": 1, "item": 2, "ts": 3, "v": 99}', Reason.UNSUPPORTED_VERSION),
])
def test_invalid_input_is_rejected_with_its_reason(raw, reason):
    result = decode(raw, source="events.clicks")
    assert isinstance(result, Rejected)
    assert result.reason == reason
    assert result.source == "events.clicks"
    assert result.raw == raw
    assert result.detail


def test_oversize_input_is_rejected_without_being_parsed():
    raw = b'{"t": "click", "device": 1, "item": 2, "ts": 3, "pad": "' + b"x" * MAX_MESSAGE_BYTES
    result = decode(raw)
    assert isinstance(result, Rejected)
    assert result.reason == Reason.OVERSIZE
    assert len(result.raw) <= 256


def test_a_rejection_becomes_a_dead_letter_that_itself_round_trips():
    rejected = decode(b"garbage", source="events.exposures")
    assert isinstance(rejected, Rejected)
    letter = dead_letter(rejected, ts=100)
    assert letter.reason == Reason.MALFORMED
    assert letter.source == "events.exposures"
    assert letter.raw == b"garbage"
    assert decode(encode(letter)) == letter
