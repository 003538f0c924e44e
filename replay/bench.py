"""``dcrec bench``: throughput and latency of a runtime, appended to ``BENCHMARKS.md``
with the machine, the command and the date.

- **local**: a replay on the simulated clock; events/s over the whole run and over the
  device path alone, micro-batch latency.
- **kafka**: two live replays through the broker, the workers and Redis. *Throughput*:
  unpaced, events/s from the first event produced to the last state committed.
  *Latency*: paced at ``latency_load`` of that throughput, so queues stay short; p50/p99
  of event-to-state latency (producer send → the Redis commit holding the event's
  effect). An unpaced run's latency only measures how long its queue grew.
- **device-path arithmetic** (local, ``flops``): a second replay counts the FLOPs of
  the device processor's matrix products (torch's ``FlopCounterMode``: GRU, MLP and
  attention products; element-wise work is not counted); divided into this machine's
  float32 matrix-product rate they give the device path's ceiling — the events/s no
  implementation of the same arithmetic passes here.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from dcrec.replay.driver import open_source, run_replay

from dcrec.config import KafkaRuntimeSettings, ReplayConfig


def machine() -> str:
    """CPU model, cores and memory of this machine and torch's thread count, in one
    line."""
    import psutil
    import torch

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total / 2**30
    return (f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}, "
            f"torch threads {torch.get_num_threads()}")


def event_span(config: ReplayConfig) -> float:
    """Seconds of event time the replay's stream covers."""
    source = open_source(config)
    first = last = None
    for batch in source.batches(config.micro_batch):
        if len(batch):
            first = int(batch.ts[0]) if first is None else first
            last = int(batch.ts[-1])
    return float(max((last or 0) - (first or 0), 1))


# the request agents whose one-device decision ``dcrec bench`` times (IntellectReq Table 1)
EDGE_DECISIONS = ("intellectreq", "intellectreq-drift", "lof", "ocsvm")


def edge_decision_ms(config: ReplayConfig, repeats: int = 500) -> tuple[float, float]:
    """p50/p99 ms of one device's request decision (IntellectReq's edge inference), one
    device at a time as on a phone: for ``intellectreq`` Ω over its new click window,
    the agent's code, MRD and DM's uncertainty; for ``lof``/``ocsvm`` the detector
    fitted on the window's item embeddings and the newest click's score."""
    import numpy as np
    import torch
    from dcrec.models.request_baselines import NOVELTY, drift_since
    from dcrec.replay.driver import preset_context
    from dcrec.replay.request_costs import p50_p99_ms
    from dcrec.streams.presets import build_pipeline

    if config.method not in EDGE_DECISIONS:
        raise ValueError(f"no edge decision to time for {config.method!r}")
    source = open_source(config)
    model = build_pipeline(config.method, preset_context(config, source)).processor.model
    rng = np.random.default_rng(config.seed)
    width = config.model.max_len
    then, since = torch.zeros(1, model.rec.dim), torch.ones(1)
    embedding = model.rec.item_embedding.weight.detach().numpy()
    length = np.array([width])

    def decide(window: torch.Tensor) -> None:
        if config.method in NOVELTY:
            NOVELTY[config.method](embedding[window.numpy()], length)
        else:
            code = model.agent.encoder(model.rec.user_state(window, torch.tensor([width])))
            drift = None
            if model.agent.reads_drift:   # the newest click against the whole window
                embedded, newest = embedding[window.numpy()], np.ones(1, np.int64)
                drift = torch.from_numpy(drift_since(embedded, length, newest, embedded,
                                                     length))
            model.agent.mrs(then, code, since, drift)

    windows = iter([torch.from_numpy(rng.integers(1, source.n_items + 1, (1, width)))
                    for _ in range(repeats)])
    with torch.inference_mode():
        decide(torch.ones(1, width, dtype=torch.int64))   # imports and first-call set-up
        return p50_p99_ms(lambda: decide(next(windows)), repeats)


def gemm_gflops(size: int = 1024, seconds: float = 1.0) -> float:
    """This machine's float32 matrix-product rate at torch's thread count: GFLOP/s of
    ``[2·size, size] @ [size, size]`` repeated for ``seconds``."""
    import torch

    a, b = torch.randn(2 * size, size), torch.randn(size, size)
    a @ b   # first-call set-up
    repeats, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        a @ b
        repeats += 1
    return 2.0 * 2 * size * size * size * repeats / elapsed / 1e9


def bench_local(config: ReplayConfig, flops: bool = False) -> dict:
    """One timed replay; with ``flops``, a second one counting the device path's FLOPs."""
    report = run_replay(config)
    perf = report["perf"]
    latency = "micro-batch"
    if config.method in EDGE_DECISIONS:
        p50, p99 = edge_decision_ms(config)
        latency += f"; request decision p50/p99 {p50:.2f}/{p99:.2f} ms per click, one device"
    events = report["events"]["clicks"] + report["events"]["exposures"]
    row = {"runtime": "local", "method": config.method, "dataset": report["dataset"],
           "events": events, "events_per_second": perf["events_per_second"],
           "device_events_per_second": perf["device_events_per_second"],
           "p50_ms": perf["p50_ms"], "p99_ms": perf["p99_ms"], "latency": latency,
           "peak_rss_mb": perf["peak_rss_mb"],
           "state_bytes_per_device": perf["state_bytes_per_device"]}
    if flops:
        counted = run_replay(config, count_flops=True)
        row["device_flops_per_event"] = counted["perf"]["device_flops"] / max(events, 1)
        row["device_flops_per_scored_click"] = (counted["perf"]["device_flops"]
                                                / max(counted["events"]["evaluated"], 1))
    return row


