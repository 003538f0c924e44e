"""IntellectReq: the agent model (labels from history, the DM's uncertainty, MRS) and
the presets on the stream (bounds, budgets, the service, the threshold controller)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dcrec.models.intellectreq import (
    DistributionMapper,
    RequestAgentModel,
    mis_recommendation_label,
)
from dcrec.replay.driver import run_replay
from dcrec.replay.request_curve import aggregate, markdown, recovered_gain
from dcrec.state.registry import ModelRegistry
from dcrec.streams.intellectreq_pipeline import (
    ParameterService,
    ThresholdController,
    flatten,
    measured_capacity,
    unflatten,
    window_after,
)
from dcrec.streams.schema import ParamRequest

from dcrec.config import ReplayConfig, WorldSettings


def test_the_label_says_whether_the_stale_parameters_rank_as_well_as_fresh_ones() -> None:
    """Per row the click (column 0) against 4 negatives: ½ where stale and fresh rank it
    alike, below where the fresh ones rank it higher (asking pays), above where the
    stale ones do."""
    stale = torch.tensor([[2.0, 1, 0, 3, 4], [2.0, 1, 0, 3, 4], [2.0, 1, 0, 3, 4]])
    fresh = torch.tensor([[5.0, 1, 0, 6, 7], [5.0, 1, 0, 3, 4], [0.5, 1, 0, 3, 4]])
    # stale: the click above 2 of 4; fresh: above 2, above 4, above 1
    assert mis_recommendation_label(stale, fresh).tolist() == [0.5, 0.25, 0.625]


def test_uncertainty_is_the_spread_across_prior_samples() -> None:
    """Eq. 18: a prior with (next to) no spread gives (next to) no uncertainty; a wider
    one far more."""
    torch.manual_seed(0)
    dm = DistributionMapper(dim=8, latent=4)
    e = torch.randn(5, 8)
    with torch.no_grad():
        dm.prior[-1].weight.zero_()
        dm.prior[-1].bias.zero_()
        dm.prior[-1].bias[4:] = -30.0      # log-variance, clamped at -8: σ ≈ 0.018
        noise = torch.randn(200, 4)
        narrow = dm.uncertainty(e, noise)
        dm.prior[-1].bias[4:] = 0.0        # σ = 1
        wide = dm.uncertainty(e, noise)
    assert (narrow < 1e-3).all() and (wide > 1000 * narrow).all()


def test_the_dm_learns_the_next_item_and_its_kl_stays_finite() -> None:
    torch.manual_seed(0)
    dm = DistributionMapper(dim=8, latent=4)
    e, items = torch.randn(64, 8), torch.randn(10, 8)
    pos = torch.randint(0, 10, (64,))
    targets = items[torch.stack([pos, (pos + 3) % 10], dim=1)]
    labels = torch.tensor([[1.0, 0.0]]).expand(64, 2)
    optimizer = torch.optim.Adam(dm.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        loss = dm.loss(e, items[pos], targets, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0] and all(map(lambda x: x == x, losses))


def _fit_mrs(agent: RequestAgentModel, then: torch.Tensor, now: torch.Tensor,
             since: torch.Tensor, still_right: torch.Tensor,
             drift: torch.Tensor | None = None) -> None:
    """200 Adam steps of MRS on ``still_right`` labels."""
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-2)
    for _ in range(200):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            agent.mrs_logit(then, now, since, drift), still_right)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_mrs_is_a_probability_and_learns_which_devices_drifted() -> None:
    """Trained on pairs labelled by Eq. 8, MRS is high where the state did not move
    and low where it did (so the moved devices request)."""
    torch.manual_seed(0)
    agent = RequestAgentModel(dim=8, samples=4)
    then = torch.randn(256, 8)
    moved = torch.rand(256) < 0.5
    now = torch.where(moved[:, None], torch.randn(256, 8), then + 0.01 * torch.randn(256, 8))
    still_right = (~moved).float()
    since = torch.ones(256)
    _fit_mrs(agent, then, now, since, still_right)
    with torch.no_grad():
        mrs = agent.mrs(then, now, since)
    assert ((mrs > 0) & (mrs < 1)).all()
    assert mrs[~moved].mean() > 0.8 and mrs[moved].mean() < 0.2


def test_mrs_reads_how_many_clicks_old_the_parameters_are() -> None:
    """The same two codes, parameters 1 or 2 clicks old still right, 8 or more not: MRS
    tells them apart by the clicks since the parameters' window alone."""
    torch.manual_seed(0)
    agent = RequestAgentModel(dim=8, samples=4)
    then = torch.randn(256, 8)
    now = then + 0.01 * torch.randn(256, 8)
    since = torch.where(torch.rand(256) < 0.5, torch.randint(1, 3, (256,)),
                        torch.randint(8, 50, (256,)))
    still_right = (since < 3).float()
    _fit_mrs(agent, then, now, since, still_right)
    with torch.no_grad():
        fresh = agent.mrs(then, now, torch.ones(256))
        stale = agent.mrs(then, now, torch.full((256,), 30))
    assert fresh.mean() > 0.8 and stale.mean() < 0.2


