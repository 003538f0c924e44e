"""Ranking metrics for sampled-candidate evaluation.

Each evaluated interaction is one row of scores: column 0 is the true item, the other
columns are sampled negatives. The true item's rank counts ties against it
(``rank = 1 + #{neg >= pos}``), so a model that scores everything alike gets no credit.

    HR@k    = 1[rank <= k]
    NDCG@k  = 1[rank <= k] / log2(rank + 1)       (one relevant item, so IDCG = 1)
    MRR     = 1 / rank
    AUC     = (#{neg < pos} + ½·#{neg = pos}) / #neg        (per row)
    UAUC    = mean over users of the user's mean row AUC
    macro-AUC of a user group = mean over its users of their AUC   (DCCL §4.2, Fig. 4)

>>> import numpy as np
>>> ranks = rank_of_positive(np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]]))
>>> ranks.tolist()
[1, 2]
>>> float(ndcg_at(ranks, 5).mean())
0.8154648767857288
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

METRIC_NAMES = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR", "AUC", "UAUC")
GROUP_METRIC_NAMES = ("macro-AUC head", "macro-AUC tail")  # see head_and_tail
ROUND_METRICS = ("HR@10", "NDCG@10", "AUC")  # per cloud round (RankingEvaluator.segments)


def rank_of_positive(scores: np.ndarray) -> np.ndarray:
    """1-based rank of column 0 among its row, ties counted against it."""
    positive = scores[:, :1]
    return 1 + np.count_nonzero(scores[:, 1:] >= positive, axis=1)


def row_auc(scores: np.ndarray) -> np.ndarray:
    """Per-row AUC of column 0 against the other columns (ties count one half)."""
    positive = scores[:, :1]
    negatives = scores[:, 1:]
    below = np.count_nonzero(negatives < positive, axis=1)
    ties = np.count_nonzero(negatives == positive, axis=1)
    return (below + 0.5 * ties) / negatives.shape[1]


def head_and_tail(groups: list[dict]) -> dict[str, float]:
    """Mean macro-AUC of the more active half of the activity groups (head) and of the
    less active half (tail: with 20 groups, DCCL's "10 least active groups")."""
    half = len(groups) // 2
    if half == 0:
        return {name: float("nan") for name in GROUP_METRIC_NAMES}
    aucs = [g["macro_auc"] for g in groups]
    return {"macro-AUC head": float(np.mean(aucs[:half])),
            "macro-AUC tail": float(np.mean(aucs[half:]))}


def hit_rate_at(ranks: np.ndarray, k: int) -> np.ndarray:
    return (ranks <= k).astype(np.float64)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


@dataclass
class RankingEvaluator:
    """Accumulates per-interaction ranks and AUCs and summarises them.

    Rows arrive in any number of calls (one per micro-batch); the summary is the same
    however the stream was cut.
    """

    users: list[np.ndarray] = field(default_factory=list)
    ranks: list[np.ndarray] = field(default_factory=list)
    aucs: list[np.ndarray] = field(default_factory=list)

    def add(self, users: np.ndarray, scores: np.ndarray) -> None:
        if len(users) == 0:
            return
        if not np.all(np.isfinite(scores)):
            raise ValueError("model produced non-finite scores")
        self.users.append(np.asarray(users, dtype=np.int64))
        self.ranks.append(rank_of_positive(scores))
        self.aucs.append(row_auc(scores))

    @property
    def count(self) -> int:
        return int(sum(len(u) for u in self.users))

    def _columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.users:
            empty = np.zeros(0)
            return empty.astype(np.int64), empty.astype(np.int64), empty
        return np.concatenate(self.users), np.concatenate(self.ranks), np.concatenate(self.aucs)

    def user_auc(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, their mean AUC), users sorted ascending."""
        users, _, aucs = self._columns()
        ids, inverse = np.unique(users, return_inverse=True)
        sums = np.bincount(inverse, weights=aucs, minlength=len(ids))
        counts = np.bincount(inverse, minlength=len(ids))
        return ids, sums / np.maximum(counts, 1)

    def summary(self) -> dict[str, float]:
        _, ranks, aucs = self._columns()
        if len(ranks) == 0:
            return {name: float("nan") for name in METRIC_NAMES}
        _, per_user = self.user_auc()
        return {
            "HR@1": float(hit_rate_at(ranks, 1).mean()),
            "HR@5": float(hit_rate_at(ranks, 5).mean()),
            "HR@10": float(hit_rate_at(ranks, 10).mean()),
            "NDCG@5": float(ndcg_at(ranks, 5).mean()),
            "NDCG@10": float(ndcg_at(ranks, 10).mean()),
            "MRR": float((1.0 / ranks).mean()),
            "AUC": float(aucs.mean()),
            "UAUC": float(per_user.mean()),
        }

    def segments(self, starts: list[int]) -> list[dict]:
        """HR@10, NDCG@10 and AUC of the rows between consecutive ``starts`` (row
        counts, ascending), the first segment from row 0, the last to the end; empty
        segments are left out. With the row count at each cloud job as ``starts``, the
        quality of each round's models (DCCL Fig. 5)."""
        _, ranks, aucs = self._columns()
        bounds = [0, *starts, len(ranks)]
        out = []
        for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            if hi > lo:
                out.append({"segment": k, "rows": hi - lo,
                            **dict(zip(ROUND_METRICS, (
                                float(hit_rate_at(ranks[lo:hi], 10).mean()),
                                float(ndcg_at(ranks[lo:hi], 10).mean()),
                                float(aucs[lo:hi].mean())), strict=True))})
        return out

    def activity_groups(self, activity: np.ndarray, n_groups: int = 20) -> list[dict]:
        """Macro-AUC per activity group (DCCL Fig. 4): evaluated users sorted by
        activity (clicks), most active first, split into ``n_groups`` groups of equal
        size (the first groups take the remainder)."""
        ids, per_user = self.user_auc()
        if len(ids) == 0:
            return []
        order = np.lexsort((ids, -activity[ids]))
        groups = []
        for g, members in enumerate(np.array_split(order, min(n_groups, len(ids)))):
            groups.append({
                "group": g,
                "users": len(members),
                "min_clicks": int(activity[ids[members]].min()),
                "max_clicks": int(activity[ids[members]].max()),
                "macro_auc": float(per_user[members].mean()),
            })
        return groups
