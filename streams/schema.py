"""Event schema and wire codec of every topic in DESIGN.md's event flow.

Every event is a ``msgspec.Struct`` tagged with its kind (field ``t``) and carrying the
schema version (field ``v``). On the wire events are MessagePack (compact, typed,
schema-checked on decode); JSON is accepted too, for hand-written input.

Decoding never raises on bad input: :func:`decode` returns either an event or a
:class:`Rejected` with a machine-readable reason, which the runtimes route to
``events.deadletter``.

>>> raw = encode(Click(device=7, item=42, ts=881250949))
>>> decode(raw)
Click(device=7, item=42, ts=881250949, v=1)
>>> decode(b'{"t": "click", "device": 7, "item": 42, "ts": -5}').reason == "negative_timestamp"
True
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import msgspec

SCHEMA_VERSION: Final = 1
CLICK: Final = 1
EXPOSURE: Final = 0
MAX_TIMESTAMP: Final = 4_102_444_800  # 2100-01-01: anything later is absurd for a log
MAX_MESSAGE_BYTES: Final = 64 * 1024
MAX_ID: Final = 2**31 - 1


class Reason(StrEnum):
    """Why an input was rejected; the label of the dead-letter counter."""

    MALFORMED = "malformed"
    UNKNOWN_EVENT = "unknown_event"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    NEGATIVE_TIMESTAMP = "negative_timestamp"
    ABSURD_TIMESTAMP = "absurd_timestamp"
    NEGATIVE_ID = "negative_id"
    UNKNOWN_ID = "unknown_id"
    OVERSIZE = "oversize"
    DUPLICATE = "duplicate"
    UNSUPPORTED_VERSION = "unsupported_version"
    BAD_PAYLOAD = "bad_payload"  # a request the cloud cannot answer (size, kind, version)


class Rejected(msgspec.Struct, frozen=True):
    """An input that did not validate: the reason, a human detail, and the raw input."""

    reason: str
    detail: str
    raw: bytes = b""
    source: str = ""


class _Event(msgspec.Struct, tag_field="t", forbid_unknown_fields=True, frozen=True):
    pass


# --- app / replay -> device processors -------------------------------------------------


class Click(_Event, tag="click"):
    """The device's user clicked ``item`` at event time ``ts`` (unix seconds)."""

    device: int
    item: int
    ts: int
    v: int = SCHEMA_VERSION


class Exposure(_Event, tag="exposure"):
    """``item`` was shown to the device's user at ``ts``, in ``slate`` at ``position``."""

    device: int
    item: int
    ts: int
    slate: int = 0
    position: int = 0
    v: int = SCHEMA_VERSION


class Watermark(_Event, tag="watermark"):
    """Event time has reached ``ts`` on the producing side (drives cloud-job timing)."""

    ts: int
    v: int = SCHEMA_VERSION


# --- device <-> cloud -----------------------------------------------------------------


class Upload(_Event, tag="upload"):
    """Device state sent to the cloud: ``kind`` is ``negative_memory`` (MC²-SF F2S),
    ``metapatch`` (DCCL) or ``ttt_state`` (CoCorrRec); ``payload`` is little-endian
    ``dtype`` bytes."""

    device: int
    ts: int
    kind: str
    payload: bytes
    dtype: str = "float16"
    v: int = SCHEMA_VERSION


class Release(_Event, tag="release"):
    """A new model version in the registry, promoted atomically."""

    model: str
    version: int
    ts: int
    checksum: str
    v: int = SCHEMA_VERSION


class Hint(_Event, tag="hint"):
    """MC²-SF S2F interest embeddings r_n, r_t for one device (float16 bytes)."""

    device: int
    ts: int
    r_n: bytes
    r_t: bytes
    v: int = SCHEMA_VERSION


class ParamRequest(_Event, tag="param_request"):
    """A device asking the cloud for parameters. ``kind`` ``params`` (IntellectReq):
    its mis-recommendation score ``mrs`` and a sequence ``summary``; ``correction``
    (CoCorrRec): ``payload`` holds the hidden states H of its current TTT mini-batch
    (little-endian float16), ``position`` is its click count, ``version`` the model
    version it serves."""

    device: int
    ts: int
    mrs: float = 0.0
    summary: bytes = b""
    kind: str = "params"
    payload: bytes = b""
    position: int = 0
    version: int = 0
    v: int = SCHEMA_VERSION


