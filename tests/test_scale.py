"""``dcrec scale``: one process per method on a world of the requested size; the state
total is devices × state per device, and the extrapolation is the run's per-click
traffic and cloud time times the click rate."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dcrec.cli import app

runner = CliRunner()


def test_scale_reports_memory_per_device_and_extrapolates_per_click(tmp_path,
                                                                     monkeypatch) -> None:
    result = runner.invoke(app, ["scale", "--methods", "gru4rec,mc2sf", "--devices", "300",
                                 "--items", "200", "--events", "3000",
                                 "--clicks-per-second", "1000", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "scale-300.json").read_text())
    assert (tmp_path / "scale-300.png").stat().st_size > 0
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == {"gru4rec", "mc2sf"}
    for row in rows.values():
        assert row["devices"] == 300 and row["events"] == 3000
        assert row["state_mb"] == pytest.approx(300 * row["state_bytes_per_device"] / 2**20)
        assert row["peak_rss_mb"] > 50     # a process of its own, torch loaded
    # MC²-SF's devices upload their negative memory; GRU4Rec's upload nothing
    assert rows["mc2sf"]["bytes_up_per_click"] > 0 == rows["gru4rec"]["bytes_up_per_click"]
    for e in data["extrapolated"]:
        row = rows[e["method"]]
        assert e["down_bytes_per_second"] == pytest.approx(1000 * row["bytes_down_per_click"])
        assert e["cloud_cores"] == pytest.approx(1000 * row["cloud_seconds_per_click"])
    # each method's run is kept: adding a method re-runs only that one
    import dcrec.replay.scale as scale_module
    ran = []
    real = scale_module.scale_row_in_own_process
    monkeypatch.setattr(scale_module, "scale_row_in_own_process",
                        lambda config: ran.append(config.method) or real(config))
    again = runner.invoke(app, ["scale", "--methods", "gru4rec,mc2sf,river-mf", "--devices",
                                "300", "--items", "200", "--events", "3000",
                                "--clicks-per-second", "1000", "--out", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert ran == ["river-mf"]
    assert "All 3 runs made by this code" in again.output
    rows_again = json.loads((tmp_path / "scale-300.json").read_text())["rows"]
    assert rows_again[:2] == data["rows"]


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "nope"], "unknown method"),
    (["--clicks-per-second", "0"], "must be positive"),
    (["--devices", "3"], "--devices 3:"),
])
def test_scale_rejects_bad_input_before_running(args, message, tmp_path) -> None:
    result = runner.invoke(app, ["scale", *args, "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert message in result.output
