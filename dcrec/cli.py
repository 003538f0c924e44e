"""The ``dcrec`` command line: wires configuration to the replay, eval and data verbs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dcrec.config import (
    DashboardSettings,
    ModelConfig,
    ReplayConfig,
    WorldSettings,
    parse_columns,
)

app = typer.Typer(help="Streaming online learning for device-cloud collaborative "
                  "recommendation.", no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Obtain and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)

DatasetOption = Annotated[str, typer.Option(help="ml-100k, world, or a CSV/Parquet/JSON path")]
ColumnsOption = Annotated[str | None, typer.Option(
    help="column mapping of a CSV/Parquet/JSON log, e.g. user=uid,item=iid,timestamp=t")]
KcoreOption = Annotated[int, typer.Option(help="keep users and items with ≥ this many clicks")]
WorldUsers = Annotated[int | None, typer.Option(help="synthetic world: users")]
WorldItems = Annotated[int | None, typer.Option(help="synthetic world: items")]
WorldEvents = Annotated[int | None, typer.Option(help="synthetic world: events")]
DEFAULT_EVAL_METHODS = "gru4rec,sasrec,din,river-mf"
EmbeddingOption = Annotated[int | None, typer.Option(help="embedding size (model default)")]
LrOption = Annotated[float | None, typer.Option(help="Adam learning rate (model default if unset)")]
L2Option = Annotated[float | None, typer.Option(help="L2 weight (model default if unset)")]
ReplayRatioOption = Annotated[int | None, typer.Option(
    help="past clicks a cloud job rehearses per new one (preset default: 4 for EC-CDR, else 0)")]
PortOption = Annotated[int | None, typer.Option(
    help="dashboard port on 127.0.0.1 (default 9460; 0: a free port; taken: a free one)")]


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _config(cls, options: dict[str, str] | None = None, **values):
    """``cls(**values)``, None values left to its defaults. A value the configuration
    refuses is a clear error naming the command-line option it came from (``options``
    maps a field to its option where that is not ``--field-name``)."""
    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as error:
        _fail("; ".join(_refusal(e, options or {}) for e in error.errors()))


def _refusal(error: dict, options: dict[str, str]) -> str:
    """One refused value as ``--option value: why``."""
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:   # a check across fields names them itself
        return message
    field = str(error["loc"][0])
    return f"{options.get(field, '--' + field.replace('_', '-'))} {error['input']!r}: {message}"


WORLD_OPTIONS = {"users": "--world-users", "items": "--world-items",
                 "events": "--world-events"}


def _world(users: int | None, items: int | None, events: int | None,
           options: dict[str, str] = WORLD_OPTIONS) -> WorldSettings:
    """The synthetic world's size from its options."""
    return _config(WorldSettings, options, users=users, items=items, events=events)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    threads: Annotated[int | None, typer.Option(
        envvar="DCREC_THREADS", min=1,
        help="torch threads; 1 when several runs share the cores, and to reproduce a "
             "trained result bit for bit on a machine with another core count")] = None,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@data_app.command("get")
def data_get(name: Annotated[str, typer.Argument(help="dataset name: ml-100k")]) -> None:
    """Fetch a dataset (checked by sha256, cached) and print where it is."""
    from dcrec.replay.datasets import DatasetUnavailable, fetch_ml100k

    if name != "ml-100k":
        _fail(f"unknown dataset {name!r}; known: ml-100k")
    try:
        print(fetch_ml100k())
    except DatasetUnavailable as error:
        _fail(str(error))


@contextmanager
def _progress(**options) -> Iterator[tqdm]:
    """A tqdm bar that log lines (a kept run made by other code, …) print above."""
    with logging_redirect_tqdm(), tqdm(**options) as bar:
        yield bar


def _write_results(stem: Path, data: dict, table: str,
                   plot: Callable[[Path], None] | None = None) -> None:
    """``stem``.json and .md (and .png, drawn by ``plot``), the table printed."""
    from dcrec.replay.report import write_json

    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(data, stem.with_suffix(".json"))
    stem.with_suffix(".md").write_text(table)
    if plot is not None:
        plot(stem.with_suffix(".png"))
    print(table)
    console.print(f"written: {stem}.{{json,md{',png' if plot else ''}}}")


def _timestamp(value: str | None) -> int | None:
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    from datetime import datetime

    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"cannot read {value!r} as a unix time or ISO date")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


