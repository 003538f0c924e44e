"""Every offset of a device partition, once and in order: a worker's check on its consumer.

A device worker buffers a partition's messages until the watermark that closes their
slice arrives, so a message its consumer never hands over is a slice that never
completes. The consumer can skip messages: faust keeps its own read offset per
partition and drops any message below it, and across a rebalance that offset can be
set past messages that were fetched but never delivered (the agent's queue is cleared
on revocation; a fetch from before the rebalance can land after the seek to the
committed offset). The worker then waits forever although the broker has everything.

So each owned partition keeps, per topic, the next offset the worker must see. Device
topics are neither compacted nor written in transactions, so their offsets have no
holes: a message past the next offset means the ones before it were lost on the way,
and the worker seeks its consumer back to read them again. Messages that were already
queued when the seek was made arrive first and are left alone for a grace period. Only
offsets below the broker's log start (deleted by retention) are given up — counted,
never silently.

>>> c = ReadContinuity({"click": 10})
>>> c.check("click", 10, now=0.0), c.check("click", 10, now=0.0)
(<Continuity.NEXT: 'next'>, <Continuity.REPEAT: 'repeat'>)
>>> c.check("click", 13, now=1.0), c.expected["click"]
(<Continuity.GAP: 'gap'>, 11)
>>> c.check("click", 14, now=1.5)   # queued before the seek took effect
<Continuity.EARLY: 'early'>
>>> c.check("click", 11, now=2.0)
<Continuity.NEXT: 'next'>
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

REREAD_GRACE_SECONDS = 5.0  # after a seek back, messages queued before it may still arrive
RESYNC_IDLE_SECONDS = 10.0  # nothing arrived for this long while the broker has more


class Continuity(enum.Enum):
    """What a message's offset says about the messages before it."""

    NEXT = "next"      # the offset expected next (or the first one seen): keep it
    REPEAT = "repeat"  # seen already (a re-read after a seek back): leave it
    EARLY = "early"    # past a gap a seek back is filling: leave it, it comes again
    GAP = "gap"        # past offsets never seen: seek back to ``expected`` and leave it


@dataclass
class Reread:
    offset: int
    at: float
    attempts: int


@dataclass
class ReadContinuity:
    """Per topic of one partition, the next offset to see (None: whatever comes first)."""

    expected: dict[str, int | None]
    rereads: dict[str, Reread] = field(default_factory=dict)
    arrived: dict[str, float] = field(default_factory=dict)  # last message, per topic
    lost: int = 0  # offsets given up as absent from the broker

    def check(self, topic: str, offset: int, now: float) -> Continuity:
        """Classify a message at ``offset``; on NEXT the expected offset moves past it."""
        self.arrived[topic] = now
        expected = self.expected.get(topic)
        if expected is not None and offset < expected:
            return Continuity.REPEAT
        if expected is not None and offset > expected:
            reread = self.rereads.get(topic)
            if (reread is not None and reread.offset == expected
                    and now - reread.at < REREAD_GRACE_SECONDS):
                return Continuity.EARLY
            self.seek_back(topic, now, f"offsets {expected}..{offset - 1} never arrived")
            return Continuity.GAP
        self.expected[topic] = offset + 1
        self.rereads.pop(topic, None)
        return Continuity.NEXT

    def skip_to(self, topic: str, log_start: int) -> None:
        """The broker's log for ``topic`` now starts at ``log_start``: what was expected
        below it is gone (retention) and is given up, counted."""
        expected = self.expected.get(topic) or 0
        if log_start > expected:
            log.error("%s: offsets %d..%d are gone from the broker; going on without them",
                      topic, expected, log_start - 1)
            self.lost += log_start - expected
            self.expected[topic] = log_start

    def seek_back(self, topic: str, now: float, why: str) -> int:
        """Record a seek back to the expected offset (counting repeated attempts at the
        same offset) and return that offset."""
        offset = self.expected.get(topic) or 0
        previous = self.rereads.get(topic)
        attempts = previous.attempts + 1 if previous and previous.offset == offset else 1
        self.rereads[topic] = Reread(offset, now, attempts)
        log.warning("%s: %s; reading again from offset %d (attempt %d)", topic, why, offset,
                    attempts)
        return offset

    def take_lost(self) -> int:
        """Offsets accepted as absent since the last call."""
        lost, self.lost = self.lost, 0
        return lost

    def idle_behind(self, topic: str, end: int | None, now: float) -> bool:
        """Nothing arrived on ``topic`` for a while though the broker holds messages past
        the expected offset, and no seek back is pending: the tail was lost on the way."""
        if end is None or end <= (self.expected.get(topic) or 0):
            return False
        reread = self.rereads.get(topic)
        if reread is not None and now - reread.at < REREAD_GRACE_SECONDS:
            return False
        return now - self.arrived.get(topic, float("-inf")) >= RESYNC_IDLE_SECONDS
