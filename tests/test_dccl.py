"""DCCL: a zero patch is the backbone; on the device only the metapatch learns;
MoMoDistill with β = 0 is plain incremental training of f; both runtimes run dccl."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dcrec.models.metapatch import MetaPatchDIN
from dcrec.models.training import TrainingConfig
from dcrec.replay.driver import open_source, run_replay
from dcrec.state.device_state import DeviceStateTable
from dcrec.state.registry import ModelRegistry
from dcrec.streams.dccl_pipeline import (
    DCCL_MODEL,
    MAX_GRAD_NORM,
    DCCLCloudJob,
    MetaPatchProcessor,
    build_dccl,
    clicks_before,
    metapatch_steps,
)
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.processor import DeviceBatch
from dcrec.streams.schema import CLICK, EXPOSURE, decode, encode
from dcrec.streams.state_uploads import upload_event, upload_payload

from dcrec.config import KafkaRuntimeSettings, ReplayConfig, WorldSettings

N_ITEMS, N_USERS, DIM, K_HAT = 30, 6, 8, 4


def _model(**kwargs) -> MetaPatchDIN:
    torch.manual_seed(0)
    return MetaPatchDIN(N_ITEMS, embedding_dim=DIM, metapatch_dim=K_HAT, profile_dim=3,
                        **kwargs)


def _inputs(n: int = 5):
    rng = np.random.default_rng(0)
    history = torch.from_numpy(rng.integers(1, N_ITEMS + 1, (n, 7)))
    history[:, 5:] = 0
    return history, torch.full((n,), 5), torch.from_numpy(rng.integers(1, N_ITEMS + 1, (n, 9)))


@pytest.mark.parametrize("junctions", [("attention",), ("mlp1",), ("pre_output",),
                                       ("attention", "mlp1", "pre_output")])
def test_a_zero_metapatch_or_a_zero_gate_gives_exactly_the_backbone(junctions):
    model = _model(junctions=junctions)
    history, lengths, candidates = _inputs()
    backbone = model.backbone.score(history, lengths, candidates)
    assert torch.equal(model.score(history, lengths, candidates, torch.zeros(5, K_HAT)),
                       backbone)
    some = torch.randn(5, K_HAT)
    assert torch.equal(model.score(history, lengths, candidates, some, gate=0.0), backbone)
    assert not torch.equal(model.score(history, lengths, candidates, some), backbone)


@pytest.mark.parametrize("junction", ["attention", "mlp1", "pre_output"])
def test_a_zero_metapatch_is_no_saddle_the_up_projection_has_a_gradient(junction):
    """With Θ's b_up rows zeroed only W_up can move the scores; at θ̂ = 0 it must still
    have a gradient (Θθ̂ alone gives both projections zero there, and none)."""
    model = _model(junctions=(junction,))
    k, r = model.widths[junction], model.bottleneck
    with torch.no_grad():
        model.basis[junction][2 * k * r + r:] = 0.0           # the b_up rows
    history, lengths, candidates = _inputs()
    metapatch = torch.zeros(5, K_HAT, requires_grad=True)
    model.score(history, lengths, candidates, metapatch).sum().backward()
    assert metapatch.grad.abs().sum(1).min() > 0


def test_each_row_is_patched_with_its_own_metapatch():
    model = _model()
    history, lengths, candidates = _inputs()
    metapatches = torch.randn(5, K_HAT)
    together = model.score(history, lengths, candidates, metapatches)
    alone = torch.cat([model.score(history[k:k + 1], lengths[k:k + 1], candidates[k:k + 1],
                                   metapatches[k:k + 1]) for k in range(5)])
    assert torch.allclose(together, alone, atol=1e-6)


def _events(users, items, kinds, start_ts=100) -> EventBatch:
    n = len(users)
    return EventBatch(np.arange(n, dtype=np.int64), np.asarray(users, np.int64),
                      np.asarray(items, np.int64), np.arange(start_ts, start_ts + n,
                                                             dtype=np.int64),
                      np.asarray(kinds, np.int8))


def test_clicks_before_counts_earlier_clicks_of_the_same_row():
    rows = np.array([0, 1, 0, 0, 1, 0])
    clicks = np.array([True, True, False, True, False, True])
    assert clicks_before(rows, clicks).tolist() == [0, 0, 1, 1, 1, 2]


def test_on_the_device_only_the_metapatch_learns():
    model = _model()
    processor = MetaPatchProcessor(model, max_len=10, upload_interval=None, buffer=8)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    table = DeviceStateTable(processor.state_spec, N_USERS)
    rng = np.random.default_rng(1)
    users = np.r_[np.zeros(12, int), np.ones(3, int)]  # device 0 fills its buffer
    kinds = np.where(np.arange(15) % 3 == 0, CLICK, EXPOSURE)
    events = _events(users, rng.integers(0, N_ITEMS, 15), kinds)
    batch = DeviceBatch.build(events, np.zeros(15, bool), np.zeros((0, 2), np.int64))
    rows, _ = processor(table.gather(batch.devices), batch)
    assert not np.allclose(rows["metapatch"][0], 0)     # device 0 learnt
    assert np.all(rows["metapatch"][1] == 0)            # device 1 is still collecting
    assert rows["samples"].tolist() == [0, 3]
    for name, value in model.state_dict().items():      # f and Θ untouched
        assert torch.equal(value, weights[name]), name


def test_a_runaway_metapatch_step_is_clipped_and_never_leaves_the_finite_numbers():
    """The patch is quadratic in θ̂: with a large basis and a large step, plain gradient
    descent runs off to inf/NaN within a few steps. Each device's gradient is clipped,
    so a step moves θ̂ by at most lr · MAX_GRAD_NORM, and the scores stay finite."""
    model = _model()
    with torch.no_grad():
        for basis in model.basis.values():
            basis.mul_(1000.0)
    rng = np.random.default_rng(0)
    owner = np.r_[np.zeros(6, int), np.ones(6, int)]
    history = rng.integers(1, N_ITEMS, (12, 10))
    item, label = rng.integers(1, N_ITEMS, 12), np.tile([1.0, 0.0], 6)
    start = np.full((2, K_HAT), 0.5, np.float32)
    lr = 100.0
    out = metapatch_steps(model, start, owner, history, item, label, np.ones(12), 1, lr)
    assert np.all(np.isfinite(out))
    assert np.all(np.linalg.norm(out - start, axis=1) <= lr * MAX_GRAD_NORM * (1 + 1e-5))
    out = metapatch_steps(model, start, owner, history, item, label, np.ones(12), 20, lr)
    assert np.all(np.isfinite(out))
    scores = model.score(torch.from_numpy(history), torch.full((12,), 10),
                         torch.from_numpy(item)[:, None], torch.from_numpy(out[owner]))
    assert torch.isfinite(scores).all()


def test_a_device_scores_a_click_before_it_learns_from_it():
    model = _model()
    processor = MetaPatchProcessor(model, max_len=10, upload_interval=None, buffer=1)
    table = DeviceStateTable(processor.state_spec, N_USERS)
    events = _events([2], [4], [CLICK])
    candidates = np.array([[4, 7, 9]])
    batch = DeviceBatch.build(events, np.array([True]), candidates)
    _, out = processor(table.gather(batch.devices), batch)
    expected = model.score(torch.zeros(1, 10, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                           torch.from_numpy(candidates + 1), torch.zeros(1, K_HAT))
    assert np.allclose(out.scores, expected.detach().numpy())


def test_a_metapatch_upload_round_trips_through_the_wire_codec():
    metapatch = np.linspace(-1, 1, K_HAT).astype(np.float32)
    upload = decode(encode(upload_event(3, 99, "metapatch", metapatch)))
    assert upload.kind == "metapatch" and upload.device == 3
    assert np.allclose(upload_payload(upload), metapatch, atol=1e-3)
    assert len(upload.payload) == 2 * K_HAT


def _cloud(distill: bool, beta: float) -> DCCLCloudJob:
    model = _model()
    profiles = np.eye(3, dtype=np.float32)[np.arange(N_USERS) % 3]
    return DCCLCloudJob(model, N_USERS, 10, TrainingConfig(batch_size=8), 0, ModelRegistry(),
                        profiles, distill=distill, beta=beta)


def _feed(cloud: DCCLCloudJob, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cloud.observe(_events(rng.integers(0, N_USERS, 60), rng.integers(0, N_ITEMS, 60),
                          np.full(60, CLICK)))
    for device in range(N_USERS):
        metapatch = rng.normal(size=K_HAT).astype(np.float32)
        cloud.on_upload(upload_event(device, 0, "metapatch", metapatch))


def test_momodistill_with_beta_zero_is_plain_incremental_training_of_f():
    plain, distilled = _cloud(distill=False, beta=0.0), _cloud(distill=True, beta=0.0)
    for round_ in range(3):
        for cloud in (plain, distilled):
            _feed(cloud, round_)
            cloud.run(86_400 * (round_ + 1))
    for name, value in plain.model.backbone.state_dict().items():
        assert torch.equal(value, distilled.model.backbone.state_dict()[name]), name
    # with β > 0 the device models pull f elsewhere
    pulled = _cloud(distill=True, beta=1.0)
    for round_ in range(3):
        _feed(pulled, round_)
        pulled.run(86_400 * (round_ + 1))
    assert not torch.equal(pulled.model.backbone.head[0].weight,
                           plain.model.backbone.head[0].weight)


def test_the_cloud_releases_f_and_the_basis_each_round():
    cloud = _cloud(distill=True, beta=1.0)
    basis = cloud.model.basis["mlp1"].detach().clone()
    _feed(cloud, 0)
    out = cloud.run(86_400)
    assert out is not None and out.emitted[0].model == DCCL_MODEL
    assert not torch.equal(cloud.model.basis["mlp1"], basis)  # pretraining learnt Θ


def test_build_rejects_an_unknown_variant():
    with pytest.raises(ValueError, match="unknown DCCL variant"):
        build_dccl("dccl-x", 3, 5, 0, 10, 8, TrainingConfig(), 3600, np.zeros((3, 0)))


DCCL_CONFIG = ReplayConfig(dataset="world", method="dccl", seed=0,
                           world=WorldSettings(users=150, items=200, events=6000))


def test_a_dccl_replay_reports_metapatch_state_and_upload_bytes():
    report = run_replay(DCCL_CONFIG)
    assert report["comm"]["uploads"] > 0 and report["comm"]["upload_bytes"] > 0
    assert report["comm"]["releases"] > 1
    assert report["perf"]["state_bytes_per_device"] < 1024
    assert report["events"]["evaluated"] > 100


@pytest.mark.integration
def test_the_kafka_runtime_runs_dccl_with_the_local_metrics(services):
    from dcrec.replay.kafka_replay import run_kafka_replay

    local = run_replay(DCCL_CONFIG)
    kafka = run_kafka_replay(DCCL_CONFIG, open_source(DCCL_CONFIG), KafkaRuntimeSettings(
        broker=services.broker.url, redis=services.redis.url, workers=2), timeout=900)
    for name, value in local["metrics"].items():
        assert kafka["metrics"][name] == pytest.approx(value, abs=1e-6), name
    for name in ("uploads", "bytes_up", "releases", "cloud_jobs"):
        assert kafka["comm"][name] == local["comm"][name], name
    assert kafka["kafka"]["device_counters"]["mismatched_devices"] == 0


def test_the_loo_protocol_trains_and_tests_dccl(monkeypatch):
    from functools import partial

    from dcrec.replay import dccl_offline, offline_runner
    from dcrec.replay.dccl_offline import run_dccl
    from dcrec.replay.driver import load_log
    from dcrec.streams.presets import PresetContext

    log_ = load_log("world", WorldSettings(users=120, items=150, events=6000), seed=0)
    ctx = PresetContext(n_users=log_.n_users, n_items=log_.n_items, seed=0)
    din = offline_runner.run_method(log_, "loo", "din", 0, ctx, max_epochs=2, patience=2)
    results = {}
    for method in ("dccl-e", "dccl", "din-pretrain"):
        result = offline_runner.run_method(log_, "loo", method, 0, ctx, max_epochs=2,
                                           patience=2)
        assert 0.0 <= result["test"]["NDCG@10"] <= 1.0
        assert result["phases"]["device"] > 0.2 * result["phases"]["pretrain"]
        assert result["metapatch_bytes"] <= 1024
        results[method] = result
    # the methods share one pretraining stage; handing out copies changes nothing
    dccl_offline._PRETRAINED.clear()
    again = offline_runner.run_method(log_, "loo", "dccl-e", 0, ctx, max_epochs=2, patience=2)
    assert again["test"] == results["dccl-e"]["test"]
    assert results["dccl-e"]["test"] != results["din-pretrain"]["test"]  # the patches act
    # no device phase: dccl-e is the din baseline, bit for bit
    monkeypatch.setattr(offline_runner, "run_dccl", partial(run_dccl, pretrain_share=1.0))
    alone = offline_runner.run_method(log_, "loo", "dccl-e", 0, ctx, max_epochs=2, patience=2)
    assert alone["test"] == din["test"] and alone["valid"] == din["valid"]
    with pytest.raises(ValueError, match="--protocol loo"):
        offline_runner.run_method(log_, "mc2sf", "dccl", 0, ctx, max_epochs=1)


def test_a_device_learns_from_its_own_exposures_of_the_device_phase():
    from dcrec.replay.dccl_offline import _subset, device_exposures
    from dcrec.replay.log import InteractionLog
    from dcrec.replay.offline import UserSequences, loo_split

    # user 0 clicks items 1..6 at times 10..60 (train targets 2, 3, 4; valid 5; test 6);
    # exposures at 15 (pretraining phase), 35 and 45 (device phase), 55 (after the
    # validation click) and 65; user 1 clicks 7, 8, 9 and has no exposure
    clicks = [(0, i, 10 * i, CLICK) for i in range(1, 7)] + \
        [(1, 6 + k, 10 * k + 2, CLICK) for k in range(1, 4)]
    exposures = [(0, 20, 15, EXPOSURE), (0, 21, 35, EXPOSURE), (0, 24, 45, EXPOSURE),
                 (0, 22, 55, EXPOSURE), (0, 23, 65, EXPOSURE)]
    rows = sorted(clicks + exposures, key=lambda r: r[2])
    user, item, ts, event = (np.array(c) for c in zip(*rows, strict=True))
    log_ = InteractionLog(name="toy", user=user, item=item, ts=ts, event=event.astype(np.int8),
                          user_ids=["a", "b"], item_ids=[str(i) for i in range(25)])
    seqs = UserSequences.from_log(log_)
    split = loo_split(seqs, max_len=5)
    device_phase = _subset(split.train, seqs.ts[split.train.key] >= 30)
    local = device_exposures(log_, split, device_phase, max_len=5)
    assert local is not None
    assert local.users.tolist() == [0, 0]
    assert (local.target - 1).tolist() == [21, 24]       # shifted ids, as click targets
    assert (local.history - 1).tolist() == [[1, 2, 3, -1, -1], [1, 2, 3, 4, -1]]
    assert local.lengths.tolist() == [3, 4]
    clicks_only = InteractionLog(name="clicks", user=user[event == CLICK],
                                 item=item[event == CLICK], ts=ts[event == CLICK],
                                 event=event[event == CLICK].astype(np.int8),
                                 user_ids=["a", "b"], item_ids=[str(i) for i in range(25)])
    assert device_exposures(clicks_only, split, device_phase, max_len=5) is None
