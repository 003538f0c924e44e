"""``dcrec tune``: the grid, the Pareto front, parallel trials kept and resumed."""

from __future__ import annotations

import json

from dcrec.replay.tuning import TuneSpace, by_cloud_interval, pareto_front, trial_name
from typer.testing import CliRunner

from dcrec.cli import app

runner = CliRunner()


def test_the_grid_holds_every_combination_once() -> None:
    space = TuneSpace(upload_interval=[3600, 86400], cloud_interval=[86400, 259200],
                      request_budget=[0.1, 0.5])
    names = [trial_name(p) for p in space.grid()]
    assert len(names) == len(set(names)) == 8
    assert names[0] == "up3600-cloud86400-budget0.1"


def test_the_front_keeps_only_points_nothing_beats() -> None:
    rows = [{"quality": q, "cost": c} for q, c in
            [(0.30, 10), (0.20, 12), (0.25, 5), (0.30, 11), (0.10, 1), (0.25, 6)]]
    front = pareto_front(rows)
    assert [(r["quality"], r["cost"]) for r in front] == [(0.10, 1), (0.25, 5), (0.30, 10)]


def test_quality_by_cloud_interval_averages_the_other_knobs() -> None:
    rows = [{"cloud_interval": 86400, "quality": 0.2}, {"cloud_interval": 86400, "quality": 0.4},
            {"cloud_interval": 3600, "quality": 0.1}]
    assert by_cloud_interval(rows) == [(3600, 0.1), (86400, 0.30000000000000004)]


def test_tune_runs_trials_in_parallel_keeps_them_and_resumes(tmp_path) -> None:
    args = ["tune", "--dataset", "world", "--method", "gru4rec", "--world-users", "30",
            "--world-items", "150", "--world-events", "2000", "--upload-interval", "1h",
            "--cloud-interval", "1d,3d", "--jobs", "2", "--out", str(tmp_path)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    stem = tmp_path / "tune-world-gru4rec"
    data = json.loads(stem.with_suffix(".json").read_text())
    assert len(data["trials"]) == 2 and 1 <= len(data["front"]) <= 2
    for trial in data["trials"]:
        assert trial["cost"] == trial["uploads"] + trial["requests"] + trial["cloud_seconds"]
    assert stem.with_suffix(".png").stat().st_size > 0
    assert "More frequent cloud rounds are" in stem.with_suffix(".md").read_text()
    assert "All 2 runs made by this code" in stem.with_suffix(".md").read_text()
    # quality per cloud round (DCCL Fig. 5): a round per cloud job, every click in one
    for trial in data["trials"]:
        rounds = trial["rounds"]
        assert sum(r["clicks"] for r in rounds) > 0
        assert [r["round"] for r in rounds] == sorted({r["round"] for r in rounds})
    daily, every_3 = sorted(data["trials"], key=lambda t: t["cloud_interval"])
    assert daily["rounds"][-1]["round"] > every_3["rounds"][-1]["round"]
    assert "Quality per cloud round" in stem.with_suffix(".md").read_text()
    assert (tmp_path / "tune-world-gru4rec-rounds.png").stat().st_size > 0
    kept = {p.name: p.stat().st_mtime_ns for p in stem.glob("*.json")}
    assert len(kept) == 2
    again = runner.invoke(app, [*args, "--max-trials", "2"])
    assert again.exit_code == 0, again.output
    assert {p.name: p.stat().st_mtime_ns for p in stem.glob("*.json")} == kept  # re-used
    assert json.loads(stem.with_suffix(".json").read_text())["trials"] == data["trials"]


def test_tune_refuses_a_bad_sweep(tmp_path) -> None:
    result = runner.invoke(app, ["tune", "--upload-interval", "soon", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "bad value in the sweep" in result.output
    result = runner.invoke(app, ["tune", "--search", "annealing", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "grid or optuna" in result.output


def test_the_optuna_search_picks_points_from_the_given_values(tmp_path) -> None:
    result = runner.invoke(app, [
        "tune", "--dataset", "world", "--method", "gru4rec", "--world-users", "30",
        "--world-items", "150", "--world-events", "2000", "--upload-interval", "1h",
        "--cloud-interval", "1d,3d", "--search", "optuna", "--max-trials", "3", "--jobs", "2",
        "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    trials = json.loads((tmp_path / "tune-world-gru4rec.json").read_text())["trials"]
    assert 1 <= len(trials) <= 2     # 3 trials over 2 distinct points
    assert {t["cloud_interval"] for t in trials} <= {86400, 259200}
