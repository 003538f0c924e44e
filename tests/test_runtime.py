"""The local runtime keeps each device's order, scores a click before anything learns
it, fires cloud jobs exactly at their simulated times, and is deterministic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from dcrec.models.metrics import RankingEvaluator
from dcrec.replay.driver import open_source, run_replay
from dcrec.replay.log import InteractionLog
from dcrec.replay.negatives import NegativeSampler
from dcrec.state.device_state import StateField, StateRows
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.local_runtime import LocalRuntime, Pipeline
from dcrec.streams.processor import DeviceBatch, Outputs
from dcrec.streams.schema import CLICK, EXPOSURE

from dcrec.config import ModelConfig, ReplayConfig, WorldSettings

DAY = 86_400


def _log(n_users: int = 30, n_items: int = 40, n_events: int = 2_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, 20 * DAY, size=n_events))
    return InteractionLog(
        name="toy", user=rng.integers(0, n_users, size=n_events), item=rng.integers(
            0, n_items, size=n_events), ts=ts,
        event=np.where(rng.random(n_events) < 0.5, CLICK, EXPOSURE).astype(np.int8),
        user_ids=[str(u) for u in range(n_users)], item_ids=[str(i) for i in range(n_items)])


class OrderRecorder:
    """Remembers, per device, the position of the last event it saw (in device state),
    and flags any event that arrives out of the device's stream order."""

    state_spec = {"last": StateField("int64")}  # noqa: RUF012

    def __init__(self) -> None:
        self.violations = 0
        self.seen: list[np.ndarray] = []

    def __call__(self, state: StateRows, batch: DeviceBatch) -> tuple[StateRows, Outputs]:
        last = state["last"].copy()
        for k in range(len(batch.events)):
            r = batch.row[k]
            position = batch.events.index[k] + 1  # state starts at 0
            self.violations += int(position <= last[r])
            last[r] = position
        self.seen.append(batch.events.index.copy())
        return {"last": last}, Outputs(scores=np.zeros(batch.candidates.shape, np.float32))


class ClickMemory:
    """Scores a candidate 1 if the device clicked it *before*, else 0 — so a click is
    scored 1 only if it repeats an earlier click of the device."""

    def __init__(self, n_items: int) -> None:
        self.state_spec = {"clicked": StateField("bool", (n_items,))}

    def __call__(self, state: StateRows, batch: DeviceBatch) -> tuple[StateRows, Outputs]:
        clicked = state["clicked"].copy()
        scores = np.zeros(batch.candidates.shape, np.float32)
        row = 0
        for k in range(len(batch.events)):
            if batch.events.event[k] != CLICK:
                continue
            r = batch.row[k]
            if batch.evaluate[k]:
                scores[row] = clicked[r, batch.candidates[row]]
                row += 1
            clicked[r, batch.events.item[k]] = True
        return {"clicked": clicked}, Outputs(scores=scores)


class JobClock:
    """A cloud job that checks it only ever observed events before its fire time."""

    def __init__(self) -> None:
        self.observed_max = -1
        self.fired: list[int] = []
        self.late = 0

    def observe(self, events: EventBatch) -> None:
        if self.fired and len(events):
            self.late += int((events.ts < self.fired[-1]).sum())
        self.observed_max = max(self.observed_max, int(events.ts.max(initial=-1)))

    def run(self, now: int) -> Outputs | None:
        assert self.observed_max < now
        self.fired.append(now)
        return None


def _runtime(processor, log, cloud=None, warmup: int = 0) -> tuple[LocalRuntime, list]:
    sampler = NegativeSampler(log.n_items, 5, seed=0)
    scored: list = []
    runtime = LocalRuntime(Pipeline(processor, cloud), log.n_users, sampler.sample,
                           lambda users, scores: scored.append(scores), DAY, warmup)
    return runtime, scored


@pytest.mark.parametrize("micro_batch", [1, 7, 64, 5_000])
def test_each_device_sees_its_events_in_stream_order_across_batches(micro_batch):
    log = _log()
    recorder = OrderRecorder()
    runtime, _ = _runtime(recorder, log)
    stats = runtime.run(log.batches(micro_batch))
    assert recorder.violations == 0
    assert np.array_equal(np.concatenate(recorder.seen), np.arange(log.n_events))
    assert stats.events == log.n_events


def test_a_click_is_scored_before_the_device_learns_it():
    log = _log(n_items=10)
    clicks = log.event == CLICK
    runtime, scored = _runtime(ClickMemory(log.n_items), log)
    runtime.run(log.batches(33))
    positives = np.concatenate(scored)[:, 0]
    # the true item scores 1 exactly when the device clicked it earlier
    expected = []
    history: dict[int, set[int]] = {}
    for u, i in zip(log.user[clicks], log.item[clicks], strict=True):
        expected.append(float(i in history.setdefault(int(u), set())))
        history[int(u)].add(int(i))
    assert positives.tolist() == expected
    assert 0 < sum(expected) < len(expected)