def test_an_mrd_reading_drift_tells_devices_apart_by_d_alone() -> None:
    """The same codes and clicks since, parameters still right where the clicks since
    stayed near their window (small D) and not where they left it: the agent that reads
    D learns it; one that does not is not given D."""
    torch.manual_seed(0)
    agent = RequestAgentModel(dim=8, samples=4, reads_drift=True)
    then = torch.randn(256, 8)
    now, since = then.clone(), torch.full((256,), 3)
    left = torch.rand(256) < 0.5
    drift = torch.where(left, 4.0 + torch.rand(256), 0.2 * torch.rand(256))
    _fit_mrs(agent, then, now, since, (~left).float(), drift)
    with torch.no_grad():
        mrs = agent.mrs(then, now, since, drift)
    assert mrs[~left].mean() > 0.8 and mrs[left].mean() < 0.2
    with pytest.raises(ValueError, match="drift statistic"):
        agent.mrs(then, now, since)
    with pytest.raises(ValueError, match="drift statistic"):
        RequestAgentModel(dim=8).mrs(then, now, since, drift)


def test_the_drift_of_an_mrd_pair_is_the_devices_d() -> None:
    """A hand-built pair: D of the window's ``since`` newest clicks against the window
    ``gap`` clicks earlier, as a device holding those parameters computes it; with the
    generic parameters (gap past the window) against nothing."""
    from dcrec.models.request_baselines import window_drift
    from dcrec.streams.intellectreq_pipeline import pair_drift

    embedding = np.arange(20, dtype=np.float32).reshape(10, 2)
    windows = np.array([[1, 2, 3, 4], [5, 6, 0, 0]])
    lengths, gap = np.array([4, 2]), np.array([1, 5])
    since = np.minimum(gap, lengths)
    drift = pair_drift(embedding, windows, lengths, gap, since, chunk=1)
    newest, then = embedding[[4]].mean(0), embedding[[1, 2, 3]].mean(0)
    generic = embedding[[5, 6]].mean(0)
    expected = window_drift(np.stack([newest, generic]), np.array([1, 2]),
                            np.stack([then, np.zeros(2)]), np.array([3, 0]))
    np.testing.assert_allclose(drift, expected)
    assert drift[0] == pytest.approx(np.linalg.norm(newest - then) * np.sqrt(3 / 4))


REPLAY = ReplayConfig(dataset="world", method="ec-cdr", seed=0, request_budget=0.2,
                      world=WorldSettings(users=120, items=150, events=6000))


def test_the_bounds_request_at_every_click_or_never() -> None:
    always = run_replay(REPLAY)
    never = run_replay(REPLAY.model_copy(update={"method": "ec-cdr-static"}))
    clicks = always["events"]["clicks"]
    assert always["comm"]["requests"] == clicks == always["cloud_service"]["answered"]
    assert always["comm"]["bytes_up"] > 0
    assert never["comm"]["requests"] == 0 and never["comm"]["bytes_up"] == 0
    zero = run_replay(REPLAY.model_copy(update={"request_budget": 0.0}))
    assert zero["comm"]["requests"] == 0 and zero["metrics"] == never["metrics"]
    assert always["perf"]["state_bytes_per_device"] <= 8 * 1024
    # asking at every click, each click is served by parameters from the window just
    # before it, but a device's first after a release (the release's generic ones)
    evaluated = always["events"]["evaluated"]
    age = always["parameter_age"]
    assert sum(age.values()) == evaluated and 0 < age["generic"] < age["1"]
    assert age["generic"] + age["1"] == evaluated
    assert never["parameter_age"]["generic"] == evaluated


