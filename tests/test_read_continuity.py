"""A device worker's check that its consumer hands over every offset once, in order:
messages past a hole trigger a seek back, re-reads are left alone, a lost tail is
found by comparing with the broker's end, and only offsets retention removed are
given up — counted."""

from __future__ import annotations

from dcrec.streams.read_continuity import (
    REREAD_GRACE_SECONDS,
    RESYNC_IDLE_SECONDS,
    Continuity,
    ReadContinuity,
)


def test_the_first_offset_seen_starts_a_partition_without_committed_progress():
    c = ReadContinuity({"click": None})
    assert c.check("click", 7, now=0.0) is Continuity.NEXT
    assert c.expected["click"] == 8


def test_a_message_past_a_hole_asks_to_read_the_hole_again():
    c = ReadContinuity({"click": 5})
    assert c.check("click", 5, now=0.0) is Continuity.NEXT
    assert c.check("click", 9, now=1.0) is Continuity.GAP
    assert c.expected["click"] == 6          # the hole is still to be read
    # messages queued before the seek took effect: left, they come again
    assert c.check("click", 10, now=1.0 + REREAD_GRACE_SECONDS / 2) is Continuity.EARLY
    # the re-read: the hole, then the messages already seen once are kept once
    for offset in range(6, 11):
        assert c.check("click", offset, now=2.0) is Continuity.NEXT
    assert c.check("click", 9, now=2.0) is Continuity.REPEAT
    assert c.rereads == {}


def test_a_seek_back_that_brought_nothing_is_made_again_after_the_grace_period():
    c = ReadContinuity({"click": 0})
    assert c.check("click", 3, now=0.0) is Continuity.GAP
    assert c.check("click", 4, now=REREAD_GRACE_SECONDS + 0.1) is Continuity.GAP
    assert c.rereads["click"].attempts == 2
    assert c.rereads["click"].offset == 0


def test_topics_of_a_partition_are_followed_apart():
    c = ReadContinuity({"click": 2, "exposure": 40})
    assert c.check("exposure", 40, now=0.0) is Continuity.NEXT
    assert c.check("click", 3, now=0.0) is Continuity.GAP
    assert c.check("exposure", 41, now=0.0) is Continuity.NEXT


def test_an_idle_topic_behind_the_broker_end_has_lost_its_tail():
    c = ReadContinuity({"click": 0})
    c.check("click", 0, now=0.0)
    late = RESYNC_IDLE_SECONDS + 1.0
    assert c.idle_behind("click", end=1, now=late) is False     # nothing more to read
    assert c.idle_behind("click", end=5, now=1.0) is False      # messages may be on the way
    assert c.idle_behind("click", end=None, now=late) is False  # end unknown yet
    assert c.idle_behind("click", end=5, now=late) is True
    assert c.seek_back("click", late, "idle") == 1
    assert c.idle_behind("click", end=5, now=late + 1.0) is False  # the seek is pending


def test_only_offsets_gone_from_the_broker_are_given_up_and_counted():
    c = ReadContinuity({"click": 10})
    c.skip_to("click", 8)        # the log starts below: nothing is lost
    assert c.expected["click"] == 10 and c.take_lost() == 0
    c.skip_to("click", 25)
    assert c.expected["click"] == 25
    assert c.take_lost() == 15 and c.take_lost() == 0
    assert c.check("click", 25, now=0.0) is Continuity.NEXT
