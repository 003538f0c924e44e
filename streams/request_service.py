"""What a cloud service answering device requests has in common (CoCorrRec's
corrections, EC-CDR's generated parameters): it answers with the model version each
device serves, read from the registry, and keeps count of its requests, refusals, time
and load."""

from __future__ import annotations

import threading
import time

from dcrec.state.registry import ModelRegistry
from dcrec.streams.schema import ParamRequest, ParamResponse
from torch import nn


class RequestService:
    """Base of the request services; a subclass answers in :meth:`answer`."""

    def __init__(self, model: nn.Module, registry: ModelRegistry, name: str) -> None:
        self.model = model.eval()
        self.registry, self.name = registry, name
        self.loaded: int | None = None
        self.requests = self.rejected = self.load = 0
        self.seconds = 0.0
        self.busy = 0.0   # seconds spent answering since the last take_busy_seconds
        self.lock = threading.Lock()  # a request-server thread answers while jobs read

    def load_version(self, version: int) -> bool:
        """Serve with version ``version`` of the model; False if it is not published."""
        if self.loaded != version:
            found = self.registry.version(self.name, version)
            if found is None:
                return False
            self.model.load_state_dict(self.registry.load(found))
            self.model.eval()
            self.loaded = version
        return True

    def answer(self, requests: list[ParamRequest]) -> list[ParamResponse | None]:
        raise NotImplementedError

    def respond(self, requests: list[ParamRequest]) -> list[ParamResponse | None]:
        """A response per request; None for one that cannot be answered."""
        with self.lock:
            started = time.perf_counter()
            answers = self.answer(requests)
            self.requests += len(requests)
            self.load += len(requests)
            self.rejected += sum(a is None for a in answers)
            spent = time.perf_counter() - started
            self.seconds += spent
            self.busy += spent
        return answers

    def summary(self) -> dict[str, float]:
        """Requests seen, answered, and the time to answer one (ms)."""
        answered = self.requests - self.rejected
        return {"requests": self.requests, "answered": answered,
                "ms_per_answer": 1000.0 * self.seconds / max(answered, 1)}

    def take_busy_seconds(self) -> float:
        """Seconds spent answering since the last call (the measured service time of
        the requests :meth:`take_load` counts)."""
        with self.lock:
            busy, self.busy = self.busy, 0.0
        return busy

    def take_load(self) -> int:
        """Requests since the last call (the cloud's load)."""
        with self.lock:
            load, self.load = self.load, 0
        return load