@app.command()
def replay(
    dataset: DatasetOption = "ml-100k",
    columns: ColumnsOption = None,
    kcore: KcoreOption = 0,
    method: Annotated[str, typer.Option(help="preset (dcrec methods lists them)")] = "gru4rec",
    runtime: Annotated[str, typer.Option(help="local or kafka")] = "local",
    speed: Annotated[str | None, typer.Option(
        help="kafka: live run at X times event time, or max; unset: event-time replay")] = None,
    workers: Annotated[int, typer.Option(help="kafka: device workers to start")] = 1,
    broker: Annotated[str, typer.Option(envvar="DCREC_BROKER", help=(
        "kafka: bootstrap server (default: `dcrec up`'s, else an embedded one)"))] = "",
    redis_url: Annotated[str, typer.Option("--redis", envvar="DCREC_REDIS", help=(
        "kafka: Redis URL (default: `dcrec up`'s, else an embedded one)"))] = "",
    seed: int = 0,
    max_events: Annotated[int | None, typer.Option(help="stop after this many events")] = None,
    start: Annotated[str | None, typer.Option(help="first event time (unix or ISO)")] = None,
    end: Annotated[str | None, typer.Option(help="end of the window (exclusive)")] = None,
    cloud_interval: Annotated[str, typer.Option(help="simulated time between cloud jobs")] = "1d",
    upload_interval: Annotated[str, typer.Option(help="simulated time between uploads")] = "1h",
    request_budget: Annotated[float, typer.Option(help="share of clicks that may request")] = 0.1,
    request_capacity: Annotated[float | None, typer.Option(
        help="requests per simulated second the cloud can answer (default: unlimited)")] = None,
    measured_capacity: Annotated[bool, typer.Option(
        help="also hold requests to what the cloud's measured time per answer can serve "
             "at the replay's speed (results then depend on the machine)")] = False,
    warmup: Annotated[int, typer.Option(help="clicks per user before scoring starts")] = 5,
    slate_size: Annotated[int, typer.Option(help="slate shown where a log has no exposures")] = 5,
    epochs_per_job: Annotated[int, typer.Option(help="training epochs per cloud job")] = 2,
    replay_ratio: ReplayRatioOption = None,
    embedding_dim: EmbeddingOption = None,
    lr: LrOption = None,
    l2: L2Option = None,
    world_users: WorldUsers = None,
    world_items: WorldItems = None,
    world_events: WorldEvents = None,
    report: Annotated[Path | None, typer.Option(help="write the JSON report here")] = None,
    state: Annotated[Path | None, typer.Option(
        help="local runtime: keep every device's final state here (.npz)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    dashboard: Annotated[bool, typer.Option(
        help="serve the live dashboard while the replay runs (and record it)")] = False,
    port: PortOption = None,
) -> None:
    """Replay a log as a stream through a method and report quality, cost and speed."""
    from contextlib import nullcontext

    from dcrec.replay.driver import open_source, run_replay
    from dcrec.replay.report import replay_markdown, write_json

    config = _config(
        ReplayConfig, dataset=dataset, columns=columns, kcore=kcore, method=method,
        runtime=runtime, seed=seed,
        max_events=max_events, start=_timestamp(start), end=_timestamp(end),
        cloud_interval=cloud_interval, upload_interval=upload_interval,
        request_budget=request_budget, request_capacity=request_capacity,
        measured_capacity=measured_capacity, warmup=warmup,
        slate_size=slate_size,
        model=_config(ModelConfig, epochs_per_job=epochs_per_job, replay_ratio=replay_ratio,
                      embedding_dim=embedding_dim,
                      lr=lr, l2=l2),
        world=_world(world_users, world_items, world_events),
    )
    board_settings = _config(DashboardSettings, port=port)
    kafka = _kafka_settings(speed, workers, broker, redis_url)
    try:
        source = open_source(config)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    if dashboard:
        from dcrec.replay.dashboard import replay_dashboard

        watching = replay_dashboard(config, board_settings)
    else:
        watching = nullcontext()
    with watching as board, _progress(total=source.n_events, unit="ev", unit_scale=True,
                                      disable=quiet,
                                      desc=f"{config.method} on {source.name}") as bar:
        if board is not None:
            console.print(f"dashboard: {board.url}  (recording {board.timeline.record})")
        try:
            result = run_replay(config, source, progress=bar.update,
                                kafka=kafka,
                                state_path=state,
                                on_kafka_run=board.follow_kafka_run if board else None)
        except (ValueError, TimeoutError) as error:
            _fail(str(error))
        except RuntimeError as error:  # a kafka run's service or process failed
            _fail(f"{error}")
        if board is not None:
            board.finish(result)
    if report is not None:
        write_json(result, report)
    print(replay_markdown(result))
    if report is not None:
        console.print(f"report written to {report}")


