"""Where devices' metapatches lie (DCCL Fig. 7): each device's θ̂^(m) projected to 2-D
(principal components), coloured by the category its user clicks most."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from dcrec.replay.log import InteractionLog
from dcrec.streams.schema import CLICK


def most_clicked_category(log: InteractionLog) -> np.ndarray:
    """Per user, the category of most of its clicks (ties: the lowest id); -1 without."""
    result = np.full(log.n_users, -1, np.int64)
    if log.item_category is None:
        return result
    clicks = log.event == CLICK
    n_categories = int(log.item_category.max(initial=0)) + 1
    counts = np.zeros((log.n_users, n_categories), np.int64)
    np.add.at(counts, (log.user[clicks], log.item_category[log.item[clicks]]), 1)
    has = counts.sum(1) > 0
    result[has] = counts[has].argmax(1)
    return result


def principal_plane(x: np.ndarray) -> np.ndarray:
    """``x`` ``[n, d]`` on its first two principal components ``[n, 2]``."""
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_metapatches(metapatch: np.ndarray, log: InteractionLog, path: Path) -> int:
    """Plot every device that has learnt a metapatch; returns how many were plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learnt = np.flatnonzero(np.abs(metapatch).sum(1) > 0)
    if len(learnt) < 3:
        raise ValueError("fewer than 3 devices have learnt a metapatch")
    points = principal_plane(metapatch[learnt].astype(np.float64))
    category = most_clicked_category(log)[learnt]
    names = log.category_names or []
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    colours = plt.get_cmap("tab20")
    for k, c in enumerate(np.unique(category)):
        mine = category == c
        label = names[c] if 0 <= c < len(names) else ("none" if c < 0 else str(c))
        ax.scatter(points[mine, 0], points[mine, 1], s=8, alpha=0.7, label=label,
                   color=colours(k % 20))
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title(f"metapatches of {len(learnt):,} devices, {log.name}, by most clicked category")
    if len(np.unique(category)) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(learnt)
