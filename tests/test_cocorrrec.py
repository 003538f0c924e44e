"""CoCorrRec: the TTT-Linear dual form, the device's carried TTT state, the cloud's
correction, and the presets in the runtimes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dcrec.models.scn import SCN, match_statistics
from dcrec.models.ttt_linear import TTTLinear, primal_outputs
from dcrec.replay.driver import open_source, run_replay
from dcrec.state.device_state import DeviceStateTable
from dcrec.state.registry import ModelRegistry
from dcrec.streams.cocorrrec_pipeline import CorrectionService, TTTProcessor
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.processor import DeviceBatch
from dcrec.streams.schema import CLICK

from dcrec.config import KafkaRuntimeSettings, ReplayConfig, WorldSettings


def _block(mini_batch: int) -> TTTLinear:
    torch.manual_seed(mini_batch)
    block = TTTLinear(dim=8, heads=2, mini_batch=mini_batch, base_lr=4.0).double()
    with torch.no_grad():  # away from the initial values, so every term matters
        block.W0.normal_(0, 0.3)
        block.b0.normal_(0, 0.3)
        block.ln_gamma.normal_(1, 0.2)
        block.scale_offset.normal_(0, 0.1)
    return block


@pytest.mark.parametrize("mini_batch", [1, 3, 5])
def test_dual_form_equals_the_token_by_token_update(mini_batch: int) -> None:
    """b = 1: Eq. 1–3 token by token; b > 1: the mini-batch update of Eq. 5 — the dual
    form (Eq. 6–7) gives the same outputs Z and end-of-mini-batch W_b, to 1e-5."""
    block = _block(mini_batch)
    x = torch.randn(3, 11, 8, dtype=torch.float64)
    with torch.no_grad():
        dual, (W_dual, _) = block(x)
    primal, W_primal = primal_outputs(block, x)
    assert torch.allclose(dual, primal.detach(), atol=1e-5)
    assert torch.allclose(W_dual, W_primal.detach(), atol=1e-5)
    assert (W_dual - block.W0).abs().max() > 1e-2  # the state did learn


def test_dual_form_in_float32_stays_within_1e5() -> None:
    torch.manual_seed(0)
    block = TTTLinear(dim=16, heads=4, mini_batch=4)
    x = torch.randn(5, 13, 16)
    with torch.no_grad():
        dual, (W_dual, _) = block(x)
    primal, W_primal = primal_outputs(block, x)
    assert torch.allclose(dual, primal.detach(), atol=1e-5)
    assert torch.allclose(W_dual, W_primal.detach(), atol=1e-5)


def test_correction_statistics_match_the_device_rows() -> None:
    """Eq. 14: a corrected row has the device row's mean and deviation."""
    corr, device = torch.randn(4, 6) * 5 + 3, torch.randn(4, 6)
    fused = match_statistics(corr, device)
    assert torch.allclose(fused.mean(-1), device.mean(-1), atol=1e-5)
    assert torch.allclose(fused.std(-1, unbiased=False), device.std(-1, unbiased=False),
                          atol=1e-4)


def _click_batches(items: list[list[int]], splits: list[int]) -> list[DeviceBatch]:
    """Device 0 and 1 clicking ``items[d]`` interleaved, cut at ``splits``."""
    rows = [(d, it) for k in range(max(map(len, items))) for d in (0, 1)
            if k < len(items[d]) for it in [items[d][k]]]
    user = np.array([d for d, _ in rows])
    item = np.array([it for _, it in rows])
    index = np.arange(len(rows))
    batches = []
    for lo, hi in zip([0, *splits], [*splits, len(rows)], strict=True):
        sl = slice(lo, hi)
        events = EventBatch(index[sl], user[sl], item[sl], index[sl] * 10,
                            np.full(hi - lo, CLICK, np.int8))
        evaluate = np.ones(hi - lo, bool)
        batches.append(DeviceBatch.build(events, evaluate, item[sl, None].astype(np.int64)))
    return batches


