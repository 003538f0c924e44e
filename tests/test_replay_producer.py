"""The replay producer's pacing: what a live run stamps on its events and when it cuts
slices (no broker needed: a recording stand-in takes the producer's place)."""

from __future__ import annotations

import numpy as np
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.replay_producer import produce_slices
from dcrec.streams.schema import CLICK


class _Flush:
    def flush(self) -> None:
        pass


class _Recorder:
    """Stands in for :class:`ReplayProducer`: records events and watermarks in order."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []
        self.last_ts = 0
        self.producer = _Flush()

    def event(self, pos: int, device: int, item: int, ts: int, kind: int,
              due_ms: int | None = None) -> None:
        self.sent.append(("event", pos, ts, due_ms))

    def watermark(self, ts: int, end: bool = False) -> int:
        self.sent.append(("watermark", ts))
        return 0


def _batch(ts: list[int]) -> EventBatch:
    n = len(ts)
    return EventBatch(np.arange(n), np.arange(n) % 3, np.arange(n), np.array(ts, np.int64),
                      np.full(n, CLICK, np.int8))


def test_a_paced_replay_stamps_each_event_with_the_wall_time_it_was_due() -> None:
    recorder = _Recorder()
    # event times 0, 10, 20, 30 s at 500x: due 0, 20, 40, 60 ms after the first
    produce_slices(recorder, [_batch([0, 10, 20, 30])], speed=500.0, tick=10.0)
    due = [sent[3] for sent in recorder.sent if sent[0] == "event"]
    assert all(d is not None for d in due)
    assert np.allclose(np.diff(due), 20, atol=1)


def test_an_unpaced_or_event_time_replay_stamps_the_send_time() -> None:
    for speed in (None, float("inf")):
        recorder = _Recorder()
        produce_slices(recorder, [_batch([0, 10, 20])], speed=speed)
        assert [sent[3] for sent in recorder.sent if sent[0] == "event"] == [None] * 3


def test_a_live_replay_cuts_a_slice_at_least_every_tick() -> None:
    recorder = _Recorder()
    # 6 events 20 ms apart in wall time (speed 500, 10 s apart), tick 30 ms
    produce_slices(recorder, [_batch([0, 10, 20, 30, 40, 50])], speed=500.0, tick=0.03)
    kinds = [sent[0] for sent in recorder.sent]
    assert kinds[0] == "watermark"
    assert kinds.count("watermark") >= 3   # the first, then one per ~2 events
    assert kinds.count("event") == 6