class ParamResponse(_Event, tag="param_response"):
    """Parameters or a correction (float16 bytes) generated for one device by the
    cloud with model ``version``, answering its request at click ``position``; kind
    ``busy`` (no payload) when the cloud was at capacity and shed the request, so the
    device stops waiting and serves on with what it holds."""

    device: int
    ts: int
    version: int
    payload: bytes
    kind: str = "params"
    position: int = 0
    v: int = SCHEMA_VERSION


class Threshold(_Event, tag="threshold"):
    """The MRS threshold the cloud load controller set, and the load it came from."""

    ts: int
    threshold: float
    load: float                 # requests per click since the last threshold
    capacity: float             # the share of clicks the cloud could afford
    level: float = 1.0          # the share of the devices' MRS sample under the threshold
    requests: int = 0           # requests since the last threshold (the demand)
    admitted: int = 0           # of those, the ones the cloud served
    seconds: int = 0            # stream seconds since the last threshold
    v: int = SCHEMA_VERSION


class DeadLetter(_Event, tag="deadletter"):
    """A rejected input with its reason, for operators."""

    ts: int
    source: str
    reason: str
    detail: str
    raw: bytes
    v: int = SCHEMA_VERSION


Event = (
    Click | Exposure | Watermark | Upload | Release | Hint | ParamRequest | ParamResponse
    | Threshold | DeadLetter
)

_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(Event)
_json_decoder = msgspec.json.Decoder(Event)


def encode(event: Event) -> bytes:
    """MessagePack bytes of an event."""
    return _msgpack_encoder.encode(event)


def _reason_of(error: msgspec.MsgspecError) -> Reason:
    text = str(error)
    if isinstance(error, msgspec.DecodeError) and not isinstance(error, msgspec.ValidationError):
        return Reason.MALFORMED
    if text.startswith("Expected `object`") and " - at `" not in text:
        return Reason.MALFORMED  # the input is not an event record at all
    if ("Invalid value" in text and "`$.t`" in text) or "missing required field `t`" in text:
        return Reason.UNKNOWN_EVENT
    if "unknown field" in text:
        return Reason.UNKNOWN_FIELD
    if "missing required field" in text:
        return Reason.MISSING_FIELD
    return Reason.BAD_TYPE


def check(event: Event) -> Rejected | None:
    """Semantic checks a type check cannot make: version, timestamp and id ranges."""
    if event.v != SCHEMA_VERSION:
        return Rejected(Reason.UNSUPPORTED_VERSION, f"schema version {event.v}")
    ts = event.ts
    if ts < 0:
        return Rejected(Reason.NEGATIVE_TIMESTAMP, f"ts={ts}")
    if ts > MAX_TIMESTAMP:
        return Rejected(Reason.ABSURD_TIMESTAMP, f"ts={ts} is after 2100-01-01")
    for name in ("device", "item"):
        value = getattr(event, name, 0)
        if value < 0:
            return Rejected(Reason.NEGATIVE_ID, f"{name}={value}")
        if value > MAX_ID:
            return Rejected(Reason.UNKNOWN_ID, f"{name}={value} is out of range")
    return None


def decode(raw: bytes, source: str = "") -> Event | Rejected:
    """Decode MessagePack or JSON bytes into an event, or say why not.

    JSON is recognised by its first non-blank byte being ``{``.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        detail = f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}"
        return Rejected(Reason.OVERSIZE, detail, raw[:256], source)
    stripped = raw.lstrip()
    decoder = _json_decoder if stripped[:1] == b"{" else _msgpack_decoder
    try:
        event = decoder.decode(stripped)
    except msgspec.MsgspecError as error:
        return Rejected(_reason_of(error), str(error), raw, source)
    problem = check(event)
    if problem is not None:
        return Rejected(problem.reason, problem.detail, raw, source)
    return event


def dead_letter(rejected: Rejected, ts: int) -> DeadLetter:
    """The dead-letter event for a rejected input."""
    return DeadLetter(
        ts=ts, source=rejected.source, reason=rejected.reason, detail=rejected.detail,
        raw=rejected.raw,
    )
