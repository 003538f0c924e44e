"""``dcrec scale``: the synthetic world at a million devices through the local runtime.

For each method, one replay of a world of ``devices`` users and ``events`` events in a
fresh process (so its peak RSS is its own): throughput, the device state per device and
in total, the process's peak RSS per device, and the traffic and cloud time the run
measured per click. The extrapolation (IntellectReq Table 5 style) multiplies those
per-click figures by a click rate: bandwidth up and down, and the cloud cores its jobs
and services would keep busy. Per-click traffic includes model downloads, which depend
on how many clicks a device makes per release; the world's activity sets that here.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from dcrec.replay.driver import run_replay
from dcrec.replay.request_costs import si_prefixed

from dcrec.config import ReplayConfig

MIB = 2**20


def scale_row(config: ReplayConfig) -> dict:
    """One method's replay at scale, reduced to the figures of the scale table."""
    report = run_replay(config)
    perf, comm, events = report["perf"], report["comm"], report["events"]
    devices = config.world.users
    clicks = max(events["clicks"], 1)
    return {
        "method": config.method, "devices": devices,
        "events": events["clicks"] + events["exposures"], "clicks": events["clicks"],
        "wall_seconds": perf["wall_seconds"], "events_per_second": perf["events_per_second"],
        "device_events_per_second": perf["device_events_per_second"],
        "state_bytes_per_device": perf["state_bytes_per_device"],
        "state_mb": devices * perf["state_bytes_per_device"] / MIB,
        "peak_rss_mb": perf["peak_rss_mb"],
        "rss_bytes_per_device": perf["peak_rss_mb"] * MIB / devices,
        "request_rate": comm["request_rate"],
        "bytes_up_per_click": (comm["bytes_up"] + comm["upload_bytes"]) / clicks,
        "bytes_down_per_click": comm["bytes_down"] / clicks,
        "cloud_seconds_per_click": perf.get("cloud_seconds", 0.0) / clicks,
        "NDCG@10": report["metrics"].get("NDCG@10"),
    }


def scale_row_in_own_process(config: ReplayConfig) -> dict:
    """:func:`scale_row` in a spawned process of its own (its peak RSS is the method's)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(scale_row, config).result()


def extrapolate(rows: list[dict], clicks_per_second: float) -> list[dict]:
    """Bandwidth and cloud cores at ``clicks_per_second`` from each run's per-click
    figures."""
    return [{"method": r["method"], "request_rate": r["request_rate"],
             "up_bytes_per_second": clicks_per_second * r["bytes_up_per_click"],
             "down_bytes_per_second": clicks_per_second * r["bytes_down_per_click"],
             "cloud_cores": clicks_per_second * r["cloud_seconds_per_click"]}
            for r in rows]


def markdown(rows: list[dict], extrapolated: list[dict], clicks_per_second: float) -> str:
    """The scale table and the extrapolation as Markdown."""
    first = rows[0]
    lines = [f"### {first['devices']:,} devices, {first['events']:,} events (local runtime)",
             "", "| method | events/s | device path events/s | state B/device | state total "
             "| peak RSS | RSS B/device | NDCG@10 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ndcg = f"{r['NDCG@10']:.4f}" if r["NDCG@10"] is not None else "–"
        lines.append(f"| {r['method']} | {r['events_per_second']:,.0f} "
                     f"| {r['device_events_per_second']:,.0f} "
                     f"| {r['state_bytes_per_device']:,} | {r['state_mb']:,.0f} MiB "
                     f"| {r['peak_rss_mb']:,.0f} MiB | {r['rss_bytes_per_device']:,.0f} "
                     f"| {ndcg} |")
    lines += ["", f"### At {clicks_per_second:,.0f} clicks/s, from the traffic and cloud "
              "time measured per click", "",
              "| method | request rate | up | down | cloud cores |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for e in extrapolated:
        lines.append(f"| {e['method']} | {e['request_rate']:.3f} "
                     f"| {si_prefixed(e['up_bytes_per_second'], 'B/s')} "
                     f"| {si_prefixed(e['down_bytes_per_second'], 'B/s')} "
                     f"| {e['cloud_cores']:,.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], extrapolated: list[dict], path: Path) -> None:
    """Memory per device (state and whole process) and bandwidth at the click rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["method"] for r in rows]
    x = np.arange(len(names))
    fig, (memory, traffic) = plt.subplots(1, 2, figsize=(10, 3.8))
    memory.bar(x - 0.2, [r["state_bytes_per_device"] for r in rows], 0.4, label="state")
    memory.bar(x + 0.2, [r["rss_bytes_per_device"] for r in rows], 0.4,
               label="process peak RSS / devices")
    memory.set_title(f"bytes per device, {rows[0]['devices']:,} devices")
    traffic.bar(x - 0.2, [e["up_bytes_per_second"] / 1e6 for e in extrapolated], 0.4,
                label="up")
    traffic.bar(x + 0.2, [e["down_bytes_per_second"] / 1e6 for e in extrapolated], 0.4,
                label="down")
    traffic.set_yscale("symlog")
    traffic.set_title("MB/s at the click rate")
    for ax in (memory, traffic):
        ax.set_xticks(x, names, rotation=20)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