@pytest.mark.parametrize("correction", [False, True])
def test_carried_state_equals_the_whole_sequence_in_one_pass(correction: bool) -> None:
    """A device's TTT state carried across events, over batches cut anywhere, gives
    the user vector and W of the block run over all its clicks at once."""
    torch.manual_seed(0)

    def build() -> SCN:
        torch.manual_seed(0)
        return SCN(n_items=40, dim=16, heads=4, mini_batch=4, correction=correction)

    registry = ModelRegistry()
    processor = TTTProcessor(build, correction)
    processor.on_release(registry.publish("cocorrrec", build().state_dict()), registry)
    if correction:
        processor.responder = CorrectionService(build, registry, "cocorrrec").respond
    rng = np.random.default_rng(0)
    items = [rng.integers(0, 40, 23).tolist(), rng.integers(0, 40, 9).tolist()]
    table = DeviceStateTable(processor.state_spec, 2)
    for batch in _click_batches(items, [3, 4, 17, 30]):
        rows = table.gather(batch.devices)
        new_rows, out = processor(rows, batch)
        table.scatter(batch.devices, new_rows)
    model = build().eval()
    for device in (0, 1):
        seq = torch.tensor([[i + 1 for i in items[device]]])
        with torch.no_grad():
            whole = model.outputs(seq)[0, -1].numpy()
        column = "user_corrected" if correction else "user"
        # the correction travels as float16 (hidden states up, rows down)
        tolerance = 5e-3 if correction else 1e-5
        np.testing.assert_allclose(table.columns[column][device], whole, atol=tolerance)
        n = len(items[device])
        closed = seq[:, : n // 4 * 4]
        with torch.no_grad():
            _, (W, _) = model.ttt(model.hidden(closed))
        np.testing.assert_allclose(table.columns["W"][device], W[0].numpy(), atol=1e-5)
    if correction:
        assert out.requests > 0 and out.bytes_up > 0 and out.bytes_down > 0


@pytest.mark.parametrize("correction", [False, True])
def test_a_devices_mini_batch_step_has_the_same_bits_however_many_devices_share_it(
        correction: bool) -> None:
    # the device path runs each step on its devices alone, unpadded (TTTProcessor)
    torch.manual_seed(0)
    model = SCN(n_items=300, dim=16, heads=2, mini_batch=5, correction=correction).eval()
    with torch.inference_mode():
        projected = model.ttt.project(model.hidden(torch.randint(0, 301, (40, 5))))
        W, b = model.ttt.initial_state(40)
        W, b = W + 0.1 * torch.randn_like(W), b + 0.1 * torch.randn_like(b)
        rows = torch.randn(40, 5, model.gcn.row_width) if correction else None
        together = model.mini_batch_heads(W, b, projected, rows)
        for n in (1, 3, 16, 17):
            for part in (slice(0, n), slice(40 - n, 40)):
                alone = model.mini_batch_heads(W[part], b[part],
                                               {k: v[part] for k, v in projected.items()},
                                               None if rows is None else rows[part])
                assert all(torch.equal(x[part], y) for x, y in zip(together, alone, strict=True))


def test_the_correction_service_refuses_what_it_cannot_answer() -> None:
    """Bad requests get no answer (and are counted), never a crash."""
    from dcrec.streams.schema import ParamRequest

    def build() -> SCN:
        torch.manual_seed(0)
        return SCN(n_items=10, dim=8, heads=2, mini_batch=3, correction=True)

    registry = ModelRegistry()
    version = registry.publish("cocorrrec", build().state_dict()).version
    service = CorrectionService(build, registry, "cocorrrec")
    good = np.zeros((2, 8), np.float16).tobytes()
    requests = [
        ParamRequest(device=1, ts=0, kind="correction", payload=good, position=1,
                     version=version),
        ParamRequest(device=2, ts=0, kind="correction", payload=good[:-3], version=version),
        ParamRequest(device=3, ts=0, kind="correction", payload=good * 2, version=version),
        ParamRequest(device=4, ts=0, kind="correction", payload=good, version=version + 7),
        ParamRequest(device=5, ts=0, mrs=0.3, version=version),
    ]
    answers = service.respond(requests)
    assert answers[0] is not None and answers[0].position == 1
    assert len(answers[0].payload) == 2 * service.model.gcn.row_width
    assert answers[1:] == [None] * 4 and service.rejected == 4


REPLAY = ReplayConfig(dataset="world", method="cocorrrec", seed=0,
                      world=WorldSettings(users=120, items=150, events=6000))


def test_a_cocorrrec_replay_corrects_every_click_and_keeps_state_small() -> None:
    report = run_replay(REPLAY)
    scn = run_replay(REPLAY.model_copy(update={"method": "scn"}))
    assert report["comm"]["requests"] == report["events"]["clicks"]
    assert report["cloud_service"]["answered"] == report["events"]["clicks"]
    assert report["cloud_service"]["ms_per_answer"] > 0
    assert "cloud_service" not in scn
    assert report["comm"]["bytes_up"] > 0
    assert scn["comm"]["requests"] == 0 and scn["comm"]["bytes_up"] == 0
    assert report["perf"]["state_bytes_per_device"] <= 8 * 1024
    assert report["metrics"] != scn["metrics"]


def test_the_loo_protocol_trains_and_tests_scn_and_cocorrrec() -> None:
    from dcrec.replay.driver import load_log
    from dcrec.replay.offline_runner import run_method
    from dcrec.streams.presets import PresetContext

    log_ = load_log("world", WorldSettings(users=80, items=150, events=4000), seed=0)
    ctx = PresetContext(n_users=log_.n_users, n_items=log_.n_items, seed=0)
    for method in ("scn", "cocorrrec"):
        result = run_method(log_, "loo", method, 0, ctx, max_epochs=2, patience=2)
        assert 0.0 <= result["test"]["NDCG@10"] <= 1.0
        assert result["samples"]["test"] > 10
    with pytest.raises(ValueError, match="--protocol loo"):
        run_method(log_, "mc2sf", "scn", 0, ctx, max_epochs=1)


@pytest.mark.integration
def test_the_kafka_runtime_runs_cocorrrec_with_the_local_metrics(services) -> None:
    """Corrections travel on param.requests / param.responses and give the local
    runtime's results."""
    from dcrec.replay.kafka_replay import run_kafka_replay

    local = run_replay(REPLAY)
    kafka = run_kafka_replay(REPLAY, open_source(REPLAY), KafkaRuntimeSettings(
        broker=services.broker.url, redis=services.redis.url, workers=2), timeout=900)
    for name, value in local["metrics"].items():
        assert kafka["metrics"][name] == pytest.approx(value, abs=1e-6), name
    for name in ("requests", "bytes_up", "bytes_down", "releases", "cloud_jobs"):
        assert kafka["comm"][name] == local["comm"][name], name
    corrections = kafka["corrections"]
    assert corrections["answered"] == corrections["requests"] == local["comm"]["requests"]
    assert corrections["timeouts"] == 0 and corrections["round_trip_p50_ms"] > 0
    assert corrections["generate_ms_per_correction"] > 0


def test_each_request_names_the_click_it_was_made_at() -> None:
    """Requests carry the device's click count; a device's k-th click asks with the
    hidden states of the clicks of its mini-batch up to it."""
    def build() -> SCN:
        torch.manual_seed(0)
        return SCN(n_items=40, dim=8, heads=2, mini_batch=3, correction=True)

    registry = ModelRegistry()
    processor = TTTProcessor(build, corrected=True)
    processor.on_release(registry.publish("cocorrrec", build().state_dict()), registry)
    service = CorrectionService(build, registry, "cocorrrec")
    seen: list = []
    processor.responder = lambda requests: seen.extend(requests) or service.respond(requests)
    table = DeviceStateTable(processor.state_spec, 2)
    for batch in _click_batches([list(range(8)), list(range(5))], [4, 9]):
        new_rows, _ = processor(table.gather(batch.devices), batch)
        table.scatter(batch.devices, new_rows)
    for device, n in ((0, 8), (1, 5)):
        mine = [r for r in seen if r.device == device]
        assert [r.position for r in mine] == list(range(n))
        assert [len(r.payload) // (8 * 2) for r in mine] == [k % 3 + 1 for k in range(n)]


@pytest.mark.parametrize("correction", [False, True])
def test_every_click_is_scored_with_the_output_after_the_clicks_before_it(correction: bool):
    """Predict-before-update, click by click: the device scores click t with the
    (corrected) user vector the whole-sequence model gives after clicks 1..t-1."""
    def build() -> SCN:
        torch.manual_seed(0)
        return SCN(n_items=40, dim=16, heads=4, mini_batch=4, correction=correction)

    registry = ModelRegistry()
    processor = TTTProcessor(build, correction)
    processor.on_release(registry.publish("m", build().state_dict()), registry)
    if correction:
        processor.responder = CorrectionService(build, registry, "m").respond
    items = np.random.default_rng(1).integers(0, 40, 23)
    table = DeviceStateTable(processor.state_spec, 1)
    scores = []
    for lo, hi in [(0, 5), (5, 6), (6, 23)]:
        events = EventBatch(np.arange(lo, hi), np.zeros(hi - lo, np.int64), items[lo:hi],
                            np.arange(lo, hi), np.full(hi - lo, CLICK, np.int8))
        batch = DeviceBatch.build(events, np.ones(hi - lo, bool),
                                  np.tile(np.arange(40), (hi - lo, 1)))
        new_rows, out = processor(table.gather(batch.devices), batch)
        table.scatter(batch.devices, new_rows)
        scores.append(out.scores)
    model = build().eval()
    with torch.no_grad():
        user = model.outputs(torch.from_numpy(items[None] + 1))[0]
        reference = (user @ model.item_embedding.weight[1:].T).numpy()
    np.testing.assert_allclose(np.concatenate(scores)[1:], reference[:-1],
                               atol=1e-4 if correction else 1e-5)


@pytest.mark.integration
def test_a_device_serves_on_when_no_correction_comes_back(services) -> None:
    """No correction server: the responder gives up after its timeout, counts the
    requests as unanswered, and the processor serves its own vectors."""
    from dcrec.streams.correction_transport import KafkaResponder
    from dcrec.streams.topics import create_topics
    from kafka import KafkaProducer

    create_topics(services.broker.url, KafkaRuntimeSettings(), namespace="no-server")
    producer = KafkaProducer(bootstrap_servers=services.broker.url)
    responder = KafkaResponder(
        services.broker.url, "no-server", 4,
        lambda t, v, k, p, h: producer.send(t, v, key=k, partition=p), producer.flush, 0.3)

    def build() -> SCN:
        torch.manual_seed(0)
        return SCN(n_items=40, dim=8, heads=2, mini_batch=3, correction=True)

    registry = ModelRegistry()
    processor = TTTProcessor(build, corrected=True, responder=responder)
    processor.on_release(registry.publish("m", build().state_dict()), registry)
    alone = TTTProcessor(build, corrected=False)
    alone.on_release(registry.latest("m"), registry)
    batch = _click_batches([[1, 2, 3, 4], [5, 6]], [])[0]
    state, out = processor(DeviceStateTable(processor.state_spec, 2).gather(batch.devices),
                           batch)
    _, out_alone = alone(DeviceStateTable(alone.state_spec, 2).gather(batch.devices), batch)
    round_trips, counters = responder.take_stats()
    assert len(round_trips) == 0 and counters["correction_timeouts"] == 6
    assert out.requests == 6 and not state["corrected"].any()
    np.testing.assert_array_equal(out.scores, out_alone.scores)
    responder.close()
    producer.close()