def test_warmup_skips_each_users_first_clicks():
    log = _log()
    runtime, scored = _runtime(ClickMemory(log.n_items), log, warmup=3)
    stats = runtime.run(log.batches(50))
    clicks_per_user = log.clicks_per_user()
    assert stats.evaluated == int(np.maximum(clicks_per_user - 3, 0).sum())
    assert sum(len(s) for s in scored) == stats.evaluated


def test_cloud_jobs_fire_at_interval_boundaries_and_cut_the_batches():
    log = _log()
    clock = JobClock()
    runtime, _ = _runtime(OrderRecorder(), log, cloud=clock)
    stats = runtime.run(log.batches(10_000))
    first = int(log.ts[0])
    assert clock.fired == [first + DAY * k for k in range(1, len(clock.fired) + 1)]
    assert clock.fired[-1] <= log.ts[-1] < clock.fired[-1] + DAY
    assert clock.late == 0  # nothing observed after a job was earlier than that job
    assert stats.cloud_jobs == len(clock.fired)


class ProductPerEvent:
    """One ``[1, 8] @ [8, 4]`` matrix product per event (64 FLOPs), no scores."""

    state_spec = {}  # noqa: RUF012

    def __call__(self, state: StateRows, batch: DeviceBatch) -> tuple[StateRows, Outputs]:
        torch.ones(len(batch.events), 8) @ torch.ones(8, 4)
        return state, Outputs(scores=np.zeros(batch.candidates.shape, np.float32))


def test_counted_flops_are_the_device_processors_matrix_products():
    log = _log()
    runtime, _ = _runtime(ProductPerEvent(), log)
    runtime.count_flops = True
    stats = runtime.run(log.batches(64))
    assert stats.events == log.n_events and stats.device_flops == 64 * stats.events


def _small_world(method: str, seed: int = 0, micro_batch: int = 4096) -> ReplayConfig:
    return ReplayConfig(dataset="world", method=method, seed=seed, micro_batch=micro_batch,
                        n_negatives=20,
                        world=WorldSettings(users=60, items=80, events=6_000, clusters=4),
                        model=ModelConfig(embedding_dim=8, epochs_per_job=1),
                        cloud_interval="5d")


def _outcome(report: dict) -> tuple:
    return report["metrics"], report["events"], report["comm"], report["groups"]


@pytest.mark.parametrize("method", ["gru4rec", "popularity"])
def test_same_seed_gives_an_identical_report(method):
    config = _small_world(method)
    first = run_replay(config, open_source(config))
    second = run_replay(config, open_source(config))
    assert _outcome(first) == _outcome(second)
    assert first["events"]["evaluated"] > 100
    other = _small_world(method, seed=1)
    assert _outcome(run_replay(other, open_source(other))) != _outcome(first)


def test_counting_flops_leaves_the_replay_unchanged():
    config = _small_world("gru4rec")
    plain = run_replay(config, open_source(config))
    counted = run_replay(config, open_source(config), count_flops=True)
    assert _outcome(counted) == _outcome(plain)
    assert counted["perf"]["device_flops"] > 0 and "device_flops" not in plain["perf"]


def test_the_report_splits_quality_into_cloud_rounds():
    config = _small_world("gru4rec")
    report = run_replay(config, open_source(config))
    rounds = report["rounds"]
    assert sum(r["clicks"] for r in rounds) == report["events"]["evaluated"]
    assert len(rounds) > 2 and max(r["round"] for r in rounds) <= report["comm"]["cloud_jobs"]
    assert rounds[0]["from_ts"] is None                 # before the first cloud job
    starts = [r["from_ts"] for r in rounds[1:]]
    assert all(b - a >= 5 * 86400 for a, b in itertools.pairwise(starts))
    overall = sum(r["NDCG@10"] * r["clicks"] for r in rounds) / sum(r["clicks"] for r in rounds)
    assert overall == pytest.approx(report["metrics"]["NDCG@10"])


# ec-cdr and lof send a batch's requests in one call, intellectreq one call per rank (a
# device's r-th click of the batch); a batch of one event has one rank
@pytest.mark.parametrize("method", ["popularity", "river-mf", "ec-cdr", "lof", "intellectreq"])
def test_micro_batch_size_does_not_change_the_result(method):
    reports = [run_replay(c, open_source(c)) for c in
               (_small_world(method, micro_batch=1), _small_world(method, micro_batch=997))]
    assert reports[0]["metrics"] == reports[1]["metrics"]
    assert reports[0]["comm"] == reports[1]["comm"]


def test_scores_of_a_trained_model_beat_chance_on_the_world():
    config = ReplayConfig(dataset="world", method="gru4rec", n_negatives=20,
                          world=WorldSettings(users=200, items=100, events=30_000, clusters=5),
                          model=ModelConfig(embedding_dim=16), cloud_interval="2d")
    report = run_replay(config, open_source(config))
    assert report["metrics"]["AUC"] > 0.6
    assert report["comm"]["releases"] == report["comm"]["cloud_jobs"] > 0


def test_evaluator_groups_cover_every_scored_user():
    evaluator = RankingEvaluator()
    evaluator.add(np.array([0, 1, 1]), np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.5]]))
    groups = evaluator.activity_groups(np.array([1, 5]), 2)
    assert sum(g["users"] for g in groups) == 2
