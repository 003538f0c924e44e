"""What every sequential recommender in dcrec offers the runtimes and the cloud jobs.

Item ids inside models are shifted by one: 0 is padding, item ``i`` of a log is ``i + 1``.
Histories are left-aligned ``[N, L]`` windows of the most recent clicks, oldest first,
padded with 0 after the last click; ``lengths`` says how many are real.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F


class SequentialRecommender(nn.Module, ABC):
    """Scores candidate items for a click history; trained by binary cross-entropy on
    the positive and sampled negatives (the click-through loss of MC²-SF Eq. (2))."""

    # True when a row's scores read no window position past its length and come out in
    # the same bits from a window cut there (a recurrence read at the last click, a sum
    # masked to the clicks): batched scoring may then drop the padding (score_inputs).
    cut_windows_exact: ClassVar[bool] = False
    # rows per model call when scoring in batches (score_candidates)
    score_rows: ClassVar[int] = 256

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.n_items = n_items

    @abstractmethod
    def score(self, history: torch.Tensor, lengths: torch.Tensor,
              candidates: torch.Tensor) -> torch.Tensor:
        """Scores ``[N, C]`` of ``candidates`` (shifted ids) after ``history``."""

    def loss(self, history: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor,
             negatives: torch.Tensor) -> torch.Tensor:
        """Training loss for next-item ``target`` (shifted ids) after ``history``."""
        candidates = torch.cat([target[:, None], negatives], dim=1)
        logits = self.score(history, lengths, candidates)
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(logits, labels)


class DotProductRecommender(SequentialRecommender):
    """A recommender whose score is ``⟨u(history), e_item⟩``; trained with softmax
    cross-entropy over every item (RecBole's ``loss_type CE``)."""

    item_embedding: nn.Embedding

    @abstractmethod
    def user_vector(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The ``[N, d]`` user vector after ``history``."""

    def score(self, history: torch.Tensor, lengths: torch.Tensor,
              candidates: torch.Tensor) -> torch.Tensor:
        user = self.user_vector(history, lengths)
        return torch.einsum("nd,ncd->nc", user, self.item_embedding(candidates))

    def loss(self, history: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor,
             negatives: torch.Tensor) -> torch.Tensor:
        logits = self.user_vector(history, lengths) @ self.item_embedding.weight.T
        logits[:, 0] = float("-inf")  # padding is never an answer
        return F.cross_entropy(logits, target)


def last_position(outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``outputs[n, lengths[n] - 1]`` for left-aligned sequences (a zero-length row reads 0)."""
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, outputs.size(-1))
    return outputs.gather(1, index).squeeze(1)
