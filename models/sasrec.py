"""SASRec (Kang & McAuley, ICDM 2018), as configured in RecBole."""

from __future__ import annotations

import torch
from dcrec.models.base import DotProductRecommender, last_position
from torch import nn


class SASRec(DotProductRecommender):
    """Causal self-attention over the click history with learned positions; the output
    at the last click is the user vector:

        X⁰ = E[i_1..i_L] + P,   Xˡ = Block(Xˡ⁻¹) with causal mask,   u = X^B_L

    Post-LN Transformer blocks with GELU, softmax cross-entropy over all items.

    >>> import torch
    >>> model = SASRec(n_items=10, max_len=4, hidden_dim=8, num_heads=2)
    >>> model.score(torch.tensor([[3, 5, 0, 0]]), torch.tensor([2]), torch.tensor([[1, 2]])).shape
    torch.Size([1, 2])
    """

    def __init__(self, n_items: int, max_len: int = 50, hidden_dim: int = 64,
                 num_layers: int = 2, num_heads: int = 2, inner_dim: int = 256,
                 dropout: float = 0.5) -> None:
        super().__init__(n_items)
        self.item_embedding = nn.Embedding(n_items + 1, hidden_dim, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(hidden_dim, num_heads, inner_dim, dropout,
                                           activation="gelu", batch_first=True,
                                           layer_norm_eps=1e-12)
        self.blocks = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.max_len = max_len
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)

    def user_vector(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        length = history.size(1)
        positions = torch.arange(length, device=history.device)
        x = self.item_embedding(history) + self.position_embedding(positions)[None]
        x = self.dropout(self.norm(x))
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        x = self.blocks(x, mask=causal)
        return last_position(x, lengths)
