"""infra/: Prometheus scrapes the ports dcrec's processes serve /metrics on, and the
Grafana dashboard the compose file provisions asks only for metrics the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from dcrec.streams.live_metrics import exported_names

from dcrec.config import DashboardSettings, KafkaRuntimeSettings

INFRA = Path(__file__).resolve().parents[1] / "infra"
METRIC = re.compile(r"\b(?:dcrec|process)_[a-z0-9_]+\b")


def _dashboard() -> dict:
    return json.loads((INFRA / "grafana" / "dcrec-dashboard.json").read_text())


def _expressions(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_grafana_panels_ask_only_for_exported_metrics():
    exported = exported_names()
    expressions = _expressions(_dashboard())
    assert len(expressions) >= 10
    for expr in expressions:
        named = METRIC.findall(expr)
        assert named, f"no dcrec metric in {expr!r}"
        assert set(named) <= exported, f"{expr!r} asks for {set(named) - exported}"


def test_grafana_has_the_panels_of_the_dashboard_page():
    titles = {panel["title"] for panel in _dashboard()["panels"]}
    page = (Path(__file__).resolve().parents[1] / "replay" / "dashboard.html").read_text()
    shown = set(re.findall(r'layout\(\s*"([^"]+)"', page))
    assert {"Throughput", "Rolling prequential quality", "Model versions", "Communication",
            "Requests against threshold and capacity", "Consumer lag and cloud queue",
            } <= shown & titles


def test_prometheus_scrapes_the_default_metrics_ports():
    config = yaml.safe_load((INFRA / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {target: group.get("labels", {}).get("role")
               for group in jobs["dcrec"]["static_configs"] for target in group["targets"]}
    settings = KafkaRuntimeSettings()
    expected = {f"127.0.0.1:{settings.role_metrics_port('replay')}": "replay",
                f"127.0.0.1:{settings.role_metrics_port('cloud')}": "cloud",
                **{f"127.0.0.1:{settings.role_metrics_port('worker', i)}": "worker"
                   for i in range(4)}}
    assert targets == expected
    assert DashboardSettings().port == settings.role_metrics_port("replay")
    assert not METRIC.findall((INFRA / "prometheus.yml").read_text().split("scrape_configs")[1])


def test_the_compose_file_provisions_grafana_from_infra():
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    grafana, prometheus = compose["services"]["grafana"], compose["services"]["prometheus"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"])
    for source in mounts:
        assert (INFRA / source).exists(), source
    provider = yaml.safe_load((INFRA / "grafana/provisioning/dashboards/dcrec.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert mounts["./grafana/dcrec-dashboard.json"].startswith(folder + "/")
    sources = yaml.safe_load(
        (INFRA / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    uids = {panel["datasource"]["uid"] for panel in _dashboard()["panels"]}
    assert uids == {sources[0]["uid"]}
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "127.0.0.1:9090" in " ".join(prometheus["command"]) and "9090" in sources[0]["url"]
