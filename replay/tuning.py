"""``dcrec tune``: how often should devices and the cloud talk?

Each trial is a replay in the local runtime with one choice of upload interval, cloud
interval and request budget. A trial's **quality** is its prequential NDCG@10; its
**cost** is what the talking cost, uploads + requests + cloud compute seconds (each
message and each second counts 1, as the issue that asked for this states it; the
table shows the three apart). The trials on the Pareto front — none better in quality
at no more cost — are the settings worth choosing from.

Points come from the grid of the given values, or from Optuna's multi-objective search
(NSGA-II) over the same values. Trials run in parallel over the cores, one process
each, and each finished trial is kept in ``--out`` and re-used by a later run with the
same settings, so an interrupted sweep resumes where it stopped.

>>> front = pareto_front([{"quality": 0.3, "cost": 10}, {"quality": 0.2, "cost": 12},
...                       {"quality": 0.25, "cost": 5}])
>>> [(p["quality"], p["cost"]) for p in front]
[(0.25, 5), (0.3, 10)]
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from dcrec.replay.offline_runner import keep, load_kept

from dcrec.config import ReplayConfig

KNOBS = ("upload_interval", "cloud_interval", "request_budget")


@dataclass(frozen=True)
class TuneSpace:
    """The values each knob may take (seconds for the intervals)."""

    upload_interval: list[int]
    cloud_interval: list[int]
    request_budget: list[float]

    def grid(self) -> list[dict]:
        """Every combination, in order."""
        return [dict(zip(KNOBS, values, strict=True)) for values in itertools.product(
            self.upload_interval, self.cloud_interval, self.request_budget)]


def trial_name(point: dict) -> str:
    """A file name for a point, e.g. ``up3600-cloud86400-budget0.1``."""
    return (f"up{point['upload_interval']}-cloud{point['cloud_interval']}"
            f"-budget{point['request_budget']:g}")


def run_trial(config: ReplayConfig) -> dict:
    """One replay (in a worker process): the figures the sweep keeps."""
    import torch
    from dcrec.replay.driver import run_replay

    torch.set_num_threads(1)   # one core per trial; the trials share the machine
    report = run_replay(config)
    comm, perf = report["comm"], report["perf"]
    return {"metrics": report["metrics"], "uploads": comm["uploads"],
            "requests": comm["requests"], "bytes_up": comm["bytes_up"],
            "bytes_down": comm["bytes_down"], "releases": comm["releases"],
            "cloud_seconds": perf["cloud_seconds"], "wall_seconds": perf["wall_seconds"],
            "rounds": report.get("rounds", [])}


def _row(point: dict, result: dict) -> dict:
    cost = result["uploads"] + result["requests"] + result["cloud_seconds"]
    return {**point, **{k: v for k, v in result.items() if k != "metrics"},
            "quality": result["metrics"]["NDCG@10"], "cost": cost,
            "metrics": result["metrics"]}


class TrialRunner:
    """Runs points as replays, ``jobs`` at a time, re-using the kept ones."""

    def __init__(self, config: ReplayConfig, kept: Path, jobs: int, fresh: bool = False,
                 on_trial: Callable[[str], None] | None = None) -> None:
        self.config, self.kept, self.jobs, self.fresh = config, kept, jobs, fresh
        self.on_trial = on_trial

    def run(self, points: list[dict]) -> list[dict]:
        """A row per point (in the points' order), with the source digest of the code that
        made it."""
        configs = [self.config.model_copy(update=p) for p in points]
        settings = [{"config": c.model_dump(mode="json")} for c in configs]
        paths = [self.kept / f"{trial_name(p)}.json" for p in points]
        results = [None if self.fresh else load_kept(path, s)
                   for path, s in zip(paths, settings, strict=True)]
        todo = [k for k, r in enumerate(results) if r is None]
        for k in range(len(points)):
            if results[k] is not None and self.on_trial:
                self.on_trial(trial_name(points[k]) + " (kept)")
        if todo:
            workers = min(self.jobs, len(todo))
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(run_trial, configs[k]): k for k in todo}
                for future in as_completed(futures):
                    k = futures[future]
                    results[k] = keep(paths[k], settings[k], future.result())
                    if self.on_trial:
                        self.on_trial(trial_name(points[k]))
        return [{**_row(p, r.result), "code": r.code}
                for p, r in zip(points, results, strict=True)]


def grid_search(space: TuneSpace, runner: TrialRunner, max_trials: int | None) -> list[dict]:
    """The grid's points (the first ``max_trials`` of them)."""
    return runner.run(space.grid()[:max_trials])


def optuna_search(space: TuneSpace, runner: TrialRunner, max_trials: int,
                  seed: int) -> list[dict]:
    """NSGA-II over the knobs' values, maximising quality and minimising cost; asks
    for ``runner.jobs`` points at a time so they run in parallel."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.NSGAIISampler(seed=seed))
    rows: dict[str, dict] = {}
    while len(study.trials) < max_trials:
        batch = [study.ask() for _ in range(min(runner.jobs, max_trials - len(study.trials)))]
        points = [{knob: trial.suggest_categorical(knob, getattr(space, knob))
                   for knob in KNOBS} for trial in batch]
        for trial, row in zip(batch, runner.run(points), strict=True):
            study.tell(trial, [row["quality"], row["cost"]])
            rows[trial_name(row)] = row
    return list(rows.values())


def pareto_front(rows: list[dict]) -> list[dict]:
    """The rows no other row beats in quality at no more cost, cheapest first."""
    front = [r for r in rows if not any(
        o["quality"] >= r["quality"] and o["cost"] <= r["cost"]
        and (o["quality"] > r["quality"] or o["cost"] < r["cost"]) for o in rows)]
    return sorted(front, key=lambda r: r["cost"])


def by_cloud_interval(rows: list[dict]) -> list[tuple[int, float]]:
    """Mean quality per cloud interval, most frequent rounds first (DCCL Fig. 5)."""
    intervals = sorted({r["cloud_interval"] for r in rows})
    return [(i, float(np.mean([r["quality"] for r in rows if r["cloud_interval"] == i])))
            for i in intervals]


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def markdown(rows: list[dict], title: str) -> str:
    """The trials (front marked ★), and quality by cloud interval."""
    front = {trial_name(r) for r in pareto_front(rows)}
    lines = [f"### {title}", "",
             "| upload | cloud | budget | NDCG@10 | HR@10 | uploads | requests "
             "| cloud s | cost | front |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :-: |"]
    for r in sorted(rows, key=lambda r: r["cost"]):
        lines.append(
            f"| {_duration(r['upload_interval'])} | {_duration(r['cloud_interval'])} "
            f"| {r['request_budget']:g} | {r['quality']:.4f} | {r['metrics']['HR@10']:.4f} "
            f"| {r['uploads']:,} | {r['requests']:,} | {r['cloud_seconds']:.1f} "
            f"| {r['cost']:,.0f} | {'★' if trial_name(r) in front else ''} |")
    per_interval = by_cloud_interval(rows)
    lines += ["", "Mean NDCG@10 by cloud interval (every upload interval and budget): "
              + ", ".join(f"{_duration(i)} {q:.4f}" for i, q in per_interval) + "."]
    if len(per_interval) > 1:
        frequent, rare = per_interval[0][1], per_interval[-1][1]
        verdict = "better" if frequent > rare else "not better"
        lines.append(f"More frequent cloud rounds are {verdict} on this data "
                     f"({frequent - rare:+.4f} NDCG@10 from "
                     f"{_duration(per_interval[-1][0])} to {_duration(per_interval[0][0])}).")
    return "\n".join(lines) + "\n"


def _save(fig, ax, title: str, path: Path) -> None:
    """Title, legend and grid; the figure written to ``path`` and closed."""
    import matplotlib.pyplot as plt

    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(rows: list[dict], title: str, path: Path) -> None:
    """Quality against cost, every trial, the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    intervals = sorted({r["cloud_interval"] for r in rows})
    colours = plt.cm.viridis(np.linspace(0, 0.85, len(intervals)))
    for interval, colour in zip(intervals, colours, strict=True):
        mine = [r for r in rows if r["cloud_interval"] == interval]
        ax.scatter([r["cost"] for r in mine], [r["quality"] for r in mine], color=colour,
                   label=f"cloud every {_duration(interval)}", zorder=3)
    front = pareto_front(rows)
    ax.plot([r["cost"] for r in front], [r["quality"] for r in front], "k--", lw=1,
            label="Pareto front", zorder=2)
    for r in front:
        ax.annotate(f"up {_duration(r['upload_interval'])}", (r["cost"], r["quality"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    costs = [r["cost"] for r in rows]
    if min(costs) > 0 and max(costs) / min(costs) > 10:   # log only where it spreads
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set_xlabel("cost: uploads + requests + cloud compute seconds")
    ax.set_ylabel("NDCG@10 (prequential)")
    _save(fig, ax, title, path)


ROUND_MIN_CLICKS = 50  # rounds with fewer clicks are left out of the per-round plot


def round_thirds(rounds: list[dict]) -> list[float]:
    """NDCG@10 of a trial's early, middle and late rounds (by round index, thirds of
    the rounds that served clicks), each weighted by clicks."""
    parts = np.array_split(np.arange(len(rounds)), 3)
    return [float(np.average([rounds[k]["NDCG@10"] for k in part],
                             weights=[rounds[k]["clicks"] for k in part]))
            if len(part) else float("nan") for part in parts]


def _trials_with_rounds(rows: list[dict]) -> list[dict]:
    """The trials that kept their rounds, by cloud interval, then upload interval."""
    return sorted((r for r in rows if r.get("rounds")),
                  key=lambda r: (r["cloud_interval"], r["upload_interval"]))


def rounds_markdown(rows: list[dict]) -> str:
    """Quality per cloud round (DCCL Fig. 5): each trial's early, middle and late
    thirds of its rounds; "" when no trial kept its rounds."""
    rows = _trials_with_rounds(rows)
    if not rows:
        return ""
    lines = ["", "Quality per cloud round (NDCG@10 of the clicks each round's models "
             "served, weighted by clicks, over the first, middle and last third of the "
             "rounds):", "",
             "| cloud | upload | budget | rounds | early | middle | late |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        early, middle, late = round_thirds(r["rounds"])
        lines.append(f"| {_duration(r['cloud_interval'])} | {_duration(r['upload_interval'])} "
                     f"| {r['request_budget']:g} | {len(r['rounds'])} | {early:.4f} "
                     f"| {middle:.4f} | {late:.4f} |")
    return "\n".join(lines) + "\n"


def plot_rounds(rows: list[dict], title: str, path: Path) -> bool:
    """NDCG@10 per cloud round, a line per trial (DCCL Fig. 5); False when no trial
    kept its rounds (nothing written)."""
    rows = _trials_with_rounds(rows)
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        shown = [x for x in r["rounds"] if x["clicks"] >= ROUND_MIN_CLICKS]
        ax.plot([x["round"] for x in shown], [x["NDCG@10"] for x in shown], marker=".",
                lw=1, label=f"cloud every {_duration(r['cloud_interval'])}, "
                            f"upload {_duration(r['upload_interval'])}")
    ax.set_xlabel("round (cloud jobs so far)")
    ax.set_ylabel(f"NDCG@10 of the round's clicks (rounds with ≥ {ROUND_MIN_CLICKS})")
    _save(fig, ax, title, path)
    return True


def default_jobs() -> int:
    """One trial per core."""
    return max(1, os.cpu_count() or 1)
