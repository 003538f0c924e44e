"""MC²-SF: the slow and fast components, the device's negative memory, F2S/S2F payloads,
incremental cloud training, and each preset end to end on a tiny world."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dcrec.models.mc2sf import FastComponent, SlowComponent, gru_step
from dcrec.models.training import TrainingConfig
from dcrec.replay.driver import open_source, run_replay
from dcrec.replay.mc2sf_offline import MC2SF_METHODS, case_study_markdown
from dcrec.replay.offline_runner import run_method
from dcrec.state.device_state import DeviceStateTable
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.mc2sf_pipeline import build_mc2sf, hint_event, hint_payload
from dcrec.streams.presets import PresetContext
from dcrec.streams.processor import DeviceBatch
from dcrec.streams.schema import CLICK, EXPOSURE, Hint, Upload, decode, encode
from dcrec.streams.state_uploads import upload_event, upload_payload

from dcrec.config import ModelConfig, ReplayConfig, WorldSettings

D = 8
N_ITEMS = 30


def test_slow_component_reads_the_negative_memory_only_with_f2s():
    torch.manual_seed(0)
    history, candidates = torch.tensor([[3, 5, 0], [2, 0, 0]]), torch.tensor([[1, 2], [4, 6]])
    slow = SlowComponent(N_ITEMS, D, f2s=True)
    memory = slow.negative_memory(torch.tensor([[4, 6], [0, 0]]), torch.tensor([2, 0]))
    assert memory.shape == (2, D) and torch.all(memory[1] == 0)  # no exposures: zero memory
    scores = slow.score(history, memory, candidates)
    assert scores.shape == (2, 2)
    assert not torch.allclose(scores, slow.score(history, memory + 1.0, candidates))
    r_n, r_t = slow.interests(history, memory, candidates)
    assert r_n is not None and r_n.shape == r_t.shape == (2, 2, D)
    plain = SlowComponent(N_ITEMS, D, f2s=False)
    assert torch.equal(plain.score(history, None, candidates),
                       plain.score(history, memory, candidates))
    hint = slow.hint(history, torch.tensor([2, 0]), memory)
    assert hint.shape == (2, 2 * D) and torch.all(hint[1] == 0)  # no clicks: no hint


def test_fast_component_shapes_and_zero_hint_is_no_hint():
    torch.manual_seed(0)
    fast = FastComponent(N_ITEMS, D, s2f=True)
    args = (torch.tensor([[3, 5, 0]]), torch.tensor([2]), torch.tensor([[4, 6, 2]]),
            torch.tensor([3]))
    candidates = torch.tensor([[1, 2, 7, 9]])
    no_hint = fast.score(*args, torch.zeros(1, 2 * D), candidates)
    assert no_hint.shape == (1, 4)
    z_p, z_n, r_t = fast.initial_states(torch.zeros(1, 2 * D))
    assert torch.all(z_p == 0) and torch.all(z_n == 0) and torch.all(r_t == 0)
    with_hint = fast.score(*args, torch.randn(1, 2 * D), candidates)
    assert not torch.allclose(no_hint, with_hint)
    assert FastComponent(N_ITEMS, D).score(*args, None, candidates).shape == (1, 4)


def test_f2s_and_s2f_payloads_round_trip_through_the_wire_codec():
    memory = np.linspace(-1, 1, D, dtype=np.float32)
    upload = decode(encode(upload_event(7, 100, "negative_memory", memory)))
    assert isinstance(upload, Upload) and upload.kind == "negative_memory"
    np.testing.assert_allclose(upload_payload(upload), memory, atol=1e-3)
    payload = np.linspace(-2, 2, 2 * D, dtype=np.float32)
    hint = decode(encode(hint_event(3, 200, payload)))
    assert isinstance(hint, Hint) and hint.device == 3
    np.testing.assert_allclose(hint_payload(hint), payload, atol=2e-3)


def _pipeline(variant: str, n_users: int = 4):
    return build_mc2sf(variant, n_users=n_users, n_items=N_ITEMS, seed=0, max_len=6,
                       embedding_dim=D, training=TrainingConfig(batch_size=8),
                       upload_interval=3600)


def _batch(users, items, events, ts=None, evaluate_all=True):
    n = len(users)
    batch = EventBatch(np.arange(n, dtype=np.int64), np.asarray(users), np.asarray(items),
                       np.asarray(ts if ts is not None else np.zeros(n), dtype=np.int64),
                       np.asarray(events, dtype=np.int8))
    clicks = batch.event == CLICK
    evaluate = clicks & evaluate_all
    candidates = np.stack([np.r_[item, np.arange(3)] for item in batch.item[evaluate]]) \
        if evaluate.any() else np.zeros((0, 4), np.int64)
    return DeviceBatch.build(batch, evaluate, candidates)


def _step(processor, table, batch):
    rows = table.gather(batch.devices)
    new, out = processor(rows, batch)
    table.scatter(batch.devices, new)
    return out


def test_negative_memory_advances_on_exposures_and_never_on_clicks():
    processor, _, _ = _pipeline("mc2sf")
    table = DeviceStateTable(processor.state_spec, 4)
    _step(processor, table, _batch([1, 1], [5, 6], [CLICK, CLICK]))
    assert np.all(table.columns["negative_memory"] == 0)  # clicks only: untouched
    _step(processor, table, _batch([1, 2, 1], [7, 8, 9], [EXPOSURE, CLICK, EXPOSURE]))
    memory = table.columns["negative_memory"]
    with torch.inference_mode():
        fast = processor.model
        h = torch.zeros(1, D)
        for item in (7, 9):
            h = gru_step(fast.gru_n, fast.item_embedding(torch.tensor([item + 1])), h)
    np.testing.assert_allclose(memory[1], h[0].numpy(), atol=1e-6)
    assert np.all(memory[2] == 0) and np.all(memory[0] == 0)
    before = memory.copy()
    _step(processor, table, _batch([1, 2], [3, 4], [CLICK, CLICK]))
    assert np.array_equal(table.columns["negative_memory"], before)


def test_the_negative_memory_has_the_same_bits_however_devices_share_a_gru_call():
    """Devices of very different exposure counts are grouped into padded GRU_n calls by
    an estimate of time; a device's r̂₂ and r̃_n come out bit for bit as if it ran alone."""
    n, rng = 40, np.random.default_rng(0)
    users = np.repeat(np.arange(n), rng.integers(1, 120, n))
    rng.shuffle(users)
    items = rng.integers(0, N_ITEMS, len(users))
    states = {}
    for alone in (False, True):
        processor, _, _ = _pipeline("mc2sf", n_users=n)
        for device in range(0, n, 3):   # an S2F state of its own, from a hint
            processor.on_hint(hint_event(device, 0, np.linspace(-1, 1, 2 * D) * device / n))
        table = DeviceStateTable(processor.state_spec, n)
        for mine in ([users == d for d in range(n)] if alone else [users >= 0]):
            _step(processor, table, _batch(users[mine], items[mine],
                                           np.full(mine.sum(), EXPOSURE)))
        states[alone] = {k: table.columns[k].copy()
                         for k in ("negative_memory", "negative_state")}
    for name, together in states[False].items():
        assert np.array_equal(together, states[True][name]), name
    assert not np.array_equal(states[False]["negative_memory"],
                              states[False]["negative_state"])


