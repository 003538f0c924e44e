"""Cloud-trained sequential recommenders served on devices without device learning
(the ``gru4rec``, ``sasrec`` and ``din`` presets).

Each device keeps its window of recent clicks; it scores with the latest model the
cloud released, downloading a new version the first time it is active after a
release. The cloud sees every click, keeps its own per-user windows, and at each
cloud interval continues training on the clicks that arrived since the last job.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from dcrec.models.base import SequentialRecommender
from dcrec.models.training import IncrementalTrainer, TrainingConfig, score_candidates
from dcrec.state import click_history
from dcrec.state.device_state import StateField, StateRows, StateSpec
from dcrec.state.registry import ModelRegistry, ModelVersion, download
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.processor import DeviceBatch, Outputs
from dcrec.streams.schema import CLICK, Release

ModelFactory = Callable[[], SequentialRecommender]


def window_spec(max_len: int) -> StateSpec:
    """State of a device that serves a cloud model: its click window and model version."""
    return {
        "seq": StateField("int32", (max_len,)),
        "length": StateField("int32"),
        "version": StateField("int32"),
    }


class SequenceServingProcessor:
    """Device side: score each click with the released model, then append it."""

    def __init__(self, build_model: ModelFactory, max_len: int) -> None:
        self.model = build_model()
        self.model.eval()
        self.state_spec = window_spec(max_len)
        self.version: ModelVersion | None = None

    def on_release(self, version: ModelVersion, registry: ModelRegistry) -> None:
        self.model.load_state_dict(registry.load(version))
        self.model.eval()
        self.version = version

    def __call__(self, state: StateRows, batch: DeviceBatch) -> tuple[StateRows, Outputs]:
        events = batch.events
        clicks = events.event == CLICK
        advanced = click_history.advance(state["seq"], state["length"], batch.row[clicks],
                                         events.item[clicks].astype(np.int32) + 1)
        evaluated = batch.evaluate[clicks]
        scores = score_candidates(self.model, advanced.windows[evaluated],
                                  advanced.lengths[evaluated], batch.candidates + 1)
        served = state["version"].copy()
        bytes_down = download(served, self.version)
        new_state = {"seq": advanced.seq, "length": advanced.length, "version": served}
        return new_state, Outputs(scores=scores, bytes_down=bytes_down)


class CloudClickWindows:
    """The cloud's copy of every user's click window, and the training samples — each
    click with the window before it — that arrived since they were last taken."""

    def __init__(self, n_users: int, max_len: int) -> None:
        self.seq = np.zeros((n_users, max_len), dtype=np.int32)
        self.length = np.zeros(n_users, dtype=np.int32)
        self._pending: list[tuple[np.ndarray, ...]] = []

    def observe(self, events: EventBatch) -> None:
        clicks = events.event == CLICK
        users = events.user[clicks]
        if len(users) == 0:
            return
        devices, row = np.unique(users, return_inverse=True)
        advanced = click_history.advance(self.seq[devices], self.length[devices], row,
                                         events.item[clicks].astype(np.int32) + 1)
        self.seq[devices] = advanced.seq
        self.length[devices] = advanced.length
        has_history = advanced.lengths > 0
        self._pending.append((advanced.windows[has_history], advanced.lengths[has_history],
                              events.item[clicks][has_history].astype(np.int64) + 1,
                              users[has_history]))

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """``(windows, lengths, targets, users)`` since the last call; None if empty."""
        if not self._pending:
            return None
        windows, lengths, targets, users = (np.concatenate(parts)
                                            for parts in zip(*self._pending, strict=True))
        self._pending.clear()
        return (windows, lengths, targets, users) if len(targets) else None


class SequenceCloudJob:
    """Cloud side: per-user windows of every click, incremental training per job."""

    def __init__(self, name: str, build_model: ModelFactory, n_users: int, max_len: int,
                 training: TrainingConfig, seed: int, registry: ModelRegistry) -> None:
        self.name = name
        self.trainer = IncrementalTrainer(build_model(), training, seed)
        self.registry = registry
        self.windows = CloudClickWindows(n_users, max_len)
        self.jobs = 0

    def initial_release(self) -> ModelVersion:
        """Version 1: the untrained model, so devices can serve before any job ran."""
        return self.registry.publish(self.name, self.trainer.model.state_dict())

    def observe(self, events: EventBatch) -> None:
        self.windows.observe(events)

    def run(self, now: int) -> Outputs | None:
        samples = self.windows.take()
        if samples is None:
            return None
        windows, lengths, targets, _ = samples
        self.trainer.fit(windows, lengths, targets)
        self.jobs += 1
        version = self.registry.publish(self.name, self.trainer.model.state_dict())
        return Outputs(scores=np.zeros((0, 0), dtype=np.float32), emitted=[
            Release(model=self.name, version=version.version, ts=now, checksum=version.checksum)
        ])