@pytest.mark.parametrize("method", ["random", "intellectreq", "intellectreq-drift", "drift",
                                    "lof", "ocsvm"])
def test_the_budgeted_agents_request_a_share_of_clicks(method: str) -> None:
    report = run_replay(REPLAY.model_copy(update={"method": method}))
    rate = report["comm"]["request_rate"]
    assert 0.0 < rate < 0.6


def test_the_random_agents_draws_are_independent_across_a_devices_clicks() -> None:
    """``random`` asks at each click with the budget's probability, whatever it did at
    the click before: no runs of requests, no long silences (a weak hash gave requests
    every 4th click in bursts)."""
    from dcrec.streams.intellectreq_pipeline import request_draw

    clicks = np.tile(np.arange(2000), 300)
    devices = np.repeat(np.arange(300), 2000)
    asks = (request_draw(devices, clicks, seed=3) < 0.1).reshape(300, 2000)
    assert asks.mean() == pytest.approx(0.1, abs=0.005)
    after_an_ask = asks[:, 1:][asks[:, :-1]].mean()
    assert after_an_ask == pytest.approx(0.1, abs=0.01)
    for lag in (2, 4, 8):
        assert asks[:, lag:][asks[:, :-lag]].mean() == pytest.approx(0.1, abs=0.01)
    assert not np.array_equal(asks[0], asks[1])   # devices do not ask in step


