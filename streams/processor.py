"""The processor contract shared by the local and the Kafka runtime.

A device processor is a plain function object: ``(state rows, device batch) →
(new state rows, outputs)``. It does no I/O; the runtime gathers the state rows of the
devices in the batch, calls it, and stores what it returns. Within a batch a device's
events are in stream order and the processor must score each click *before* it learns
from it (predict-before-update).

A cloud job observes the event stream as the cloud would receive it and, when the
runtime fires it at a simulated (or watermark) time, retrains and releases a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from dcrec.state.device_state import StateRows, StateSpec
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.schema import Event, ParamRequest, ParamResponse


@dataclass(frozen=True)
class DeviceBatch:
    """One micro-batch of device events, ready for vectorised processing.

    ``devices`` are the distinct devices in the batch; ``row[k]`` is the index into
    ``devices`` (and into the gathered state rows) of event ``k``. ``evaluate`` marks
    the clicks to score against ``candidates`` (one row per evaluated click, column 0
    the clicked item).
    """

    events: EventBatch
    devices: np.ndarray
    row: np.ndarray
    evaluate: np.ndarray
    candidates: np.ndarray

    @classmethod
    def build(cls, events: EventBatch, evaluate: np.ndarray,
              candidates: np.ndarray) -> DeviceBatch:
        devices, row = np.unique(events.user, return_inverse=True)
        return cls(events, devices, row, evaluate, candidates)


# How old the parameters were that served each evaluated click, for processors that
# serve parameters the cloud generated from a click window (the EC-CDR presets): clicks
# since that window (1: generated from the window just before the click), in these bins;
# "generic" (age 0): the release's generic parameters, held until the device asks.
PARAMETER_AGE_BINS = ("generic", "1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", ">64")
_AGE_EDGES = np.array([0, 1, 2, 4, 8, 16, 32, 64])


def parameter_age_counts(ages: np.ndarray) -> np.ndarray:
    """Counts per :data:`PARAMETER_AGE_BINS` of served clicks whose parameters are
    ``ages`` clicks old (0: the generic ones).

    >>> parameter_age_counts(np.array([1, 1, 3, 9, 100, 0])).tolist()
    [1, 2, 0, 1, 0, 1, 0, 0, 1]
    """
    return np.bincount(np.searchsorted(_AGE_EDGES, ages, side="left"),
                       minlength=len(PARAMETER_AGE_BINS))


@dataclass
class Outputs:
    """What a processor call produced: scores for the evaluated clicks (in stream
    order), events to emit, the communication it caused and, where it serves generated
    parameters, their age per served click (:func:`parameter_age_counts`)."""

    scores: np.ndarray
    emitted: list[Event] = field(default_factory=list)
    uploads: int = 0
    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    parameter_age: np.ndarray | None = None


# A runtime's way to the cloud for requests a device waits on (CoCorrRec corrections):
# one response per request, None where none came back in time. The local runtime calls
# the cloud's service in-process; the kafka runtime sends the requests to
# ``param.requests`` and reads the answers from ``param.responses``. The processor
# itself does no I/O.
Responder = Callable[[list[ParamRequest]], list[ParamResponse | None]]


class DeviceProcessor(Protocol):
    """Advances device state over a batch of the devices' events."""

    state_spec: StateSpec

    def __call__(self, state: StateRows, batch: DeviceBatch) -> tuple[StateRows, Outputs]: ...


class CloudJob(Protocol):
    """A periodic cloud job: sees the stream, retrains when fired."""

    def observe(self, events: EventBatch) -> None: ...

    def run(self, now: int) -> Outputs | None: ...