def _kafka_settings(speed: str | None, workers: int, broker: str, redis_url: str):
    from dcrec.config import KafkaRuntimeSettings

    try:
        rate = 0.0 if speed is None else float("inf") if speed == "max" else float(speed)
    except ValueError:
        _fail(f"--speed takes a number (times event time) or max, not {speed!r}")
    return _config(KafkaRuntimeSettings, speed=rate, workers=workers, broker=broker,
                   redis=redis_url)


@app.command("bench")
def bench(
    runtime: Annotated[str, typer.Option(help="local or kafka")] = "local",
    methods: Annotated[str, typer.Option(help="comma-separated presets")] = "gru4rec",
    dataset: DatasetOption = "world",
    world_users: WorldUsers = 20_000,
    world_items: WorldItems = 2_000,
    world_events: WorldEvents = 200_000,
    max_events: Annotated[int | None, typer.Option(help="stop after this many events")] = None,
    workers: Annotated[int, typer.Option(help="kafka: device workers")] = 2,
    latency_load: Annotated[float, typer.Option(
        min=0.01, max=1.0, help="kafka: latency is measured at this share of throughput")] = 0.5,
    flops: Annotated[bool, typer.Option(help=(
        "local: also count the device path's FLOPs (a second replay per preset) and "
        "set them against this machine's matrix-product rate"))] = False,
    seed: int = 0,
    out: Annotated[Path, typer.Option(help=(
        "Markdown file the results are appended to (and as JSON lines to its .jsonl "
        "twin)"))] = Path("BENCHMARKS.md"),
) -> None:
    """Measure events/s and latency of a runtime per preset; append to BENCHMARKS.md."""
    from dcrec.replay.bench import (
        append_benchmarks,
        bench_kafka,
        bench_local,
        bench_record,
        gemm_gflops,
        markdown_section,
    )
    from dcrec.streams.presets import check_methods

    if runtime not in ("local", "kafka"):
        _fail(f"unknown runtime {runtime!r}; known: local, kafka")
    if flops and runtime != "local":
        _fail("--flops counts the device path of the local runtime; a kafka run's "
              "device path is the same code")
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        check_methods(method_list)   # before the first is measured
    except ValueError as error:
        _fail(str(error))
    world = _world(world_users, world_items, world_events)
    kafka = _kafka_settings(None, workers, "", "") if runtime == "kafka" else None
    rows = []
    for method in method_list:
        config = _config(ReplayConfig, dataset=dataset, method=method, seed=seed,
                         max_events=max_events, world=world)
        console.print(f"bench {runtime} {method} …")
        try:
            rows.append(bench_local(config, flops) if kafka is None else bench_kafka(
                config, kafka, latency_load))
        except (ValueError, RuntimeError) as error:  # RuntimeError: a kafka run failed
            _fail(str(error))
    record = bench_record(rows, gemm_rate=gemm_gflops() if flops else None)
    append_benchmarks(record, out)
    print(markdown_section(record))
    console.print(f"appended to {out} and {out.with_suffix('.jsonl')}")


@app.command("dashboard")
def dashboard_(
    recording: Annotated[Path | None, typer.Argument(help=(
        "a recording of `dcrec replay --dashboard` (default: the latest in runs/live)"))] = None,
    run: Annotated[str | None, typer.Option(
        help="instead: sample the processes of this kafka run (its id) live")] = None,
    redis_url: Annotated[str, typer.Option("--redis", envvar="DCREC_REDIS", help=(
        "with --run: the run's Redis (default: `dcrec up`'s)"))] = "",
    port: PortOption = None,
    stop_after: Annotated[float | None, typer.Option(
        min=0, help="stop serving after this many seconds (default: at Ctrl-C)")] = None,
) -> None:
    """Serve the live dashboard of a replay, running or finished, on 127.0.0.1."""
    import threading

    from dcrec.replay.dashboard import serve_dashboard
    from dcrec.replay.timeline import LiveTimeline, RecordedTimeline, RunTargets, latest_recording

    settings = _config(DashboardSettings, port=port)
    if run is not None:
        from dcrec.cli_ops import run_redis_url

        timeline = LiveTimeline(settings, {"run": run, "runtime": "kafka"},
                                [RunTargets(run_redis_url(redis_url), run)]).start()
    else:
        try:
            recording = recording or latest_recording(Path(settings.record_dir))
            timeline = RecordedTimeline(recording)
        except FileNotFoundError as error:
            _fail(str(error))
    server = serve_dashboard(timeline, settings)
    print(f"dashboard: {server.url}  ({f'run {run}' if run else recording})")
    console.print("Ctrl-C stops it")
    try:  # serve until Ctrl-C, or for --stop-after seconds
        threading.Event().wait(stop_after)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        if isinstance(timeline, LiveTimeline):
            timeline.finish()