def _click_windows(seed: int, n: int, width: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random windows of embedded clicks ``[n, width, dim]`` and their lengths."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, width, dim)).astype(np.float32), rng.integers(1, width + 1, n)


def test_lof_of_the_newest_click_is_scikit_learns() -> None:
    """The batched LOF the ``lof`` agent computes per device equals scikit-learn's
    LocalOutlierFactor fitted on each window alone (k = min(2, length − 1))."""
    from dcrec.models.request_baselines import newest_click_lof
    from sklearn.neighbors import LocalOutlierFactor

    windows, lengths = _click_windows(1, 60, 12, 5)
    ours = newest_click_lof(windows, lengths)
    for row, length in enumerate(lengths):
        if length < 2:
            assert ours[row] == -1.0
            continue
        lof = LocalOutlierFactor(n_neighbors=min(2, length - 1)).fit(
            windows[row, :length].astype(np.float64))
        assert ours[row] == pytest.approx(lof.negative_outlier_factor_[-1], rel=1e-9)
    # and alone, a row gives the bits it gave in its batch
    assert newest_click_lof(windows[7:8], lengths[7:8])[0] == ours[7]


def test_ocsvm_of_the_newest_click_is_scikit_learns_bit_for_bit() -> None:
    """The ``ocsvm`` agent calls libsvm as scikit-learn's OneClassSVM does, without its
    checks: the decision value at the newest click equals OneClassSVM's exactly (and
    fails the day scikit-learn changes how it calls libsvm)."""
    from dcrec.models.request_baselines import newest_click_ocsvm
    from sklearn.svm import OneClassSVM

    windows, lengths = _click_windows(2, 40, 50, 8)
    ours = newest_click_ocsvm(windows, lengths)
    for row, length in enumerate(lengths):
        if length < 2:
            assert ours[row] == 0.0
            continue
        window = windows[row, :length].astype(np.float64)
        svm = OneClassSVM(kernel="rbf", gamma=1 / 8, nu=0.5).fit(window)
        assert ours[row] == svm.decision_function(window[-1:])[0]


def test_generated_parameters_round_trip_through_their_flat_form() -> None:
    torch.manual_seed(0)
    from dcrec.models.ec_cdr import ECCDR

    model = ECCDR(n_items=20, dim=8)
    params = model.generate(torch.tensor([[3, 4, 0]]), torch.tensor([2]))
    again = unflatten(flatten(params), model.generator.layer_sizes)
    for (W, b), (W2, b2) in zip(params, again, strict=True):
        torch.testing.assert_close(W, W2)
        torch.testing.assert_close(b, b2)


def test_a_window_after_a_click_drops_the_oldest_when_full() -> None:
    windows = np.array([[1, 2, 3], [4, 0, 0]], np.int32)
    after, lengths = window_after(windows, np.array([3, 1], np.int32), np.array([9, 8]))
    assert after.tolist() == [[2, 3, 9], [4, 8, 0]] and lengths.tolist() == [3, 2]


def test_the_service_answers_windows_and_refuses_what_it_cannot() -> None:
    from dcrec.models.intellectreq import IntellectReqModel

    def build() -> IntellectReqModel:
        torch.manual_seed(0)
        return IntellectReqModel(n_items=20, dim=8)

    registry = ModelRegistry()
    version = registry.publish("ir", build().state_dict()).version
    service = ParameterService(build, registry, "ir", max_len=5)
    good = np.array([3, 4, 5], "<i4").tobytes()
    answers = service.respond([
        ParamRequest(device=1, ts=0, kind="params", summary=good, version=version),
        ParamRequest(device=2, ts=0, kind="params", summary=good[:-1], version=version),
        ParamRequest(device=3, ts=0, kind="params", summary=np.array([99], "<i4").tobytes(),
                     version=version),
        ParamRequest(device=4, ts=0, kind="params", summary=good * 2, version=version),
        ParamRequest(device=5, ts=0, kind="correction", payload=good, version=version),
    ])
    assert answers[0] is not None and answers[1:] == [None] * 4
    assert len(answers[0].payload) == 2 * (2 * (8 * 8 + 8))
    assert service.take_load() == 5 and service.take_load() == 0


def test_the_threshold_tightens_under_load_and_relaxes_when_it_falls() -> None:
    controller = ThresholdController(budget=0.1)
    controller.observe(np.linspace(0, 1, 1001))
    first = controller.update(requests=10, clicks=100, seconds=86400, now=0).threshold
    tighter = controller.update(requests=40, clicks=100, seconds=86400, now=1).threshold
    assert tighter < first
    looser = controller.update(requests=1, clicks=100, seconds=86400, now=2).threshold
    assert looser > tighter
    # a cloud that can answer 1 request per hour affords 24 of 1,000 clicks a day
    capped = ThresholdController(budget=0.5, capacity=1 / 3600)
    assert capped.affordable(clicks=1000, seconds=86400) == pytest.approx(0.024)


def test_the_measured_service_time_caps_the_affordable_rate() -> None:
    # 200 answers took 2 s of service time: 100 per busy second; a day of the stream
    # replayed in 8.64 s of wall time: an event-time second is 1e-4 s, so 0.01/s
    measured = measured_capacity(200, 2.0, wall_seconds=8.64, stream_seconds=86400)
    assert measured == pytest.approx(0.01)
    controller = ThresholdController(budget=0.5, capacity=1.0)
    # 864 requests affordable a day against 10,000 clicks: 8.64%, under the budget and
    # under the configured capacity (86,400 a day)
    assert controller.affordable(10_000, 86400, measured) == pytest.approx(0.0864)
    assert controller.affordable(10_000, 86400) == 0.5
    controller.observe(np.linspace(0, 1, 1001))
    event = controller.update(requests=0, clicks=10_000, seconds=86400, now=0,
                              measured=measured)
    assert event.capacity == pytest.approx(0.0864)
    assert measured_capacity(0, 0.0, 1.0, 1.0) is None   # nothing answered: no measure


def test_the_door_holds_to_the_measured_capacity_when_it_is_on() -> None:
    """With --measured-capacity the door admits no more than the service was measured to
    answer (here 1 answer per busy second, a day of stream in a fraction of a second of
    wall time: far below the configured capacity), and the configured capacity again
    once nothing was measured."""
    from dcrec.streams.event_batch import EventBatch
    from dcrec.streams.presets import PresetContext, build_pipeline

    ctx = PresetContext(n_users=3, n_items=30, seed=0, request_capacity=1.0,
                        measured_capacity=True)
    pipeline = build_pipeline("intellectreq", ctx)
    cloud, door = pipeline.cloud, pipeline.service.admission
    events = EventBatch(np.arange(9), np.repeat([0, 1, 2], 3), np.arange(9) % 30,
                        np.arange(9), np.ones(9, np.int8))
    cloud.observe(events)
    cloud.service.take_load = lambda: 100
    cloud.service.take_busy_seconds = lambda: 100.0
    cloud.run(86400)
    assert 0 < door.capacity < 1e-3 < door.configured == 1.0
    cloud.observe(EventBatch(np.arange(9, 12), np.array([0, 1, 2]), np.array([3, 4, 5]),
                             np.full(3, 86500), np.ones(3, np.int8)))
    cloud.service.take_load = lambda: 0
    cloud.run(2 * 86400)
    assert door.capacity == 1.0


@pytest.mark.integration
def test_the_kafka_runtime_runs_intellectreq_with_the_local_metrics(services) -> None:
    """Requests and parameters travel on param.requests / param.responses, thresholds
    reach the workers at the local runtime's slice, and the results are the local
    runtime's."""
    from dcrec.replay.driver import open_source
    from dcrec.replay.kafka_replay import run_kafka_replay

    from dcrec.config import KafkaRuntimeSettings

    config = REPLAY.model_copy(update={"method": "intellectreq"})
    local = run_replay(config)
    kafka = run_kafka_replay(config, open_source(config), KafkaRuntimeSettings(
        broker=services.broker.url, redis=services.redis.url, workers=2), timeout=900)
    for name, value in local["metrics"].items():
        assert kafka["metrics"][name] == pytest.approx(value, abs=1e-6), name
    for name in ("requests", "bytes_up", "bytes_down", "releases", "cloud_jobs"):
        assert kafka["comm"][name] == local["comm"][name], name
    assert kafka["parameter_age"] == local["parameter_age"]
    assert 0 < local["comm"]["requests"] < local["events"]["clicks"]


def test_mrd_pairs_hold_the_window_gap_clicks_earlier_and_label_each_pair() -> None:
    """A hand-built case: the stale window is the current one without its last ``gap``
    clicks, and the label compares how the stale and the fresh parameters (from the
    current window) rank the click against the negatives."""
    from dcrec.models.ec_cdr import ECCDR
    from dcrec.streams.intellectreq_pipeline import mrd_pairs

    torch.manual_seed(0)
    rec = ECCDR(n_items=20, dim=8)
    windows = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    lengths, gap = torch.tensor([4, 2]), torch.tensor([2, 5])
    candidates = torch.tensor([[9, 11, 12], [10, 13, 14]])
    pairs = mrd_pairs(rec, windows, lengths, torch.tensor([9, 10]), gap,
                      torch.tensor([[11, 12], [13, 14]]))
    with torch.no_grad():
        then, then_len = torch.tensor([[3, 4, 0, 0], [0, 0, 0, 0]]), torch.tensor([2, 0])
        expected_then = rec.user_state(then, then_len)
        stale = rec.score(windows, lengths, candidates, rec.generate(then, then_len))
        fresh = rec.score(windows, lengths, candidates, rec.generate(windows, lengths))
    torch.testing.assert_close(pairs.u_then, expected_then)
    torch.testing.assert_close(pairs.still_right, mis_recommendation_label(stale, fresh))
    assert pairs.labels[:, 0].tolist() == [1.0, 1.0] and pairs.labels[:, 1:].sum() == 0


def test_the_threshold_for_budget_q_is_the_q_quantile_of_the_mrs_sample() -> None:
    sample = np.random.default_rng(0).random(5000)
    for q in (0.1, 0.3, 0.9):
        controller = ThresholdController(budget=q)
        controller.observe(sample)
        # the cloud saw exactly the affordable rate: q stays the budget
        event = controller.update(requests=int(q * 1000), clicks=1000, seconds=86400, now=0)
        assert event.threshold == pytest.approx(np.quantile(sample, q))


def test_a_device_never_requests_when_the_threshold_is_below_every_mrs() -> None:
    from dcrec.state.device_state import DeviceStateTable
    from dcrec.streams.event_batch import EventBatch
    from dcrec.streams.presets import PresetContext, build_pipeline
    from dcrec.streams.processor import DeviceBatch

    pipeline = build_pipeline("intellectreq", PresetContext(n_users=3, n_items=30, seed=0))
    processor = pipeline.processor
    processor.threshold = -1.0  # MRS is a probability
    events = EventBatch(np.arange(9), np.repeat([0, 1, 2], 3), np.arange(9),
                        np.arange(9), np.ones(9, np.int8))
    batch = DeviceBatch.build(events, np.zeros(9, bool), np.zeros((0, 2), np.int64))
    _, out = processor(DeviceStateTable(processor.state_spec, 3).gather(batch.devices), batch)
    assert out.requests == 0
    processor.threshold = 2.0   # above every MRS: every click asks
    _, out = processor(DeviceStateTable(processor.state_spec, 3).gather(batch.devices), batch)
    assert out.requests == 9


@pytest.mark.parametrize("method", ["intellectreq", "intellectreq-drift", "lof", "ocsvm"])
def test_bench_times_one_device_request_decision(method: str) -> None:
    from dcrec.replay.bench import edge_decision_ms

    p50, p99 = edge_decision_ms(REPLAY.model_copy(update={"method": method}), repeats=20)
    assert 0 < p50 <= p99
    with pytest.raises(ValueError, match="no edge decision"):
        edge_decision_ms(REPLAY.model_copy(update={"method": "random"}), repeats=1)


@pytest.mark.parametrize("method", ["intellectreq", "intellectreq-drift", "drift", "lof",
                                    "ocsvm"])
def test_the_cloud_computes_each_devices_mrs_as_the_device_did(method: str) -> None:
    """The threshold's sample: for every click of a release's interval the cloud
    rebuilds the MRS the device's agent computed — against the window of the device's
    latest answered request, across clicks that did not ask — here checked on the clicks
    that asked (their requests carry the device's value)."""
    from dcrec.state.click_history import occurrence
    from dcrec.state.device_state import DeviceStateTable
    from dcrec.streams.event_batch import EventBatch
    from dcrec.streams.presets import PresetContext, build_pipeline
    from dcrec.streams.processor import DeviceBatch

    pipeline = build_pipeline(method, PresetContext(n_users=4, n_items=30, seed=0))
    processor, cloud = pipeline.processor, pipeline.cloud
    asked: dict[tuple[int, int], float] = {}
    answer = processor.responder

    def responder(requests: list[ParamRequest]) -> list:
        asked.update({(r.device, r.position): r.mrs for r in requests})
        return answer(requests)

    processor.responder = responder
    table = DeviceStateTable(processor.state_spec, 4)
    rng = np.random.default_rng(0)
    start, rebuilt = 0, {}
    for threshold, n in ((2.0, 12), (-99.0, 8), (2.0, 12)):   # ask, skip, ask again
        users = rng.integers(0, 4, n)
        idx = np.arange(start, start + n)
        events = EventBatch(idx, users, rng.integers(0, 30, n), idx, np.ones(n, np.int8))
        start += n
        processor.threshold = threshold
        batch = DeviceBatch.build(events, np.zeros(n, bool), np.zeros((0, 2), np.int64))
        state, _ = processor(table.gather(batch.devices), batch)
        table.scatter(batch.devices, state)
        cloud.observe(events)
    windows, lengths, targets, users_ = cloud.windows.take()    # the job's samples
    positions = occurrence(users_) + 1
    mrs = cloud._device_mrs(windows, lengths, targets, users_)
    rebuilt.update({(int(u), int(p)): float(m)
                    for u, p, m in zip(users_, positions, mrs, strict=True)})
    shared = set(asked) & set(rebuilt)
    assert len(shared) >= 15
    for key in shared:
        assert rebuilt[key] == pytest.approx(asked[key], abs=1e-5), key


def _surge_log(path) -> None:
    """A day of clicks: 100 an hour, ten times as many from 08:00 to 14:00, then 100."""
    rng = np.random.default_rng(0)
    rows = ["user,item,timestamp"]
    for hour in range(24):
        n = 1000 if 8 <= hour < 14 else 100
        for ts in np.sort(rng.integers(hour * 3600, (hour + 1) * 3600, n)):
            user = int(rng.integers(0, 40))
            rows.append(f"u{user},i{(user % 8) * 10 + int(rng.integers(0, 10))},{ts}")
    path.write_text("\n".join(rows) + "\n")


def _check_surge(report: dict, capacity_per_hour: int, queue: int) -> None:
    """What reached the generator stayed within 110% of capacity in every hour, the
    queue within its bound, requests were shed in the surge, the threshold held the
    demand back within the surge's first hours, and relaxed after it. (The threshold is
    compared as the share of the devices' MRS it lets through: each release retrains
    the agent, so raw MRS values of different hours are on different scales.)"""
    timeline = [t for t in report["thresholds"] if t["seconds"] > 0]
    assert len(timeline) >= 20
    for t in timeline:
        assert t["admitted"] <= 1.1 * capacity_per_hour * t["seconds"] / 3600, t
    service = report["cloud_service"]
    assert service["shed"] > 0 and 0 < service["max_queue"] <= queue == service["queue_bound"]
    surge = [t for t in timeline if 10 * 3600 <= t["ts"] % 86400 <= 14 * 3600]
    after = [t for t in timeline if t["ts"] % 86400 >= 17 * 3600]
    assert max(t["level"] for t in surge) < 0.5 * min(t["level"] for t in after)
    assert max(t["requests"] for t in surge) < 250   # of 1,000 clicks an hour


SURGE = {"method": "intellectreq", "request_budget": 1.0, "request_capacity": 60 / 3600,
         "request_queue": 5, "cloud_interval": 3600, "warmup": 1, "n_negatives": 20}


def test_a_surge_is_shed_at_the_door_and_the_threshold_relaxes_after_it(tmp_path) -> None:
    _surge_log(tmp_path / "surge.csv")
    report = run_replay(ReplayConfig(dataset=str(tmp_path / "surge.csv"), **SURGE))
    _check_surge(report, capacity_per_hour=60, queue=5)


@pytest.mark.integration
def test_a_surge_on_the_kafka_runtime_is_held_to_capacity(services, tmp_path) -> None:
    """The same surge through real topics: requests cross param.requests to the cloud
    process, whose door admits them; thresholds travel on control.threshold."""
    from dcrec.replay.driver import open_source
    from dcrec.replay.kafka_replay import run_kafka_replay

    from dcrec.config import KafkaRuntimeSettings

    _surge_log(tmp_path / "surge.csv")
    config = ReplayConfig(dataset=str(tmp_path / "surge.csv"), **SURGE)
    report = run_kafka_replay(config, open_source(config), KafkaRuntimeSettings(
        broker=services.broker.url, redis=services.redis.url, workers=2), timeout=900)
    _check_surge(report, capacity_per_hour=60, queue=5)


def test_parameters_expire_with_the_release_that_generated_them() -> None:
    """A new release's static layers do not fit parameters an older generator made: a
    device moving to it serves with the new generic parameters until it asks again."""
    from dcrec.state.device_state import DeviceStateTable
    from dcrec.streams.event_batch import EventBatch
    from dcrec.streams.presets import PresetContext, build_pipeline
    from dcrec.streams.processor import DeviceBatch

    pipeline = build_pipeline("ec-cdr", PresetContext(n_users=2, n_items=30, seed=0))
    processor, registry = pipeline.processor, pipeline.registry
    table = DeviceStateTable(processor.state_spec, 2)
    events = EventBatch(np.arange(4), np.array([0, 1, 0, 1]), np.array([3, 4, 5, 6]),
                        np.arange(4), np.ones(4, np.int8))
    batch = DeviceBatch.build(events, np.zeros(4, bool), np.zeros((0, 2), np.int64))
    state, _ = processor(table.gather(batch.devices), batch)
    assert state["has_params"].tolist() == [1, 1]
    table.scatter(batch.devices, state)
    processor.on_release(registry.publish("ec-cdr", processor.model.state_dict()), registry)
    processor.policy = "never"
    state, _ = processor(table.gather(batch.devices), batch)
    assert state["has_params"].tolist() == [0, 0] and not state["code"].any()


def test_request_costs_count_the_wire_bytes_and_scale_with_the_request_rate() -> None:
    from dcrec.models.intellectreq import IntellectReqModel
    from dcrec.replay.request_costs import extrapolate, request_costs

    costs = request_costs(n_items=40, max_len=10, dim=8, repeats=20)
    model = IntellectReqModel(40, 8)
    n_generated = sum(i * o + o for i, o in model.rec.generator.layer_sizes)
    # float16 parameters down, int32 ids up, each in its envelope of a few dozen bytes
    assert 2 * n_generated < costs["bytes_down"] < 2 * n_generated + 100
    assert 4 * 10 < costs["bytes_up"] < 4 * 10 + 100
    assert costs["cloud_params"] == sum(p.numel() for p in model.rec.generator.parameters())
    assert costs["generate_flops"] > 0 and costs["decision_flops"] > 0
    assert set(costs["baseline_decision_ms"]) == {"lof", "ocsvm"}
    assert all(0 < p50 <= p99 for p50, p99 in costs["baseline_decision_ms"].values())
    rows = extrapolate(costs, 1000.0, {"all": 1.0, "tenth": 0.1, "none": 0.0})
    assert rows[0]["down_bytes_per_second"] == pytest.approx(1000 * costs["bytes_down"])
    assert rows[1]["cloud_flops_per_second"] == pytest.approx(
        0.1 * rows[0]["cloud_flops_per_second"])
    assert rows[2]["up_bytes_per_second"] == 0


def _point(method: str, budget: float | None, mean: float) -> dict:
    return {"method": method, "budget": budget, "seeds": 3, "request_rate": budget or 0.0,
            "mean": mean, "std": 0.0}


def test_the_curve_table_says_what_share_of_ec_cdrs_gain_each_point_recovers() -> None:
    points = [_point("ec-cdr", None, 0.40), _point("ec-cdr-static", None, 0.30),
              _point("intellectreq", 0.3, 0.38), _point("random", 0.3, 0.32)]
    assert recovered_gain(points, "intellectreq", 0.3) == pytest.approx(0.8)
    table = markdown(points, "t")
    assert "| intellectreq | 0.3 | 0.300 | 0.3800 ± 0.0000 | 80% |" in table
    assert "| random | 0.3 | 0.300 | 0.3200 ± 0.0000 | 20% |" in table
    level = [{**p, "mean": 0.3} for p in points]   # nothing to recover: no share
    assert "| intellectreq | 0.3 | 0.300 | 0.3000 ± 0.0000 | — |" in markdown(level, "t")
    assert "gain" not in markdown(points[2:], "t")   # without the bounds, no column


def test_the_curve_pairs_each_point_with_never_asking_on_its_seed() -> None:
    def row(method: str, seed: int, ndcg: float) -> dict:
        return {"method": method, "budget": None if method.startswith("ec-") else 0.3,
                "seed": seed, "request_rate": 0.3, "metrics": {"NDCG@10": ndcg}}

    # seeds far apart, the agent a steady 0.01 above never asking on each
    rows = [row("ec-cdr-static", 0, 0.30), row("ec-cdr-static", 1, 0.50),
            row("random", 0, 0.31), row("random", 1, 0.51)]
    static, agent = aggregate(rows)
    assert agent["std"] == pytest.approx(np.std([0.31, 0.51], ddof=1))
    assert agent["gain"] == pytest.approx(0.01) and agent["gain_std"] == pytest.approx(0.0)
    assert static["gain"] == 0.0
    # a seed without its never-asking run: no paired gain
    assert "gain" not in aggregate(rows[1:])[1]


def test_a_point_on_fewer_seeds_is_held_against_the_bounds_on_its_own_seeds() -> None:
    """A grid tabled as far as it has run: an agent measured on seed 1 only recovers its
    share of ec-cdr's gain on seed 1, not of the bounds' means over seeds 0 and 1."""
    def row(method: str, seed: int, ndcg: float) -> dict:
        return {"method": method, "budget": None if method.startswith("ec-") else 0.3,
                "seed": seed, "request_rate": 0.3, "metrics": {"NDCG@10": ndcg}}

    rows = [row("ec-cdr", 0, 0.40), row("ec-cdr-static", 0, 0.30),
            row("ec-cdr", 1, 0.60), row("ec-cdr-static", 1, 0.50), row("random", 1, 0.58)]
    points = aggregate(rows)
    assert recovered_gain(points, "random", 0.3) == pytest.approx(0.8)
    table = markdown(points, "t")
    assert "| seeds |" in table and "| random | 0.3 | 0.300 | 0.5800 ± 0.0000 | 1 | 80% |" in table
