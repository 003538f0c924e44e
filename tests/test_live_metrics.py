"""The live metrics agree with the replay report; the timeline turns them into rates and
rolling windows, records them and reads recordings back; the dashboard's server answers
its routes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from dcrec.replay.dashboard import serve_dashboard
from dcrec.replay.driver import run_replay
from dcrec.replay.timeline import (
    LiveTimeline,
    RecordedTimeline,
    by_label,
    gauge,
    make_point,
    snapshot,
    this_process,
    total,
)
from dcrec.streams.live_metrics import exported_names
from prometheus_client import CollectorRegistry, Counter
from typer.testing import CliRunner

from dcrec.cli import app
from dcrec.config import DashboardSettings, ModelConfig, ReplayConfig, WorldSettings


def _busy_log(path, bad_rows=3) -> None:
    """Four hours of clicks by 30 users, 150 an hour, and a few malformed rows."""
    rng = np.random.default_rng(0)
    rows = ["user,item,timestamp"]
    for hour in range(4):
        for ts in np.sort(rng.integers(hour * 3600, (hour + 1) * 3600, 150)):
            user = int(rng.integers(0, 30))
            rows.append(f"u{user},i{(user % 6) * 10 + int(rng.integers(0, 10))},{ts}")
    rows[10:10] = ["u1,i2,not-a-time", ",i3,100", "u2,i4,-5"][:bad_rows]
    path.write_text("\n".join(rows) + "\n")


def _delta(after: dict, before: dict, name: str, **labels) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def test_a_local_replay_reports_to_the_metrics_what_it_reports_in_its_report(tmp_path):
    """IntellectReq under a capacity the demand exceeds: events, dead letters, requests,
    bytes, cloud jobs, the last threshold, the door's queue and shed requests, and the
    prequential quality over the whole run, as the report has them."""
    _busy_log(tmp_path / "log.csv")
    config = ReplayConfig(dataset=str(tmp_path / "log.csv"), method="intellectreq",
                          request_budget=0.5, request_capacity=60 / 3600, request_queue=4,
                          cloud_interval=3600, warmup=1, n_negatives=20,
                          model=ModelConfig(embedding_dim=8, epochs_per_job=1, max_len=20))
    before = snapshot(this_process())
    report = run_replay(config)
    after = snapshot(this_process())

    assert _delta(after, before, "dcrec_events_total", topic="events.click",
                  direction="in") == report["events"]["clicks"]
    assert _delta(after, before, "dcrec_events_total", topic="events.exposure",
                  direction="in") == report["events"]["exposures"]
    for reason, n in report["events"]["invalid_reasons"].items():
        assert _delta(after, before, "dcrec_dead_letters_total", reason=reason) == n
    assert report["events"]["invalid"] == 3
    comm = report["comm"]
    assert _delta(after, before, "dcrec_param_requests_total") == comm["requests"] > 0
    assert _delta(after, before, "dcrec_bytes_total", direction="up") == comm["bytes_up"]
    assert _delta(after, before, "dcrec_bytes_total", direction="down") == comm["bytes_down"]
    assert _delta(after, before, "dcrec_cloud_job_seconds_count") == comm["cloud_jobs"] > 0
    assert (_delta(after, before, "dcrec_events_total", topic="control.threshold",
                   direction="out") == len(report["thresholds"]))

    last = report["thresholds"][-1]
    assert gauge(after, "dcrec_request_threshold") == pytest.approx(last["threshold"])
    assert gauge(after, "dcrec_request_capacity") == pytest.approx(last["capacity"])
    assert gauge(after, "dcrec_request_threshold_level") == pytest.approx(last["level"])
    service = report["cloud_service"]
    assert gauge(after, "dcrec_cloud_queue_bound") == service["queue_bound"] == 4
    assert 0 <= gauge(after, "dcrec_cloud_queue_length") <= 4
    assert _delta(after, before, "dcrec_requests_shed_total") == service["shed"] > 0
    assert by_label(after, "dcrec_model_version", "model")  # versions of the run's models

    scored = _delta(after, before, "dcrec_scored_clicks_total", method="intellectreq")
    assert scored == report["events"]["evaluated"] > 0
    for metric in ("HR@10", "NDCG@10", "AUC"):
        mean = _delta(after, before, "dcrec_scored_quality_total", method="intellectreq",
                      metric=metric) / scored
        assert mean == pytest.approx(report["metrics"][metric], rel=1e-9)


def _snap(clicks: float, events: float, hr: float, requests: float = 0.0,
          capacity: float | None = None) -> dict:
    values = {("dcrec_events_total", (("direction", "in"), ("topic", "events.click"))): clicks,
              ("dcrec_events_total", (("direction", "in"), ("topic", "events.exposure"))):
                  events - clicks,
              ("dcrec_scored_clicks_total", (("method", "m"),)): clicks,
              ("dcrec_scored_quality_total", (("method", "m"), ("metric", "HR@10"))): hr,
              ("dcrec_param_requests_total", ()): requests}
    if capacity is not None:
        values[("dcrec_request_capacity", (("method", "m"),))] = capacity
    return values


def test_a_point_has_rates_between_samples_and_quality_over_the_recent_clicks():
    history = [(0.0, _snap(0, 0, 0), 0), (1.0, _snap(100, 500, 50), 100),
               (2.0, _snap(300, 1500, 100, requests=30), 300)]
    point = make_point(4.0, _snap(400, 2500, 190, requests=70, capacity=0.2), history,
                       window_clicks=250)
    assert point["events_per_second"] == pytest.approx((2500 - 1500) / 2.0)
    assert point["clicks"] == 400
    # the newest snapshot at least 250 clicks back is the one at t=1 (300 clicks since)
    assert point["quality"]["m"]["HR@10"] == pytest.approx((190 - 50) / 300)
    assert point["request_rate"] == pytest.approx(70 / 300)
    assert point["request_capacity"] == 0.2
    assert point["threshold"] is None  # no process has set it
    # fewer clicks than the window: everything since the first snapshot
    assert make_point(1.0, _snap(100, 500, 50), history[:1], 250)["quality"]["m"][
        "HR@10"] == pytest.approx(0.5)


def test_counters_add_up_over_processes_and_gauges_take_the_largest():
    def families(events: float, lag: float):
        registry = CollectorRegistry()
        Counter("dcrec_events", "", ["topic", "direction"], registry=registry).labels(
            "events.click", "in").inc(events)
        from prometheus_client import Gauge

        Gauge("dcrec_model_version", "", ["model"], registry=registry).labels("din").set(lag)
        return list(registry.collect())

    merged = snapshot([*families(3, 2), *families(4, 5)])
    assert total(merged, "dcrec_events_total", topic="events.click") == 7
    assert gauge(merged, "dcrec_model_version") == 5


def _counting_source():
    registry = CollectorRegistry()
    clicks = Counter("dcrec_events", "", ["topic", "direction"], registry=registry)
    return registry.collect, clicks.labels("events.click", "in")


def test_a_recording_is_read_as_it_grows_and_ends_finished(tmp_path):
    source, clicks = _counting_source()
    clicks.inc(5)  # before the timeline: not part of it
    path = tmp_path / "live" / "run.jsonl"
    timeline = LiveTimeline(DashboardSettings(interval=60), {"method": "m"}, [source], path)
    recorded = RecordedTimeline(path)
    clicks.inc(10)
    timeline.sample()
    view = recorded.view(0)
    assert view["status"] == "running" and view["info"]["method"] == "m"
    assert [p["clicks"] for p in view["points"]] == [10]
    with path.open("a") as out:  # a line still being written is not read yet
        out.write('{"point": {"t": 9')
    clicks.inc(5)
    assert recorded.view(view["next"])["points"] == []
    with path.open("a") as out:
        out.write(', "clicks": -1}}\n')
    timeline.finish({"metrics": {"HR@10": float("nan")}})
    view = recorded.view(1)
    assert [p["clicks"] for p in view["points"]] == [-1, 15]
    assert view["status"] == "finished" and view["summary"] == {"metrics": {"HR@10": None}}
    assert timeline.view(0)["status"] == "finished" and timeline.view(1)["next"] == 2


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_the_dashboard_serves_its_page_timeline_library_and_metrics():
    source, clicks = _counting_source()
    timeline = LiveTimeline(DashboardSettings(interval=60), {"method": "m"}, [source])
    server = serve_dashboard(timeline, DashboardSettings(port=0))
    try:
        assert server.url.startswith("http://127.0.0.1:")
        status, kind, body = _get(server.url + "/")
        assert status == 200 and kind.startswith("text/html")
        assert b'src="/plotly.min.js"' in body and b"/api/timeline" in body
        status, _, body = _get(server.url + "/plotly.min.js")
        assert status == 200 and len(body) > 1_000_000 and b"plotly" in body[:2000].lower()
        for k in range(3):
            clicks.inc(k + 1)
            timeline.sample()
        view = json.loads(_get(server.url + "/api/timeline?since=1")[2])
        assert [p["clicks"] for p in view["points"]] == [3, 6] and view["next"] == 3
        assert _get(server.url + "/api/timeline?since=x")[0] == 400
        status, kind, body = _get(server.url + "/metrics")
        assert status == 200 and kind.startswith("text/plain")
        assert b"process_cpu_seconds_total" in body
        assert _get(server.url + "/nothing")[0] == 404
    finally:
        server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url + "/", timeout=2)


def test_replay_dashboard_records_the_replay_and_dcrec_dashboard_serves_it(tmp_path,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, [
        "replay", "--dataset", "world", "--world-users", "40", "--world-items", "150",
        "--world-events", "2000", "--method", "popularity", "--quiet", "--dashboard",
        "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "dashboard: http://127.0.0.1:" in result.output
    (recording,) = (tmp_path / "runs" / "live").glob("world-popularity-local-*.jsonl")
    view = RecordedTimeline(recording).view(0)
    assert view["status"] == "finished" and view["info"]["method"] == "popularity"
    assert view["points"][-1]["events"] == 2000
    assert view["summary"]["metrics"]["HR@10"] > 0
    served = runner.invoke(app, ["dashboard", "--port", "0", "--stop-after", "0"])
    assert served.exit_code == 0, served.output
    assert recording.name in served.output


def test_every_metric_the_runtimes_record_is_exported():
    names = exported_names()
    for name in ("dcrec_events_total", "dcrec_dead_letters_total", "dcrec_consumer_lag",
                 "dcrec_batch_seconds_bucket", "dcrec_param_requests_total",
                 "dcrec_request_threshold", "dcrec_cloud_queue_length",
                 "dcrec_cloud_job_seconds_count", "dcrec_model_version",
                 "dcrec_scored_quality_total", "dcrec_run_info"):
        assert name in names


def _small_world(method: str) -> ReplayConfig:
    return ReplayConfig(dataset="world", method=method, n_negatives=20,
                        world=WorldSettings(users=60, items=80, events=6_000, clusters=4),
                        model=ModelConfig(embedding_dim=8, epochs_per_job=1),
                        cloud_interval="5d")


@pytest.mark.integration
def test_the_kafka_processes_serve_metrics_the_dashboard_samples(services):
    """Worker, cloud and replay process each record a /metrics address; a timeline
    sampling them sees the workers' events, lag and quality and the cloud's versions."""
    from dcrec.replay.driver import open_source
    from dcrec.replay.kafka_replay import metrics_targets, run_kafka_replay
    from dcrec.replay.timeline import RunTargets
    from dcrec.state.redis_store import redis_client

    from dcrec.config import KafkaRuntimeSettings

    config = _small_world("gru4rec")
    seen: dict = {}

    def start(run: str, redis_url: str) -> None:
        seen["targets"] = metrics_targets(redis_client(redis_url), run)
        seen["timeline"] = LiveTimeline(DashboardSettings(interval=0.2, window_clicks=50),
                                        {"run": run}, [RunTargets(redis_url, run)]).start()

    report = run_kafka_replay(config, open_source(config), KafkaRuntimeSettings(
        broker=services.broker.url, redis=services.redis.url, metrics_port=0),
        timeout=600, on_start=start)
    timeline = seen["timeline"]
    timeline.finish()
    roles = sorted(name.split(":")[0] for name in seen["targets"])
    assert roles == ["cloud", "replay", "worker"]
    points = timeline.view(0)["points"]
    assert 0 < max(p["events"] for p in points) <= (report["events"]["clicks"]
                                                   + report["events"]["exposures"])
    assert max(p["produced"] for p in points) == 0  # this process's own counters: not read
    assert any(p["quality"].get("gru4rec", {}).get("AUC") for p in points)
    assert max(p["versions"].get("gru4rec", 0) for p in points) >= 1
    # sampled after the processes stopped: they count with what they showed last
    assert points[-1]["events"] == max(p["events"] for p in points)
    assert points[-1]["versions"]["gru4rec"] == max(p["versions"].get("gru4rec", 0)
                                                    for p in points)
