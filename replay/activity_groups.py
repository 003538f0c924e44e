"""Macro-AUC per activity group across replays (DCCL Fig. 4): which users a method
helps, from the most active group to the long tail."""

from __future__ import annotations

from pathlib import Path

from dcrec.models.metrics import head_and_tail


def _label(report: dict) -> str:
    seeds = str(report["seed"])
    return f"{report['method']} (seed{'s' if ',' in seeds else ''} {seeds})"


def groups_markdown(reports: list[dict]) -> str:
    """One row per activity group, one column per report; then the head and tail
    halves' means."""
    labels = [_label(r) for r in reports]
    n = min(len(r["groups"]) for r in reports)
    lines = ["| group | clicks | " + " | ".join(labels) + " |",
             "| --- | --- |" + " --- |" * len(reports)]
    for g in range(n):
        first = reports[0]["groups"][g]
        cells = [f"{r['groups'][g]['macro_auc']:.4f}" for r in reports]
        lines.append(f"| {g + 1} | {first['min_clicks']}–{first['max_clicks']} | "
                     + " | ".join(cells) + " |")
    half = n // 2
    halves = [head_and_tail(r["groups"][:n]) for r in reports]
    for label, name in ((f"groups 1–{half} (head)", "macro-AUC head"),
                        (f"groups {half + 1}–{n} (tail)", "macro-AUC tail")):
        lines.append(f"| {label} | | " + " | ".join(f"{h[name]:.4f}" for h in halves) + " |")
    return "\n".join(lines) + "\n"


def plot_groups(reports: list[dict], path: Path, title: str = "") -> None:
    """Macro-AUC per group, one line per report, most active group first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    for report in reports:
        groups = report["groups"]
        ax.plot(range(1, len(groups) + 1), [g["macro_auc"] for g in groups], marker="o",
                markersize=3, label=_label(report))
    ax.set_xticks(range(1, max(len(r["groups"]) for r in reports) + 1))
    ax.set_xlabel("activity group (1 = most active)")
    ax.set_ylabel("macro-AUC")
    ax.set_title(title or f"macro-AUC per activity group, {reports[0]['dataset']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
