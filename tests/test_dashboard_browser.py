"""The dashboard page in a real browser: Debian's chromium, headless, driven by
selenium through /usr/bin/chromedriver (``make test`` installs both). It loads the page
during a replay, looks at the charts' data twice — with the replay held after its first
micro-batches, then after it finished — and keeps a screenshot under
``runs/test-artifacts/``."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from dcrec.replay.dashboard import replay_dashboard
from dcrec.replay.driver import open_source, run_replay

from dcrec.config import DashboardSettings, ModelConfig, ReplayConfig, WorldSettings

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
ARTEFACTS = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"

# what each chart shows, read from the data Plotly holds for it
LOOK = """
const chart = id => document.getElementById(id).data || [];
const last = trace => trace ? trace.y[trace.y.length - 1] : null;
return {
  status: document.getElementById("status").textContent,
  points: chart("throughput").length ? chart("throughput")[0].x.length : 0,
  throughput: chart("throughput").length ? chart("throughput")[0].y : [],
  bytes_down: last(chart("communication")[1]),
  quality: chart("quality").map(t => t.name + "=" + last(t)),
  versions: chart("versions").map(t => t.name + "=" + last(t)),
};
"""


def _browser():
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        reason = ("chromium and chromium-driver are not installed (make test installs them "
                  "with apt-get)")
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the browser test")
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[browser]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def test_the_dashboard_charts_move_while_a_replay_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recording goes to tmp_path/runs/live
    config = ReplayConfig(dataset="world", method="gru4rec", n_negatives=20, micro_batch=500,
                          world=WorldSettings(users=60, items=80, events=6_000, clusters=4),
                          model=ModelConfig(embedding_dim=8, epochs_per_job=1),
                          cloud_interval="5d")
    settings = DashboardSettings(port=0, interval=0.2, window_clicks=100)
    held, looked = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def hold_after_first_batches(n: int) -> None:
        if not held.is_set():
            held.set()
            looked.wait(timeout=120)  # the replay waits for the browser's first look

    driver = _browser()
    from selenium.webdriver.support.ui import WebDriverWait
    with replay_dashboard(config, settings) as board:
        def replay() -> None:
            try:
                board.finish(run_replay(config, open_source(config),
                                        progress=hold_after_first_batches))
            except BaseException as error:
                failure.append(error)
            finally:
                held.set()

        thread = threading.Thread(target=replay, daemon=True)
        thread.start()
        try:
            assert held.wait(timeout=120)
            driver.get(board.url)
            wait = WebDriverWait(driver, 60, poll_frequency=0.2)
            first = wait.until(lambda d: (look := d.execute_script(LOOK))["points"] >= 3
                               and max(look["throughput"]) > 0 and look)
            assert first["status"] == "running"
            ARTEFACTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(ARTEFACTS / "dashboard-running.png"))
            looked.set()
            thread.join(timeout=300)
            assert not failure, failure
            second = wait.until(lambda d: (look := d.execute_script(LOOK))["status"]
                                == "finished" and look)
            driver.save_screenshot(str(tmp_path / "dashboard.png"))
        finally:
            looked.set()
            driver.quit()
            thread.join(timeout=300)
    shutil.copy(tmp_path / "dashboard.png", ARTEFACTS / "dashboard.png")

    assert second["points"] > first["points"]
    assert second["throughput"] != first["throughput"]
    assert second["bytes_down"] > first["bytes_down"]  # releases reached the devices
    assert second["versions"] != first["versions"]
    assert second["quality"] != first["quality"]
    assert any(name.startswith("AUC gru4rec=") for name in second["quality"])