def bench_kafka(config: ReplayConfig, settings: KafkaRuntimeSettings,
                latency_load: float = 0.5) -> dict:
    from dcrec.replay.kafka_replay import run_kafka_replay

    unpaced = run_kafka_replay(config, open_source(config),
                               settings.model_copy(update={"speed": float("inf")}))
    throughput = unpaced["perf"]["events_per_second"]
    events = unpaced["events"]["clicks"] + unpaced["events"]["exposures"]
    # speed-up that produces latency_load × throughput events per wall second
    speed = latency_load * throughput * event_span(config) / max(events, 1)
    paced = run_kafka_replay(config, open_source(config),
                             settings.model_copy(update={"speed": speed}))
    counters = paced["kafka"]["device_counters"]
    return {"runtime": "kafka", "method": config.method, "dataset": unpaced["dataset"],
            "events": events, "events_per_second": throughput,
            "device_events_per_second": throughput,
            "p50_ms": paced["perf"]["p50_ms"], "p99_ms": paced["perf"]["p99_ms"],
            "latency": (f"event→state at {paced['perf']['events_per_second']:,.0f} ev/s; "
                        f"of it send→worker p50/p99 {paced['perf']['delivery_p50_ms']:.0f}/"
                        f"{paced['perf']['delivery_p99_ms']:.0f} ms"),
            "peak_rss_mb": unpaced["perf"]["peak_rss_mb"],
            "state_bytes_per_device": unpaced["perf"]["state_bytes_per_device"],
            "workers": settings.workers, "partitions": unpaced["kafka"]["partitions"],
            "lost_or_doubled_devices": counters["mismatched_devices"]}


def bench_record(rows: list[dict], command: str | None = None,
                 gemm_rate: float | None = None) -> dict:
    """One bench run: when, on what machine, by which command, its rows, and (when the
    device paths' FLOPs were counted) this machine's matrix-product rate in GFLOP/s."""
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
            "command": command or "dcrec " + shlex.join(sys.argv[1:]),
            "gemm_gflops": gemm_rate, "rows": rows}


def markdown_section(record: dict) -> str:
    """A dated section of BENCHMARKS.md: machine, command, one table row per result;
    each device path against river-mf's of the run; and the device-path arithmetic of
    the rows that counted it, against the machine's matrix-product rate."""
    rows, gemm_rate = record["rows"], record["gemm_gflops"]
    date = datetime.fromisoformat(record["date"])
    lines = [f"## {date:%Y-%m-%d %H:%M} UTC", "",
             f"- machine: {record['machine']}", f"- command: `{record['command']}`", "",
             "| runtime | method | dataset | events | events/s | device path events/s "
             "| p50 ms | p99 ms | latency of | peak RSS MB | state B/device |",
             "|" + " --- |" * 11]
    for r in rows:
        lines.append(
            f"| {r['runtime']} | {r['method']} | {r['dataset']} | {r['events']:,} "
            f"| {r['events_per_second']:,.0f} | {r['device_events_per_second']:,.0f} "
            f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['latency']} "
            f"| {r['peak_rss_mb']:,.0f} | {r['state_bytes_per_device']:,} |")
    reference = {(r["runtime"], r["dataset"]): r["device_events_per_second"]
                 for r in rows if r["method"] == "river-mf" and r["device_events_per_second"]}
    ratios = [f"{r['method']} {r['device_events_per_second'] / reference[key]:.1f}×"
              for r in rows if r["method"] != "river-mf"
              and (key := (r["runtime"], r["dataset"])) in reference]
    if ratios:
        lines += ["", "Device path events/s against river-mf's in this run: "
                  + ", ".join(ratios) + "."]
    counted = [r for r in rows if "device_flops_per_event" in r]
    if counted and gemm_rate is not None:
        lines += ["", f"Device-path arithmetic: FLOPs of the device processor's matrix "
                  f"products (a second, counted replay), against this machine's float32 "
                  f"matrix products at {gemm_rate:.1f} GFLOP/s; the ceiling is that rate "
                  f"divided by the FLOPs per event.", "",
                  "| method | dataset | MFLOP/event | MFLOP/scored click | ceiling events/s "
                  "| device path events/s | of the ceiling |", "|" + " --- |" * 7]
        for r in counted:
            per_event, measured = r["device_flops_per_event"], r["device_events_per_second"]
            ceiling = gemm_rate * 1e9 / per_event if per_event > 0 else None
            lines.append(
                f"| {r['method']} | {r['dataset']} | {per_event / 1e6:.3f} "
                f"| {r['device_flops_per_scored_click'] / 1e6:.3f} "
                f"| {f'{ceiling:,.0f}' if ceiling else '—'} | {measured:,.0f} "
                f"| {f'{measured / ceiling:.0%}' if ceiling else '—'} |")
    return "\n".join(lines) + "\n"


def append_benchmarks(record: dict, path: Path = Path("BENCHMARKS.md")) -> None:
    """Append a bench run to ``path`` (Markdown) and, one JSON line, to the ``.jsonl``
    file beside it."""
    if not path.exists():
        path.write_text("# Benchmarks\n\nWritten by `dcrec bench`; newest last.\n")
    with path.open("a") as out:
        out.write("\n" + markdown_section(record))
    with path.with_suffix(".jsonl").open("a") as out:
        out.write(json.dumps(record) + "\n")
