"""The command line: help on every verb, clear errors, and a replay of a CSV log with
malformed lines that runs to the end and counts what it rejected."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dcrec.cli import app

runner = CliRunner()
VERBS = [[], ["data"], ["data", "get"], ["replay"], ["eval"], ["show"], ["methods"], ["bench"],
         ["up"], ["down"], ["topics", "create"], ["worker"], ["cloud"], ["groups"], ["metapatches"],
         ["curve"], ["resources"], ["dashboard"], ["scale"], ["tune"], ["request-costs"]]


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v) or "dcrec")
def test_every_verb_has_help(verb):
    result = runner.invoke(app, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def _csv(path, n=2_000, malformed_every=100):
    rng = np.random.default_rng(0)
    lines = ["uid,iid,when"]
    bad = 0
    for k in range(n):
        if k % malformed_every == 50:
            bad += 1
            lines.append(["7,8", "x,y,not-a-time", "3,4,-20", ",5,1000", "1,2,3,4,5"][bad % 5])
        else:
            lines.append(f"u{rng.integers(40)},i{rng.integers(300)},{1_000_000 + 60 * k}")
    path.write_text("\n".join(lines) + "\n")
    return bad


def test_replay_of_a_csv_with_malformed_lines_counts_them(tmp_path):
    path = tmp_path / "log.csv"
    bad = _csv(path)
    report = tmp_path / "r.json"
    result = runner.invoke(app, [
        "replay", "--dataset", str(path), "--columns", "user=uid,item=iid,timestamp=when",
        "--method", "popularity", "--quiet", "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["events"]["invalid"] == bad == 20
    assert sum(data["events"]["invalid_reasons"].values()) == bad
    assert len(data["events"]["invalid_reasons"]) >= 3
    assert data["events"]["clicks"] == 2_000 - bad
    assert "invalid input by reason" in result.output
    shown = runner.invoke(app, ["show", str(report)])
    assert shown.exit_code == 0 and "popularity" in shown.output


def test_a_time_window_outside_the_log_is_an_error_that_gives_the_logs_span(tmp_path):
    path = tmp_path / "log.csv"
    _csv(path)
    result = runner.invoke(app, [
        "replay", "--dataset", str(path), "--columns", "user=uid,item=iid,timestamp=when",
        "--method", "popularity", "--start", "2030-01-01", "--quiet"])
    assert result.exit_code == 2
    assert "no events of" in result.output and "1970-01-12" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["replay", "--method", "no-such-method", "--dataset", "world"], "unknown method"),
    (["replay", "--dataset", "/no/such/file.csv"], "unknown dataset"),
    (["replay", "--dataset", "world", "--cloud-interval", "soon"], "duration"),
    (["replay", "--dataset", "world", "--columns", "user"], "role=column"),
    (["replay", "--dataset", "world", "--columns", "user=uid"], "world has its own"),
    (["replay", "--start", "1998-02-01", "--end", "1998-01-01"], "must come before its end"),
    (["show", "/no/such/report.json"], "cannot read report"),
    (["show", "pyproject.toml"], "cannot read report"),
    (["worker", "--run", "r", "--redis", "redis://127.0.0.1:1"], "cannot reach Redis"),
    (["transport", "--rate", "-1"], "--rate"),
    (["replay", "--dataset", "world", "--world-users", "50", "--world-events", "1000",
      "--runtime", "kafka", "--broker", "127.0.0.1:1", "--redis", "redis://127.0.0.1:1"],
     "cannot reach Redis"),
    (["eval", "--protocol", "kfold", "--dataset", "world"], "unknown protocol"),
    (["eval", "--negatives", "popular", "--dataset", "world"], "unknown --negatives"),
    (["eval", "--dataset", "world", "--methods", "gru4rec,nope"], "unknown method 'nope'"),
    (["data", "get", "ml-25m"], "unknown dataset"),
    (["replay", "--dataset", "world", "--runtime", "kafka", "--speed", "fast"], "--speed"),
    (["bench", "--runtime", "flink"], "unknown runtime"),
    (["bench", "--runtime", "kafka", "--flops"], "--flops counts the device path"),
    (["replay", "--dataset", "world", "--world-users", "3"], "--world-users 3:"),
    (["replay", "--dataset", "world", "--warmup", "-1"], "--warmup -1:"),
    (["curve", "--budgets", "0.2,1.5"], "share of clicks"),
    (["curve", "--methods", "isolation-forest"], "unknown request agent"),
])
def test_bad_arguments_give_a_clear_error(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize("verb", [["replay", "--dataset", "world"], ["bench"]])
def test_a_refused_kafka_setting_is_one_clear_error(verb):
    result = runner.invoke(app, [*verb, "--runtime", "kafka", "--workers", "0"])
    assert result.exit_code == 2
    assert "--workers 0: Input should be greater than or equal to 1" in result.output
    assert result.output.count("error:") == 1 and "errors.pydantic.dev" not in result.output


@pytest.mark.parametrize("verb", [["replay"], ["eval", "--methods", "popularity"]])
def test_a_log_with_no_valid_event_says_why(tmp_path, verb):
    broken = tmp_path / "broken.json"
    broken.write_text('{"user": 1, "item":\n')
    result = runner.invoke(app, [*verb, "--dataset", str(broken), "--out", str(tmp_path)]
                           if verb[0] == "eval" else [*verb, "--dataset", str(broken)])
    assert result.exit_code == 2
    assert "no valid events in broken: 1 rows rejected (malformed: 1)" in result.output
    log = tmp_path / "log.csv"
    _csv(log)
    result = runner.invoke(app, ["replay", "--dataset", str(log), "--columns",
                                 "user=uid,item=iid,timestamp=when", "--kcore", "1000"])
    assert result.exit_code == 2 and "--kcore 1000 keeps only" in result.output


def test_a_missing_column_says_how_to_name_it(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("uid,iid,when\n1,2,3\n")
    result = runner.invoke(app, ["replay", "--dataset", str(path)])
    assert result.exit_code == 2
    assert "no column 'user' for user (name it: --columns user=COLUMN)" in result.output


def test_bench_refuses_an_unknown_method_before_measuring_any(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    result = runner.invoke(app, ["bench", "--methods", "popularity,nope", "--out", str(out)])
    assert result.exit_code == 2 and "unknown method 'nope'" in result.output
    assert "bench local popularity" not in result.output and not out.exists()


def test_show_of_a_json_that_is_no_replay_report_says_what_it_lacks(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"metrics": {}}')
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 2
    assert "not a dcrec replay report" in result.output and "events" in result.output


def test_groups_compares_replays_per_activity_group(tmp_path):
    reports = []
    for method in ("popularity", "river-mf"):
        report = tmp_path / f"{method}.json"
        result = runner.invoke(app, ["replay", "--dataset", "world", "--world-users", "60",
                                     "--world-items", "200", "--world-events", "5000",
                                     "--method", method, "--quiet", "--report", str(report)])
        assert result.exit_code == 0, result.output
        reports.append(str(report))
    plot = tmp_path / "groups.png"
    result = runner.invoke(app, ["groups", *reports, "--out", str(plot)])
    assert result.exit_code == 0, result.output
    assert "popularity (seed 0)" in result.output and "(tail)" in result.output
    assert plot.stat().st_size > 1000
    missing = runner.invoke(app, ["groups", str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "cannot read report" in missing.output


def test_metapatches_of_a_dccl_replay_are_plotted(tmp_path):
    world = ["--dataset", "world", "--world-users", "80", "--world-items", "150",
             "--world-events", "6000"]
    states = {}
    for method in ("dccl-e", "gru4rec"):
        states[method] = tmp_path / f"{method}.npz"
        result = runner.invoke(app, ["replay", *world, "--method", method, "--quiet",
                                     "--state", str(states[method])])
        assert result.exit_code == 0, result.output
    plot = tmp_path / "metapatches.png"
    result = runner.invoke(app, ["metapatches", str(states["dccl-e"]), *world,
                                 "--out", str(plot)])
    assert result.exit_code == 0, result.output
    assert "devices plotted" in result.output and plot.stat().st_size > 1000
    no_patches = runner.invoke(app, ["metapatches", str(states["gru4rec"]), *world])
    assert no_patches.exit_code == 2 and "no metapatches" in no_patches.output


def test_replay_on_the_world_prints_the_summary():
    result = runner.invoke(app, ["replay", "--dataset", "world", "--world-users", "50",
                                 "--world-items", "200", "--world-events", "5000",
                                 "--method", "river-mf", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "## river-mf on world" in result.output and "HR@10" in result.output


def test_eval_keeps_finished_runs_and_resumes_from_them(tmp_path):
    args = ["eval", "--protocol", "loo", "--dataset", "world", "--world-users", "60",
            "--world-items", "300", "--world-events", "8000", "--methods", "popularity",
            "--seeds", "0,1", "--out", str(tmp_path)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    kept = tmp_path / "loo-world" / "popularity-seed1.json"
    data = json.loads(kept.read_text())
    assert (tmp_path / "loo-world.png").exists() and (tmp_path / "loo-world.md").exists()
    # DCCL Fig. 4 from the same runs: macro-AUC per activity group, averaged over seeds
    assert (tmp_path / "loo-world-groups.png").exists()
    assert "| 1 |" in first.output and "popularity (seeds 0,1)" in first.output
    assert "All 2 runs made by this code" in first.output
    # a kept run is re-used as it is: mark it and see the mark in the table; one made
    # by other code is re-used and named as such
    data["result"]["test"]["HR@10"] = 2.0 - json.loads(
        (tmp_path / "loo-world" / "popularity-seed0.json").read_text())["result"]["test"]["HR@10"]
    data["code"] = "0123456789ab"
    kept.write_text(json.dumps(data))
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0
    summary = json.loads((tmp_path / "loo-world.json").read_text())["summary"]
    assert summary["popularity"]["HR@10"]["mean"] == pytest.approx(1.0)
    assert ("1 of 2 runs made by this code (source digest " in resumed.output
            and "the others by other code: 0123456789ab (1)." in resumed.output)
    fresh = runner.invoke(app, [*args, "--fresh"])
    assert fresh.exit_code == 0
    summary = json.loads((tmp_path / "loo-world.json").read_text())["summary"]
    assert summary["popularity"]["HR@10"]["mean"] < 1.0
    assert "All 2 runs made by this code" in fresh.output


def test_up_starts_the_embedded_broker_and_redis_and_down_stops_them(tmp_path, monkeypatch):

    monkeypatch.setenv("DCREC_DATA", str(tmp_path))
    monkeypatch.delenv("DCREC_REDIS", raising=False)
    started = runner.invoke(app, ["up"])
    try:
        assert started.exit_code == 0, started.output
        assert "broker  127.0.0.1:" in started.output
        assert "redis   redis://127.0.0.1:" in started.output
        recorded = json.loads((tmp_path / "services.json").read_text())
        pids = [recorded["broker"]["pid"], recorded["redis"]["pid"]]
        assert runner.invoke(app, ["up"]).exit_code == 2  # already up
        created = runner.invoke(app, ["topics", "create", "--namespace", "t"])
        assert created.exit_code == 0, created.output
        assert "t.events.click" in created.output and "created" in created.output
        assert "cleanup.policy=compact" in created.output  # cloud.releases, control.threshold
        again = runner.invoke(app, ["topics", "create", "--namespace", "t"])
        assert "created" not in again.output and "exists" in again.output
    finally:
        stopped = runner.invoke(app, ["down"])
    assert stopped.exit_code == 0 and "broker" in stopped.output
    for pid in pids:  # gone, or a zombie of this test process awaiting its reaping
        assert _stopped(pid)


def _stopped(pid: int, timeout: float = 10.0) -> bool:
    import time
    from pathlib import Path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status")
        if not status.exists() or "State:\tZ" in status.read_text():
            return True
        time.sleep(0.1)
    return False


def test_bench_appends_a_dated_section_with_machine_and_command(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    args = ["bench", "--methods", "popularity", "--world-users", "50",
            "--world-items", "150", "--world-events", "2000", "--out", str(out)]
    for _ in range(2):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.count("- machine: ") == 2 and text.count("- command: `dcrec ") == 2
    assert text.count("| local | popularity | world | 2,000 |") == 2
    runs = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(runs) == 2 and runs[1]["command"].startswith("dcrec ")
    assert [(r["method"], r["events"]) for r in runs[1]["rows"]] == [("popularity", 2_000)]


def test_bench_flops_set_each_device_path_against_the_machines_matrix_products(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    result = runner.invoke(app, ["bench", "--methods", "popularity,gru4rec", "--flops",
                                 "--world-users", "50", "--world-items", "150",
                                 "--world-events", "2000", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = out.read_text().split("Device-path arithmetic")[1]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")
            for line in table.splitlines() if line.startswith("| ") and " world " in line}
    assert rows["popularity"][2] == "0.000" and rows["popularity"][4] == "—"   # numpy only
    assert float(rows["gru4rec"][2]) > 0 and rows["gru4rec"][4] != "—"


def test_bench_sets_each_device_path_against_river_mf_of_the_same_run():
    from dcrec.replay.bench import bench_record, markdown_section

    def row(method: str, dataset: str, rate: float) -> dict:
        return {"runtime": "local", "method": method, "dataset": dataset, "events": 10,
                "events_per_second": 1.0, "device_events_per_second": rate, "p50_ms": 1.0,
                "p99_ms": 1.0, "latency": "micro-batch", "peak_rss_mb": 1.0,
                "state_bytes_per_device": 0}

    text = markdown_section(bench_record([row("river-mf", "world", 100.0),
                                          row("gru4rec", "world", 350.0),
                                          row("scn", "ml-100k", 90.0)], "dcrec bench"))
    assert "against river-mf's in this run: gru4rec 3.5×." in text   # scn: no river-mf there
    assert "against river-mf" not in markdown_section(bench_record([row("gru4rec", "world",
                                                                        1.0)], "c"))


def test_curve_tabulates_the_agents_between_the_bounds_and_resumes(tmp_path):
    args = ["curve", "--dataset", "world", "--world-users", "60", "--world-items", "150",
            "--world-events", "3000", "--budgets", "0.5", "--methods", "random",
            "--seeds", "0", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for method in ("ec-cdr", "ec-cdr-static", "random"):
        assert f"| {method} |" in result.output
    assert (tmp_path / "curve-world.png").stat().st_size > 0
    kept = sorted(p.name for p in (tmp_path / "curve-world").iterdir())
    assert kept == ["ec-cdr-seed0.json", "ec-cdr-static-seed0.json", "random-b0.5-seed0.json"]
    again = runner.invoke(app, args)  # every replay re-used
    assert again.exit_code == 0 and again.output.count("| random |") == 1
    assert "All 3 runs made by this code" in again.output
    # a grid tabled as far as it has run: seed 1 is not kept, so it is left out, not run
    partial = runner.invoke(app, [*args[:-3], "0,1", "--out", str(tmp_path), "--kept-only"])
    assert partial.exit_code == 0, partial.output
    assert partial.output.count("| random |") == 1 and len(list(
        (tmp_path / "curve-world").iterdir())) == 3
    nothing = runner.invoke(app, [*args[:-3], "1", "--out", str(tmp_path), "--kept-only"])
    assert nothing.exit_code != 0 and "no replays with these settings" in nothing.output