def test_each_click_is_scored_before_the_device_learns_it():
    """Scores equal the fast component's on the click window and the memory of earlier
    slates *before* each click (its own slate's exposures excluded); this device never
    received a hint, so it serves the fast component with none."""
    processor, _, _ = _pipeline("mc2sf")
    table = DeviceStateTable(processor.state_spec, 4)
    users, items = [0, 0, 0, 0, 0, 0], [4, 11, 6, 12, 13, 8]
    events = [CLICK, EXPOSURE, CLICK, EXPOSURE, EXPOSURE, CLICK]
    ts = [0, 10, 10, 20, 30, 30]  # slates: {4}, {11, 6}, {12}, {13, 8}
    out = _step(processor, table, _batch(users, items, events, ts=ts))
    fast = processor.model
    expected = []
    with torch.inference_mode():
        clicks: list[int] = []
        for item, event, t in zip(items, events, ts, strict=True):
            if event == CLICK:
                exposures = [i + 1 for i, e, s in zip(items, events, ts, strict=True)
                             if e == EXPOSURE and s < t]
                history = torch.tensor([clicks + [0] * (6 - len(clicks))])
                exposed = torch.tensor([exposures + [0] * (6 - len(exposures))])
                candidates = torch.tensor([[item + 1, 1, 2, 3]])
                expected.append(fast.score(history, torch.tensor([len(clicks)]), exposed,
                                           torch.tensor([len(exposures)]),
                                           torch.zeros(1, 2 * D), candidates)[0].numpy())
                clicks.append(item + 1)
    np.testing.assert_allclose(out.scores, np.stack(expected), atol=1e-5)
    assert np.all(table.columns["hint"] == 0)


