"""Incremental (warm-start) training of a sequential recommender by a cloud job."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from dcrec.models.base import SequentialRecommender


@dataclass(frozen=True)
class TrainingConfig:
    """Optimiser settings of a cloud job (defaults: MC²-SF §5.1.4 — Adam, lr 5e-4,
    L2 1e-4, mini-batches of 256)."""

    lr: float = 5e-4
    l2: float = 1e-4
    batch_size: int = 256
    epochs: int = 1
    n_negatives: int = 4


class IncrementalTrainer:
    """Keeps a model and its Adam state across cloud jobs; each :meth:`fit` continues
    from the previous weights on the samples that arrived since (warm start)."""

    def __init__(self, model: SequentialRecommender, config: TrainingConfig, seed: int) -> None:
        self.model = model
        self.config = config
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                          weight_decay=config.l2)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0

    def fit(self, history: np.ndarray, lengths: np.ndarray, target: np.ndarray,
            epochs: int | None = None) -> float:
        """Train on ``(history, lengths) → target`` samples (shifted ids); mean loss."""
        n = len(target)
        if n == 0:
            return float("nan")
        history_t = torch.from_numpy(np.ascontiguousarray(history, dtype=np.int64))
        lengths_t = torch.from_numpy(np.ascontiguousarray(lengths, dtype=np.int64))
        target_t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.int64))
        self.model.train()
        losses = []
        for _ in range(epochs or self.config.epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, self.config.batch_size):
                idx = order[start:start + self.config.batch_size]
                negatives = torch.randint(1, self.model.n_items + 1,
                                          (len(idx), self.config.n_negatives),
                                          generator=self.generator)
                loss = self.model.loss(history_t[idx], lengths_t[idx], target_t[idx], negatives)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                losses.append(loss.item())
                self.steps += 1
        self.model.eval()
        return float(np.mean(losses))


@torch.inference_mode()
def score_candidates(model: SequentialRecommender, history: np.ndarray, lengths: np.ndarray,
                     candidates: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Scores ``[N, C]`` (float32) of shifted candidate ids, computed in row chunks so
    target-aware models stay within memory."""
    model.eval()
    out = np.empty(candidates.shape, dtype=np.float32)
    for start in range(0, len(candidates), chunk):
        stop = start + chunk
        out[start:stop] = model.score(
            torch.from_numpy(np.ascontiguousarray(history[start:stop], dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(lengths[start:stop], dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(candidates[start:stop], dtype=np.int64)),
        ).numpy()
    return out
