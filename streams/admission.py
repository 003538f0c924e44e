"""Admission of device requests at the cloud's door: a token bucket in stream time.

The cloud answers at most ``capacity`` requests per second of stream time; a request
that finds no token is shed at once — the device keeps serving with what it holds —
rather than queued without bound. The tokens missing from a full bucket are the
requests admitted and not yet worked off (the queue), so the queue never exceeds
``queue_bound``. The request agents' threshold (IntellectReq Eq. 19–20) is what keeps
demand near capacity; admission is what holds the line while the threshold catches up
with a surge. With the service's measured capacity on, each cloud job also holds the
door to what the service was measured to answer (:meth:`hold_to`), never above the
configured capacity.

>>> door = RequestAdmission(capacity=2.0, queue_bound=2)
>>> [door.admit(ts=100) for _ in range(3)], door.admit(ts=101)
([True, True, False], True)
"""

from __future__ import annotations


class RequestAdmission:
    """A token bucket: ``capacity`` tokens per stream second, at most ``queue_bound``."""

    def __init__(self, capacity: float, queue_bound: int) -> None:
        if capacity <= 0 or queue_bound < 1:
            raise ValueError("capacity must be positive and queue_bound at least 1")
        self.capacity, self.queue_bound = capacity, queue_bound
        self.configured = capacity
        self.tokens = float(queue_bound)
        self.last_ts: int | None = None
        self.max_queue = 0

    def admit(self, ts: int) -> bool:
        """Whether a request at stream time ``ts`` is served (requests out of time
        order refill nothing)."""
        if self.last_ts is not None and ts > self.last_ts:
            self.tokens = min(float(self.queue_bound),
                              self.tokens + (ts - self.last_ts) * self.capacity)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        self.max_queue = max(self.max_queue, self.queue)
        return True

    def hold_to(self, measured: float | None) -> None:
        """Admit at most ``measured`` requests per stream second (the service's measured
        capacity), never more than configured; None (nothing measured yet): configured.

        >>> door = RequestAdmission(capacity=2.0, queue_bound=1)
        >>> door.hold_to(0.5); door.capacity
        0.5
        >>> door.hold_to(10.0); door.capacity
        2.0
        """
        self.capacity = self.configured if measured is None else min(self.configured,
                                                                      measured)

    @property
    def queue(self) -> int:
        """Requests admitted and not yet worked off."""
        return round(self.queue_bound - self.tokens)