def test_a_hint_sets_the_initial_states_and_is_counted_once():
    processor, _, _ = _pipeline("mc2sf")
    table = DeviceStateTable(processor.state_spec, 4)
    payload = np.linspace(0.1, 1.0, 2 * D, dtype=np.float32)
    processor.on_hint(hint_event(2, 0, payload))
    _step(processor, table, _batch([2], [5], [CLICK]))
    np.testing.assert_allclose(table.columns["hint"][2].astype(np.float32), payload, atol=2e-3)
    assert np.any(table.columns["negative_state"][2] != 0)  # r̃_n restarted at z_n
    assert not processor.inbox


def test_uploads_every_interval_and_slow_training_continues_from_the_last_weights():
    processor, cloud, _ = _pipeline("mc2sf-f2s")
    table = DeviceStateTable(processor.state_spec, 4)
    batch = _batch([0, 0, 1, 1], [5, 6, 7, 8], [EXPOSURE, CLICK, EXPOSURE, CLICK],
                   ts=[4000, 4000, 4000, 4001])
    out = _step(processor, table, batch)
    assert out.uploads == 2 and out.bytes_up > 0
    upload = out.emitted[0]
    cloud.observe(batch.events)
    cloud.on_upload(upload)
    # a batch within the interval uploads nothing
    assert _step(processor, table, _batch([0], [9], [EXPOSURE], ts=[4100])).uploads == 0
    later = _batch([0, 0, 1], [9, 3, 4], [CLICK, CLICK, CLICK], ts=[9000, 9001, 9002])
    cloud.observe(later.events)
    # the clicks after the upload are trained with the uploaded r̂₂
    np.testing.assert_allclose(cloud._pending[-1]["r_hat2"][0], upload_payload(upload))
    trainer = cloud.slow_trainer
    first = cloud.run(10_000)
    assert first is not None and trainer is not None
    after_first = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    steps = trainer.steps
    seen_at_start = {}
    original_fit = trainer.fit

    def recording_fit(*args, **kwargs):
        seen_at_start.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return original_fit(*args, **kwargs)

    trainer.fit = recording_fit
    cloud.observe(_batch([1, 1], [2, 3], [CLICK, CLICK], ts=[20_000, 20_001]).events)
    cloud.run(30_000)
    assert all(torch.equal(seen_at_start[k], after_first[k]) for k in after_first)
    assert trainer.steps > steps
    assert int(trainer.optimizer.state_dict()["state"][0]["step"]) == trainer.steps


def _tiny_world(method: str) -> ReplayConfig:
    return ReplayConfig(dataset="world", method=method, n_negatives=20,
                        world=WorldSettings(users=60, items=80, events=6_000, clusters=4),
                        model=ModelConfig(embedding_dim=D, epochs_per_job=1),
                        cloud_interval="5d", upload_interval="6h")


@pytest.mark.parametrize("method", MC2SF_METHODS)
def test_each_preset_replays_a_tiny_world(method):
    config = _tiny_world(method)
    report = run_replay(config, open_source(config))
    assert report["events"]["evaluated"] > 100
    assert 0 < report["metrics"]["AUC"] <= 1
    comm = report["comm"]
    assert comm["releases"] == comm["cloud_jobs"] > 0
    assert (comm["uploads"] > 0) == (method != "mc2sf-fast")
    assert (comm["hints"] > 0) == (method == "mc2sf")
    assert (comm["hint_bytes"] > 0) == (method == "mc2sf")
    assert comm["upload_bytes"] == comm["bytes_up"]  # the only upstream traffic here
    assert comm["hint_bytes"] <= comm["bytes_down"]
    assert report["perf"]["state_bytes_per_device"] <= 8 * 1024


def test_offline_protocol_trains_every_variant_and_builds_the_case_study():
    from dcrec.replay.world import World, WorldConfig

    log = World(WorldConfig(n_users=80, n_items=60, n_clusters=4, n_events=12_000)).to_log()
    ctx = PresetContext(n_users=log.n_users, n_items=log.n_items, seed=0, embedding_dim=D)
    results = [run_method(log, "mc2sf", m, 0, ctx, max_epochs=1, patience=1, n_negatives=20)
               for m in ("din", *MC2SF_METHODS)]
    for r in results:
        assert 0 < r["test"]["AUC"] <= 1 and len(r["case_study"]["top5"]) == 5
    table = case_study_markdown(results, list(log.item_ids))
    assert "| Fast | Slow | S2F | F2S |" in table and table.count("\n| ") >= 6