@app.command("groups")
def groups(
    reports: Annotated[list[Path], typer.Argument(help="replay reports (JSON) to compare")],
    out: Annotated[Path | None, typer.Option(help="write the plot (PNG) here")] = None,
) -> None:
    """Macro-AUC per activity group across replay reports (DCCL Fig. 4)."""
    from dcrec.replay.activity_groups import groups_markdown, plot_groups

    loaded = []
    for path in reports:
        report = _read_report(path)
        if not report.get("groups"):
            _fail(f"{path} has no activity groups")
        loaded.append(report)
    print(groups_markdown(loaded))
    if out is not None:
        plot_groups(loaded, out)
        console.print(f"plot written to {out}")


@app.command("metapatches")
def metapatches(
    state: Annotated[Path, typer.Argument(help="device states of a dccl replay (--state)")],
    dataset: DatasetOption = "ml-100k",
    world_users: WorldUsers = None,
    world_items: WorldItems = None,
    world_events: WorldEvents = None,
    seed: int = 0,
    out: Annotated[Path, typer.Option(help="the plot (PNG)")] = Path("metapatches.png"),
) -> None:
    """Metapatches in 2-D, coloured by each device's most clicked category (DCCL Fig. 7)."""
    import numpy as np

    from dcrec.replay.driver import load_log
    from dcrec.replay.metapatch_map import plot_metapatches

    try:
        columns = dict(np.load(state))
    except (OSError, ValueError) as error:
        _fail(f"cannot read device states {state}: {error}")
    if "metapatch" not in columns:
        _fail(f"{state} holds no metapatches (replay a dccl preset with --state)")
    world = _world(world_users, world_items, world_events)
    try:
        log_ = load_log(dataset, world, seed)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    try:
        shown = plot_metapatches(columns["metapatch"], log_, out)
    except ValueError as error:
        _fail(str(error))
    console.print(f"{shown:,} devices plotted to {out}")


@app.command("methods")
def methods() -> None:
    """List the method presets."""
    from dcrec.streams.presets import PRESETS

    width = max(map(len, PRESETS))
    for name, preset in PRESETS.items():
        print(f"{name:{width}s}  {preset.summary}")


@app.command("show")
def show(report: Path) -> None:
    """Print the Markdown summary of a replay report."""
    from dcrec.replay.report import replay_markdown

    print(replay_markdown(_read_report(report)))


# what every replay report holds (DESIGN.md's report contract)
REPORT_PARTS = ("method", "dataset", "runtime", "seed", "events", "metrics", "comm", "perf")


