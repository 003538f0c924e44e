"""The live dashboard: one page of Plotly charts that poll a run's timeline.

Served by a small threaded HTTP server on loopback: ``/`` the page, ``/api/timeline?
since=N`` the timeline's points from index N (JSON), ``/plotly.min.js`` the charting
library shipped inside the ``plotly`` package (nothing is fetched from the network), and
``/metrics`` this process's metrics for Prometheus. ``dcrec replay --dashboard`` serves a
live timeline while the replay runs; ``dcrec dashboard`` serves a recording (a run still
going or finished) or samples a kafka run's processes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dcrec.replay.timeline import LiveTimeline, RunTargets, Timeline, json_safe, this_process
from dcrec.streams.live_metrics import MetricsHandler, MetricsServer

from dcrec.config import DashboardSettings, ReplayConfig

PAGE = "dashboard.html"


@cache
def page() -> bytes:
    return (resources.files("dcrec.replay") / PAGE).read_bytes()


@cache
def plotly_js() -> bytes:
    """``plotly.min.js`` as the installed ``plotly`` package ships it."""
    return (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()


def dashboard_handler(timeline: Timeline) -> type[MetricsHandler]:
    """A request handler serving ``timeline`` (see the module docstring)."""

    class DashboardHandler(MetricsHandler):
        def route(self, path: str) -> bool:
            if path in ("/", "/index.html"):
                self.reply(200, page(), "text/html; charset=utf-8")
            elif path == "/api/timeline":
                query = parse_qs(urlsplit(self.path).query)
                try:
                    since = int(query.get("since", ["0"])[0])
                except ValueError:
                    self.reply(400, b"since takes an integer\n", "text/plain; charset=utf-8")
                    return True
                body = json.dumps(json_safe(timeline.view(since)), allow_nan=False)
                self.reply(200, body.encode(), "application/json")
            elif path == "/plotly.min.js":
                self.reply(200, plotly_js(), "text/javascript; charset=utf-8", cache=True)
            else:
                return False
            return True

    return DashboardHandler


def serve_dashboard(timeline: Timeline, settings: DashboardSettings) -> MetricsServer:
    """The dashboard of ``timeline`` on ``settings.host:settings.port`` (a port in use:
    a free one)."""
    return MetricsServer(dashboard_handler(timeline), settings.host, settings.port)


def recording_path(settings: DashboardSettings, config: ReplayConfig) -> Path:
    """Where a replay's timeline is recorded: one file per replay, named by what ran."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(settings.record_dir) / f"{config.dataset.replace('/', '_')}-{config.method}-" \
        f"{config.runtime}-{stamp}.jsonl"


@dataclass
class ReplayDashboard:
    """A dashboard following a replay in this process."""

    timeline: LiveTimeline
    server: MetricsServer

    @property
    def url(self) -> str:
        return self.server.url

    def follow_kafka_run(self, run: str, redis_url: str) -> None:
        """Sample the run's worker and cloud processes too (a kafka replay)."""
        self.timeline.add_source(RunTargets(redis_url, run), run=run)

    def finish(self, report: dict[str, Any]) -> None:
        self.timeline.finish({"metrics": report.get("metrics", {}),
                              "comm": report.get("comm", {}),
                              "perf": report.get("perf", {})})


@contextmanager
def replay_dashboard(config: ReplayConfig, settings: DashboardSettings,
                     ) -> Iterator[ReplayDashboard]:
    """Serve a live dashboard of the replay ``config`` while the block runs (its
    timeline recorded under ``settings.record_dir``)."""
    info = {"dataset": config.dataset, "method": config.method, "runtime": config.runtime,
            "seed": config.seed, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    timeline = LiveTimeline(settings, info, [this_process], recording_path(settings, config))
    server = serve_dashboard(timeline, settings)
    timeline.info["recording"] = str(timeline.record)
    timeline.start()
    try:
        yield ReplayDashboard(timeline, server)
    finally:
        if timeline.summary is None:  # the replay failed: stop sampling all the same
            timeline.finish({"error": "the replay did not finish"})
        server.close()
