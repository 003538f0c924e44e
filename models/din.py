"""DIN, the Deep Interest Network (Zhou et al., KDD 2018): the slow cloud model of
MC²-SF (Eq. 1–2) and the backbone f of DCCL."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from dcrec.models.base import SequentialRecommender
from torch import nn

# a hook at a fully-connected junction: (junction name, layer output) -> new output;
# DCCL's patches (Eq. 1) plug in here, the plain model passes None
Junction = Callable[[str, torch.Tensor], torch.Tensor]
JUNCTIONS = ("attention", "mlp1", "pre_output")  # DCCL's 1st, 2nd and 3rd junctions


class RowwiseLinear(nn.Linear):
    """``nn.Linear`` for a few outputs (a logit), computed row by row.

    torch computes a one-output ``Linear`` as a GEMV whose bits for a row depend on
    where the row sits in the batch and how long the batch is (measured on torch 2.13:
    the same row gives another last bit among 10,250 rows than among 3,750), so a
    device's score would depend on which devices share its batch. A product and a sum
    over each row give the same bits wherever the row is. Same parameters and
    initialisation as ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = (x.unsqueeze(-2) * self.weight).sum(-1)
        return out + self.bias if self.bias is not None else out


def mlp(sizes: list[int], final_activation: bool = False) -> nn.Sequential:
    """Linear layers of the given sizes with PReLU between them (a one-unit output layer
    is a :class:`RowwiseLinear`)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(RowwiseLinear(a, b) if b == 1 else nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.PReLU())
    return nn.Sequential(*layers)


class TargetAttention(nn.Module):
    """DIN's local activation unit: a weight for each history item given the candidate,

        a(e_j, e_i) = MLP([e_j, e_i, e_j ⊙ e_i]),    r_t = Σ_j a(e_j, e_i) · e_j

    unnormalised (no softmax), as in DIN. The first layer is split so the history and
    candidate terms are computed once, not once per (history, candidate) pair.
    """

    def __init__(self, dim: int, hidden: int = 16) -> None:
        super().__init__()
        self.history_part = nn.Linear(dim, hidden)
        self.candidate_part = nn.Linear(dim, hidden, bias=False)
        self.product_part = nn.Linear(dim, hidden, bias=False)
        self.out = nn.Sequential(nn.PReLU(), RowwiseLinear(hidden, 1))

    def forward(self, history: torch.Tensor, mask: torch.Tensor,
                candidates: torch.Tensor, junction: Junction | None = None) -> torch.Tensor:
        """history ``[N, L, d]``, mask ``[N, L]``, candidates ``[N, C, d]`` → ``[N, C, d]``;
        ``junction`` sees the first layer's output ``[N, C, L, hidden]``."""
        pair = (self.history_part(history)[:, None, :, :]
                + self.candidate_part(candidates)[:, :, None, :]
                + self.product_part(candidates[:, :, None, :] * history[:, None, :, :]))
        if junction is not None:
            pair = junction("attention", pair)
        weights = self.out(pair).squeeze(-1) * mask[:, None, :]  # [N, C, L]
        return weights @ history


# Rows per call when a DIN scores in batches: its activation unit holds a
# [rows, C, L, hidden] tensor, and 16 rows of 101 candidates over 50 clicks stay in cache
# (5× faster than 256 rows here, with the same bits).
SCORE_ROWS = 16


class DIN(SequentialRecommender):
    """Deep Interest Network over the click history, scoring each candidate:

        r_t = DIN(H, e_i)                       (MC²-SF Eq. 1)
        ŷ   = σ(MLP(r_t ⊕ e_i))                 (trained with the BCE of Eq. 2)

    >>> import torch
    >>> model = DIN(n_items=10, embedding_dim=8)
    >>> model.score(torch.tensor([[3, 5, 0]]), torch.tensor([2]), torch.tensor([[1, 2, 7]])).shape
    torch.Size([1, 3])
    """

    cut_windows_exact = True
    score_rows = SCORE_ROWS

    def __init__(self, n_items: int, embedding_dim: int = 32, attention_hidden: int = 16,
                 mlp_hidden: tuple[int, int] = (64, 32)) -> None:
        super().__init__(n_items)
        self.item_embedding = nn.Embedding(n_items + 1, embedding_dim, padding_idx=0)
        self.attention = TargetAttention(embedding_dim, attention_hidden)
        self.head = mlp([2 * embedding_dim, *mlp_hidden, 1])
        nn.init.normal_(self.item_embedding.weight, std=0.05)

    def interest(self, history: torch.Tensor, candidates: torch.Tensor,
                 junction: Junction | None = None) -> torch.Tensor:
        """r_t for every candidate: ``[N, C, d]``."""
        mask = (history > 0).float()
        return self.attention(self.item_embedding(history), mask,
                              self.item_embedding(candidates), junction)

    def score(self, history: torch.Tensor, lengths: torch.Tensor,
              candidates: torch.Tensor, junction: Junction | None = None) -> torch.Tensor:
        e_i = self.item_embedding(candidates)
        r_t = self.interest(history, candidates, junction)
        x = torch.cat([r_t, e_i], dim=-1)
        if junction is None:
            return self.head(x).squeeze(-1)
        linears = [k for k, layer in enumerate(self.head) if isinstance(layer, nn.Linear)]
        for k, layer in enumerate(self.head):
            x = layer(x)
            if k == linears[0]:
                x = junction("mlp1", x)
            elif k == linears[-2]:
                x = junction("pre_output", x)
        return x.squeeze(-1)

    def junction_widths(self) -> dict[str, int]:
        """The width of each junction's output (a patch there maps it to itself)."""
        linears = [layer for layer in self.head if isinstance(layer, nn.Linear)]
        return {"attention": self.attention.history_part.out_features,
                "mlp1": linears[0].out_features, "pre_output": linears[-2].out_features}
