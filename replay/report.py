"""Reports: the JSON contract written to disk and its Markdown summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

from dcrec.models.metrics import METRIC_NAMES


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False))
    tmp.replace(path)


def _fmt(value: float) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "—" if missing else f"{value:.4f}"


def replay_markdown(report: dict) -> str:
    """A short Markdown summary of one replay report."""
    ev, comm, perf = report["events"], report["comm"], report["perf"]
    # local: a micro-batch's processing; kafka: producer send -> state committed (in an
    # event-time replay that includes the wait behind the producer, which runs ahead)
    latency_of = "event→state" if report["runtime"] == "kafka" else "batch"
    lines = [
        f"## {report['method']} on {report['dataset']} "
        f"({report['runtime']}, seed {report['seed']})",
        "",
        "| " + " | ".join(METRIC_NAMES) + " |",
        "|" + " --- |" * len(METRIC_NAMES),
        "| " + " | ".join(_fmt(report["metrics"][m]) for m in METRIC_NAMES) + " |",
        "",
        f"- events: {ev['clicks']:,} clicks, {ev['exposures']:,} exposures, "
        f"{ev['invalid']:,} invalid, {ev['evaluated']:,} clicks scored",
        f"- communication: {comm['uploads']:,} uploads, {comm['requests']:,} requests, "
        f"{comm['bytes_up']:,} B up, {comm['bytes_down']:,} B down, "
        f"{comm['releases']:,} model releases"
        + (f", {comm['hints']:,} hints ({comm['hint_bytes']:,} B down), "
           f"{comm['upload_bytes']:,} B of uploads up" if comm.get("hints") else ""),
        f"- speed: {perf['wall_seconds']:.1f} s, {perf['events_per_second']:,.0f} events/s "
        f"(device path {perf['device_events_per_second']:,.0f}/s), "
        f"{latency_of} p50 {perf['p50_ms']:.1f} ms / p99 {perf['p99_ms']:.1f} ms, "
        f"peak RSS {perf['peak_rss_mb']:,.0f} MB, "
        f"{perf['state_bytes_per_device']:,} B state/device"
        + (f", trained at {perf['training_threads']} torch thread(s)"
           if "training_threads" in perf else ""),
    ]
    if ev["invalid_reasons"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in ev["invalid_reasons"].items())
        lines.append(f"- invalid input by reason: {reasons}")
    if report.get("parameter_age"):
        ages = ", ".join(f"{k}: {v:,}" for k, v in report["parameter_age"].items())
        lines.append(f"- scored clicks by the age of their parameters (clicks): {ages}")
    return "\n".join(lines) + "\n"
