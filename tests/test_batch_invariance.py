"""A slice split across device workers gives the same bits as the whole slice.

The kafka runtime's workers each process the devices of their own partitions, so a
device's events share a processor call with fewer devices than in the local runtime.
The results must not depend on that: this runs the local runtime once as it is and
once with every processor call split by partition, as two workers would, and wants
identical scores and device state."""

from __future__ import annotations

import numpy as np
import pytest
from dcrec.models.metrics import RankingEvaluator
from dcrec.replay.driver import open_source, preset_context
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.local_runtime import LocalRuntime
from dcrec.streams.presets import build_pipeline
from dcrec.streams.processor import DeviceBatch, DeviceProcessor, Outputs
from dcrec.streams.topics import device_partition

from dcrec.config import ReplayConfig, WorldSettings

PARTITIONS = 4


class SplitByWorker:
    """Calls ``processor`` once per worker's share of a batch (partitions ``p % 2``)."""

    def __init__(self, processor: DeviceProcessor) -> None:
        self.processor = processor
        self.state_spec = processor.state_spec

    def __getattr__(self, name: str):  # on_release, on_hint
        return getattr(self.processor, name)

    def __call__(self, state, batch: DeviceBatch):
        events = batch.events
        worker = device_partition(events.user, PARTITIONS) % 2
        scores = np.empty(batch.candidates.shape, np.float32)
        evaluated = np.flatnonzero(batch.evaluate)
        new_state = {name: column.copy() for name, column in state.items()}
        merged = Outputs(scores=scores)
        for w in (0, 1):
            mine = worker == w
            if not mine.any():
                continue
            sub = EventBatch(events.index[mine], events.user[mine], events.item[mine],
                             events.ts[mine], events.event[mine])
            own_eval = np.isin(evaluated, np.flatnonzero(mine))
            part = DeviceBatch.build(sub, batch.evaluate[mine], batch.candidates[own_eval])
            rows = np.searchsorted(batch.devices, part.devices)
            out_state, out = self.processor({n: c[rows] for n, c in state.items()}, part)
            for name, column in out_state.items():
                new_state[name][rows] = column
            scores[own_eval] = out.scores
            merged.emitted.extend(out.emitted)
            for field in ("uploads", "requests", "bytes_up", "bytes_down"):
                setattr(merged, field, getattr(merged, field) + getattr(out, field))
        return new_state, merged


def _replay(method: str, split: bool) -> tuple[dict, dict]:
    config = ReplayConfig(dataset="world", method=method, seed=0,
                          world=WorldSettings(users=150, items=120, events=12_000))
    source = open_source(config)
    pipeline = build_pipeline(method, preset_context(config, source))
    if split:
        pipeline.processor = SplitByWorker(pipeline.processor)
    evaluator = RankingEvaluator()
    runtime = LocalRuntime(pipeline, source.n_users, source.sampler.sample, evaluator.add,
                           config.cloud_interval, config.warmup)
    stats = runtime.run(source.batches(config.micro_batch))
    assert stats.cloud_jobs > 2 and stats.evaluated > 100
    return evaluator.summary(), {n: c.copy() for n, c in runtime.state.columns.items()}


@pytest.mark.parametrize("method", ["gru4rec", "mc2sf", "dccl", "scn", "cocorrrec", "intellectreq",
                                    "drift", "lof", "ocsvm"])
def test_split_slices_give_the_same_bits(method: str) -> None:
    whole_metrics, whole_state = _replay(method, split=False)
    split_metrics, split_state = _replay(method, split=True)
    assert split_metrics == whole_metrics
    for name, column in whole_state.items():
        assert np.array_equal(split_state[name], column), name