def _read_report(path: Path) -> dict:
    """The replay report (JSON) at ``path``; a clear error if it is not one."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        _fail(f"cannot read report {path}: {error}")
    missing = [part for part in REPORT_PARTS
               if not isinstance(report, dict) or part not in report]
    if missing:
        _fail(f"{path} is not a dcrec replay report (no {', '.join(missing)})")
    return report


@app.command("eval")
def eval_(
    protocol: Annotated[str, typer.Option(help="loo (leave-last-out) or mc2sf (§5.1.1)")] = "loo",
    dataset: DatasetOption = "ml-100k",
    columns: ColumnsOption = None,
    kcore: KcoreOption = 0,
    methods: Annotated[str, typer.Option(help="comma-separated presets")] = DEFAULT_EVAL_METHODS,
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0,1,2",
    max_epochs: Annotated[int, typer.Option(help="epoch limit per training run")] = 50,
    patience: Annotated[int, typer.Option(help="early stopping on validation NDCG@10")] = 5,
    embedding_dim: EmbeddingOption = None,
    lr: LrOption = None,
    l2: L2Option = None,
    world_users: WorldUsers = None,
    world_items: WorldItems = None,
    world_events: WorldEvents = None,
    negatives: Annotated[str, typer.Option(
        help="evaluation candidates: 'unclicked' (items the user never clicked, RecBole "
             "uni100) or 'any' item but the target (RecBole's sequential configs, "
             "repeatable: True)")] = "unclicked",
    out: Annotated[Path, typer.Option(help="folder for JSON, Markdown, PNG")] = Path("runs/eval"),
    fresh: Annotated[bool, typer.Option(help="ignore finished runs kept in --out")] = False,
) -> None:
    """Train and test methods on an offline split; print a mean ± std table.

    Each finished (method, seed) run is kept under ``--out``; running the same command
    again resumes, re-using the runs whose settings match."""
    from dcrec.replay.driver import load_log
    from dcrec.replay.offline_runner import (
        METHODS,
        NEGATIVES,
        PROTOCOLS,
        kept_run,
        markdown_table,
        mean_groups,
        plot_summary,
        run_method,
        summarise,
    )
    from dcrec.replay.provenance import made_by
    from dcrec.streams.presets import PresetContext

    if protocol not in PROTOCOLS:
        _fail(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if negatives not in NEGATIVES:
        _fail(f"unknown --negatives {negatives!r}; known: {', '.join(NEGATIVES)}")
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        _fail(f"--seeds takes integers separated by commas, not {seeds!r}")
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in method_list if m not in METHODS]
    if unknown:
        _fail(f"unknown method {unknown[0]!r} for eval; known: {', '.join(METHODS)}")
    settings = _world(world_users, world_items, world_events)
    try:
        mapping = parse_columns(columns)
        log_ = load_log(dataset, settings, seed=0, columns=mapping, kcore=kcore)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    stem = f"{protocol}-{log_.name}" + ("" if negatives == "unclicked" else f"-{negatives}")
    kept = out / stem
    results, codes = [], []
    with _progress(total=len(method_list) * len(seed_list), desc=f"eval {protocol}",
                   unit="run") as bar:
        for method in method_list:
            for seed in seed_list:
                ctx = PresetContext(n_users=log_.n_users, n_items=log_.n_items, seed=seed,
                                    embedding_dim=embedding_dim, lr=lr, l2=l2)

                def on_epoch(epoch: int, loss: float, ndcg: float, m=method, s=seed) -> None:
                    bar.set_postfix_str(f"{m} seed {s} epoch {epoch} loss {loss:.3f} "
                                        f"valid NDCG@10 {ndcg:.4f}")

                settings_key = {"protocol": protocol, "dataset": log_.name,
                                "events": log_.n_events, "method": method, "seed": seed,
                                "max_epochs": max_epochs, "patience": patience,
                                **({"embedding_dim": embedding_dim, "lr": lr, "l2": l2}
                                   if (embedding_dim, lr, l2) != (None, None, None) else {}),
                                **({"negatives": negatives} if negatives != "unclicked"
                                   else {})}
                try:
                    run = kept_run(
                        kept / f"{method}-seed{seed}.json", settings_key, fresh,
                        lambda m=method, c=ctx, s=seed, f=on_epoch: run_method(
                            log_, protocol, m, s, c, max_epochs=max_epochs,
                            patience=patience, on_epoch=f, negatives=negatives))
                except ValueError as error:
                    _fail(str(error))
                results.append(run.result)
                codes.append(run.code)
                bar.update()
    summary = summarise(results)
    title = f"{protocol} on {log_.name}, seeds {','.join(map(str, seed_list))}" + (
        "" if negatives == "unclicked" else f", negatives from {negatives} item")
    table = markdown_table(summary, title)
    if protocol == "mc2sf":
        from dcrec.replay.mc2sf_offline import ablation_markdown, case_study_markdown

        titles = log_.item_titles or [str(i) for i in log_.item_ids]
        table += "\n" + ablation_markdown(summary)
        table += "\n" + case_study_markdown([r for r in results if r["seed"] == seed_list[0]],
                                            titles)
    if groups := mean_groups(results):
        from dcrec.replay.activity_groups import groups_markdown, plot_groups

        table += ("\n### Macro-AUC per activity group (DCCL Fig. 4), mean over seeds\n\n"
                  + groups_markdown(groups)
                  + f"\n![macro-AUC per activity group]({stem}-groups.png)\n")
        plot_groups(groups, out / f"{stem}-groups.png",
                    f"macro-AUC per activity group, {protocol} on {log_.name}")
    table += "\n" + made_by(codes) + "\n"
    _write_results(out / stem, {"protocol": protocol, "dataset": log_.name,
                                "seeds": seed_list, "summary": summary, "runs": results},
                   table, lambda path: plot_summary(summary, title, path))


@app.command("curve")
def curve(
    dataset: DatasetOption = "world",
    budgets: Annotated[str, typer.Option(
        help="comma-separated request budgets (0 and 1 are the ec-cdr-static and ec-cdr "
             "bounds, always run)")] = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
    methods: Annotated[str, typer.Option(help="request agents")] = "intellectreq,random",
    seeds: Annotated[str, typer.Option(help="comma-separated seeds")] = "0,1,2",
    max_events: Annotated[int | None, typer.Option(help="stop after this many events")] = None,
    replay_ratio: ReplayRatioOption = None,
    world_users: WorldUsers = None,
    world_items: WorldItems = None,
    world_events: WorldEvents = None,
    out: Annotated[Path, typer.Option(help="folder for JSON, Markdown, PNG")] = Path("runs/curve"),
    fresh: Annotated[bool, typer.Option(help="ignore finished replays kept in --out")] = False,
    kept_only: Annotated[bool, typer.Option(
        help="table the replays kept in --out only, running none")] = False,
) -> None:
    """NDCG@10 against the share of clicks that asked for parameters (IntellectReq
    Fig. 5–6): the request agents at each budget between ec-cdr (every click asks) and
    ec-cdr-static (none does). Finished replays are kept in --out and re-used."""
    from dcrec.replay.provenance import made_by
    from dcrec.replay.request_curve import AGENTS, aggregate, curve_points, markdown, plot

    try:
        budget_list = [float(b) for b in budgets.split(",") if b.strip()]
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        _fail("--budgets takes numbers and --seeds integers, separated by commas")
    if any(not 0 < b <= 1 for b in budget_list):
        _fail("a request budget is a share of clicks in (0, 1]")
    agents = tuple(m.strip() for m in methods.split(",") if m.strip())
    if unknown := [m for m in agents if m not in AGENTS]:
        _fail(f"unknown request agent {unknown[0]!r}; known: {', '.join(AGENTS)}")
    config = _config(ReplayConfig, dataset=dataset, max_events=max_events,
                     model=_config(ModelConfig, replay_ratio=replay_ratio),
                     world=_world(world_users, world_items, world_events))
    total = len(seed_list) * (2 + len(agents) * len(budget_list))
    with _progress(total=total, desc="curve", unit="replay") as bar:
        try:
            rows = curve_points(config, budget_list, seed_list, agents,
                                out / f"curve-{dataset}", fresh,
                                on_run=lambda name: (bar.set_postfix_str(name), bar.update()),
                                kept_only=kept_only)
        except (ValueError, FileNotFoundError) as error:
            _fail(str(error))
    if not rows:
        _fail(f"no replays with these settings kept in {out / f'curve-{dataset}'}")
    points = aggregate(rows)
    title = f"requests against NDCG@10 on {dataset}, seeds {seeds}"
    table = markdown(points, title) + "\n" + made_by([r["code"] for r in rows]) + "\n"
    _write_results(out / f"curve-{dataset}", {"dataset": dataset, "seeds": seed_list,
                                              "points": points, "runs": rows},
                   table, lambda path: plot(points, title, path))


@app.command("resources")
def resources(
    dataset: DatasetOption = "ml-100k",
    lengths: Annotated[str, typer.Option(help="comma-separated history lengths")] = "10,15,20,25",
    out: Annotated[Path, typer.Option(help="folder for JSON, Markdown, PNG")] = Path(
        "docs/results"),
) -> None:
    """Parameters, FLOPs and peak memory of one inference of each sequence model by
    history length (CoCorrRec Table 4, Fig. 4); of the dataset only the catalogue size
    is used (the item embeddings' share of the parameters)."""
    from dcrec.replay.driver import load_log
    from dcrec.replay.resources import markdown, plot, resource_table

    try:
        length_list = tuple(int(s) for s in lengths.split(",") if s.strip())
    except ValueError:
        _fail(f"--lengths takes integers separated by commas, not {lengths!r}")
    try:
        log_ = load_log(dataset, WorldSettings(), seed=0, columns=None, kcore=0)
        rows = resource_table(log_.n_items, length_list)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    _write_results(out / f"resources-{log_.name}",
                   {"dataset": log_.name, "n_items": log_.n_items, "rows": rows},
                   markdown(rows), lambda path: plot(rows, path))


from dcrec import cli_ops  # noqa: E402, F401  (registers up / down on the app)


@app.command("tune")
def tune(
    dataset: DatasetOption = "ml-100k",
    method: Annotated[str, typer.Option(help="the preset to tune (see `dcrec methods`)")] = (
        "dccl"),
    upload_interval: Annotated[str, typer.Option(
        help="comma-separated simulated times between device uploads")] = "1h,6h,1d",
    cloud_interval: Annotated[str, typer.Option(
        help="comma-separated simulated times between cloud jobs")] = "1d,3d,7d",
    request_budget: Annotated[str, typer.Option(
        help="comma-separated shares of clicks that may request")] = "0.1",
    search: Annotated[str, typer.Option(help="grid, or optuna (NSGA-II over the values)")] = (
        "grid"),
    max_trials: Annotated[int | None, typer.Option(
        help="at most this many trials (grid: the first N points; optuna: default 20)")] = None,
    jobs: Annotated[int | None, typer.Option(help="trials at once (default: one per core)")] = (
        None),
    seed: int = 0,
    max_events: Annotated[int | None, typer.Option(help="stop after this many events")] = None,
    world_users: WorldUsers = None,
    world_items: WorldItems = None,
    world_events: WorldEvents = None,
    out: Annotated[Path, typer.Option(help="folder for JSON, Markdown, PNG")] = Path("runs/tune"),
    fresh: Annotated[bool, typer.Option(help="ignore finished trials kept in --out")] = False,
) -> None:
    """Sweep how often devices upload, the cloud retrains and devices may ask; each trial
    a local-runtime replay, in parallel, kept and resumable. Writes the table and the
    Pareto front of quality (NDCG@10) against cost (uploads + requests + cloud compute
    seconds)."""
    from dcrec.config import parse_duration
    from dcrec.replay.provenance import made_by
    from dcrec.replay.tuning import (
        TrialRunner,
        TuneSpace,
        default_jobs,
        grid_search,
        markdown,
        optuna_search,
        pareto_front,
        plot,
        plot_rounds,
        rounds_markdown,
    )
    from dcrec.streams.presets import PRESETS

    if search not in ("grid", "optuna"):
        _fail("--search is grid or optuna")
    try:
        space = TuneSpace(
            upload_interval=[parse_duration(v) for v in upload_interval.split(",") if v],
            cloud_interval=[parse_duration(v) for v in cloud_interval.split(",") if v],
            request_budget=[float(v) for v in request_budget.split(",") if v])
    except ValueError as error:
        _fail(f"bad value in the sweep: {error}")
    if any(not 0 <= b <= 1 for b in space.request_budget):
        _fail("a request budget is a share of clicks in [0, 1]")
    if any(v <= 0 for v in space.upload_interval + space.cloud_interval):
        _fail("intervals must be positive")
    config = _config(ReplayConfig, dataset=dataset, method=method, seed=seed,
                     max_events=max_events,
                     world=_world(world_users, world_items, world_events))
    if method not in PRESETS:
        _fail(f"unknown method {method!r}; see `dcrec methods`")
    total = (min(max_trials or 20, 10_000) if search == "optuna"
             else len(space.grid()[:max_trials]))
    stem = out / f"tune-{dataset}-{method}"
    with _progress(total=total, desc="tune", unit="trial") as bar:
        runner = TrialRunner(config, stem, jobs or default_jobs(), fresh,
                             on_trial=lambda name: (bar.set_postfix_str(name), bar.update()))
        try:
            rows = (optuna_search(space, runner, total, seed) if search == "optuna"
                    else grid_search(space, runner, max_trials))
        except (ValueError, FileNotFoundError) as error:
            _fail(str(error))
    title = f"tuning {method} on {dataset} (seed {seed})"
    table = markdown(rows, title) + "\n" + made_by([r["code"] for r in rows]) + "\n"
    if plot_rounds(rows, f"quality per cloud round, {method} on {dataset} (seed {seed})",
                   stem.parent / f"{stem.name}-rounds.png"):
        table += rounds_markdown(rows) + f"\n![quality per round]({stem.name}-rounds.png)\n"
    _write_results(stem, {"dataset": dataset, "method": method, "search": search,
                          "trials": rows, "front": pareto_front(rows)},
                   table, lambda path: plot(rows, title, path))


@app.command("request-costs")
def request_costs_(
    dataset: DatasetOption = "ml-100k",
    clicks_per_second: Annotated[float, typer.Option(
        help="the click rate to extrapolate to")] = 1_000_000,
    budgets: Annotated[str, typer.Option(
        help="request budgets of the request agent to extrapolate at")] = "0.1,0.3",
    world_users: WorldUsers = None,
    world_items: WorldItems = None,
    world_events: WorldEvents = None,
    out: Annotated[Path, typer.Option(help="folder for JSON and Markdown")] = Path("runs"),
) -> None:
    """What a parameter request costs the device, the network and the cloud, and the
    bandwidth and cloud compute at a click rate with and without IntellectReq
    (IntellectReq Table 1 and Table 5)."""
    from dcrec.replay.driver import open_source
    from dcrec.replay.request_costs import extrapolate, markdown, request_costs

    try:
        rates = {"ec-cdr": 1.0, **{f"intellectreq (budget {float(b):g})": float(b)
                                   for b in budgets.split(",") if b.strip()},
                 "ec-cdr-static": 0.0}
    except ValueError:
        _fail("--budgets takes numbers separated by commas")
    if any(not 0 <= r <= 1 for r in rates.values()) or clicks_per_second <= 0:
        _fail("budgets are shares of clicks in [0, 1] and the click rate is positive")
    config = _config(ReplayConfig, dataset=dataset,
                     world=_world(world_users, world_items, world_events))
    try:
        source = open_source(config)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    costs = request_costs(source.n_items, config.model.max_len)
    rows = extrapolate(costs, clicks_per_second, rates)
    _write_results(out / f"request-costs-{source.name}",
                   {"costs": costs, "clicks_per_second": clicks_per_second, "rows": rows},
                   markdown(costs, rows, clicks_per_second))


@app.command()
def scale(
    methods: Annotated[str, typer.Option(help="presets to run, comma-separated")] =
        "gru4rec,intellectreq",
    devices: Annotated[int, typer.Option(help="devices (world users)")] = 1_000_000,
    items: Annotated[int, typer.Option(help="world items")] = 20_000,
    events: Annotated[int, typer.Option(help="world events")] = 10_000_000,
    clicks_per_second: Annotated[float, typer.Option(
        help="the click rate to extrapolate to")] = 1_000_000,
    seed: Annotated[int, typer.Option(help="world and model seed")] = 0,
    out: Annotated[Path, typer.Option(help="folder for JSON, Markdown and PNG")] = Path("runs"),
    fresh: Annotated[bool, typer.Option(help="ignore finished runs kept in --out")] = False,
) -> None:
    """The synthetic world at a million devices through the local runtime, one process
    per method: memory per device and in total, throughput, and bandwidth and cloud
    cores at a click rate from what the run measured per click.

    Each method's finished run is kept under ``--out``; the same command again re-uses
    the runs whose settings match, so methods can be added one at a time."""
    from dcrec.replay.offline_runner import kept_run
    from dcrec.replay.provenance import made_by
    from dcrec.replay.scale import extrapolate, markdown, plot, scale_row_in_own_process
    from dcrec.streams.presets import PRESETS

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names or (unknown := [m for m in names if m not in PRESETS]):
        _fail(f"unknown method {(unknown or [''])[0]!r}; see `dcrec methods`")
    if clicks_per_second <= 0:
        _fail("the click rate must be positive")
    config = _config(ReplayConfig, dataset="world", seed=seed,
                     world=_world(devices, items, events, {"users": "--devices", "items": "--items",
                                                            "events": "--events"}))
    console.print(f"{len(names)} replays of {devices:,} devices and {events:,} events, "
                  "one process each")
    rows, codes = [], []
    with _progress(total=len(names), desc="scale", unit="method") as bar:
        for name in names:
            bar.set_postfix_str(name)
            run = config.model_copy(update={"method": name})
            kept = kept_run(out / f"scale-{devices}" / f"{name}.json",
                            {"config": run.model_dump(mode="json")}, fresh,
                            lambda r=run: scale_row_in_own_process(r))
            rows.append(kept.result)
            codes.append(kept.code)
            bar.update()
    extrapolated = extrapolate(rows, clicks_per_second)
    _write_results(out / f"scale-{devices}", {"rows": rows, "extrapolated": extrapolated,
                                              "clicks_per_second": clicks_per_second},
                   markdown(rows, extrapolated, clicks_per_second) + "\n"
                   + made_by(codes) + "\n",
                   lambda path: plot(rows, extrapolated, path))
