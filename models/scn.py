"""CoCorrRec (Zhan et al., 2025): the on-device self-correction network (SCN, §4.1) and
the on-cloud global correction network (GCN, §4.2).

SCN reads a device's whole click sequence with a TTT-Linear block whose hidden state —
a linear model per head — learns while it reads (:mod:`dcrec.models.ttt_linear`):

    X = RMSNorm(E[i_1..i_t])                                   (Eq. 8)
    X_Q, X_K, X_V = X θ_Q, X θ_K, X θ_V,   RoPE on X_Q, X_K     (Eq. 9–10)
    Z = TTT-Linear(X_Q, X_K, X_V)  in mini-batches of b         (Eq. 5–7)
    O = θ_O(LN(Z)),   score(i) = ⟨O_t, E_i⟩ (softmax over items) (Eq. 11–12)

GCN takes the hidden states H = X of the tokens of a device's current mini-batch (the
device uploads them), runs a GRU over them and a 3-layer MLP, and returns corrections of
the mini-batch's attention rows and bias rows (Eq. 13); the device normalises them to
the mean and deviation of its own values (Eq. 14) and fuses them with learnt P, Q
(Eq. 15). The correction of a token's row uses the tokens up to it only, so a device
can be corrected click by click. Both are trained together in the cloud by the
cross-entropy of the next item (Eq. 16–17).

>>> import torch
>>> model = SCN(n_items=20, dim=8, heads=2, mini_batch=3, correction=True)
>>> history = torch.tensor([[3, 5, 7, 2, 0], [4, 1, 0, 0, 0]])
>>> model.score(history, torch.tensor([4, 2]), torch.tensor([[1, 2], [6, 9]])).shape
torch.Size([2, 2])
"""

from __future__ import annotations

import torch
from dcrec.models.base import DotProductRecommender, last_position
from dcrec.models.ttt_linear import Correction, TTTLinear
from torch import nn
from torch.nn import functional as F


def row_statistics(values: torch.Tensor, valid: torch.Tensor | None = None,
                   eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) deviation of each row over its last dim, over the
    ``valid`` entries only when given."""
    if valid is None:
        return values.mean(-1, keepdim=True), values.std(-1, keepdim=True, unbiased=False)
    count = valid.sum(-1, keepdim=True).clamp_min(1)
    mean = (values * valid).sum(-1, keepdim=True) / count
    var = (((values - mean) * valid) ** 2).sum(-1, keepdim=True) / count
    return mean, torch.sqrt(var + eps * eps)


def match_statistics(correction: torch.Tensor, device_values: torch.Tensor,
                     valid: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """CoCorrRec Eq. 14: standardise each correction row, then give it the mean and
    deviation of the device's row."""
    c_mean, c_std = row_statistics(correction, valid)
    d_mean, d_std = row_statistics(device_values, valid)
    return (correction - c_mean) / (c_std + eps) * d_std + d_mean


class GlobalCorrectionNetwork(nn.Module):
    """GCN (Eq. 13): a GRU over the uploaded hidden states of a mini-batch's tokens,
    then a 3-layer MLP giving, for each token, a row of attention corrections ``K_attn``
    (``heads × b``) and of bias corrections ``K_b`` (``heads × head_dim``); ``P`` and
    ``Q`` weigh them in (Eq. 15; P starts at 0, Q at 0.25)."""

    def __init__(self, dim: int, heads: int, mini_batch: int, hidden: int = 64) -> None:
        super().__init__()
        self.heads, self.head_dim, self.mini_batch_size = heads, dim // heads, mini_batch
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.LeakyReLU(),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(),
                                 nn.Linear(hidden, heads * (mini_batch + dim // heads)))
        self.P = nn.Parameter(torch.tensor(0.0))
        self.Q = nn.Parameter(torch.tensor(0.25))

    @property
    def row_width(self) -> int:
        """Floats of one token's correction (attention row and bias row, all heads)."""
        return self.heads * (self.mini_batch_size + self.head_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Correction rows ``[N, K, row_width]`` for the tokens ``hidden [N, K, d]`` of
        mini-batches (row ``k`` from tokens ``0..k``)."""
        states, _ = self.gru(hidden)
        return self.mlp(states)

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows [N, K, row_width]`` → ``K_attn [N, H, K, b]``, ``K_b [N, H, K, f]``."""
        n, k, _ = rows.shape
        h, b, f = self.heads, self.mini_batch_size, self.head_dim
        attn = rows[..., :h * b].view(n, k, h, b).transpose(1, 2)
        bias = rows[..., h * b:].view(n, k, h, f).transpose(1, 2)
        return attn, bias


class SCN(DotProductRecommender):
    """The self-correction network (Eq. 8–12), with the cloud's correction network when
    ``correction`` (the ``cocorrrec`` preset; without it, ``scn``)."""

    def __init__(self, n_items: int, dim: int = 64, heads: int = 4, mini_batch: int = 10,
                 base_lr: float = 1.0, correction: bool = False, gcn_hidden: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__(n_items)
        self.dim, self.heads, self.mini_batch_size = dim, heads, mini_batch
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.input_norm = nn.RMSNorm(dim, eps=1e-6)
        self.dropout = nn.Dropout(dropout)  # on the hidden states while training
        self.ttt = TTTLinear(dim, heads, mini_batch, base_lr)
        self.post_norm = nn.LayerNorm(dim, eps=1e-6)
        self.out = nn.Linear(dim, dim, bias=False)
        self.gcn = GlobalCorrectionNetwork(dim, heads, mini_batch, gcn_hidden) if correction \
            else None
        nn.init.normal_(self.item_embedding.weight, std=0.02)

    def hidden(self, items: torch.Tensor) -> torch.Tensor:
        """The hidden states H = RMSNorm(E[items]) (Eq. 8) a device uploads."""
        return self.dropout(self.input_norm(self.item_embedding(items)))

    def readout(self, heads_out: torch.Tensor) -> torch.Tensor:
        """``[N, H, K, f]`` TTT outputs → user vectors ``[N, K, d]`` (Eq. 11)."""
        n, _, k, _ = heads_out.shape
        return self.out(self.post_norm(heads_out.transpose(1, 2).reshape(n, k, self.dim)))

    def correction_for(self, rows: torch.Tensor, values: dict[str, torch.Tensor]
                       ) -> Correction:
        """The GCN's rows normalised to the device's values (Eq. 14); an attention row
        ``k`` is normalised over its causal entries ``0..k``."""
        assert self.gcn is not None
        attn, bias = self.gcn.split(rows)
        k = values["attn"].shape[-1]
        causal = torch.tril(torch.ones(k, k, dtype=torch.bool))
        return Correction(match_statistics(attn[..., :k], values["attn"], causal),
                          match_statistics(bias, values["bias"]))

    def mini_batch_heads(self, W: torch.Tensor, b: torch.Tensor,
                         projected: dict[str, torch.Tensor], rows: torch.Tensor | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The heads' outputs ``[N, H, K, f]`` after each of a mini-batch's tokens, given
        their projections (:meth:`TTTLinear.project` of their hidden states), from TTT
        state ``(W, b)``, and the state after the K-th token. With ``rows`` (the GCN's
        correction rows for these tokens) the outputs are corrected (Eq. 15)."""
        p = projected
        args = (W, b, p["XQ"], p["XK"], p["XV"], p["lr"])
        out, W_next, b_next, values = self.ttt.mini_batch(*args)
        if rows is not None:
            assert self.gcn is not None
            out, _, _, _ = self.ttt.mini_batch(*args, self.correction_for(rows, values),
                                               self.gcn.P, self.gcn.Q)
        return out, W_next, b_next

    def mini_batch_outputs(self, W: torch.Tensor, b: torch.Tensor, items: torch.Tensor,
                           rows: torch.Tensor | None = None,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """User vectors ``[N, K, d]`` after each of a mini-batch's tokens ``items [N, K]``
        from TTT state ``(W, b)``, and the state after the K-th token; corrected with
        ``rows`` as :meth:`mini_batch_heads`."""
        out, W_next, b_next = self.mini_batch_heads(W, b, self.ttt.project(self.hidden(items)),
                                                    rows)
        return self.readout(out), W_next, b_next

    def outputs(self, items: torch.Tensor) -> torch.Tensor:
        """User vectors ``[N, L, d]`` after each token of right-padded sequences
        ``items [N, L]`` read from the start, corrected by the GCN when present."""
        n, length = items.shape
        W, b = self.ttt.initial_state(n)
        outs = []
        for start in range(0, length, self.mini_batch_size):
            chunk = items[:, start:start + self.mini_batch_size]
            rows = self.gcn(self.hidden(chunk)) if self.gcn is not None else None
            out, W_next, b_next = self.mini_batch_outputs(W, b, chunk, rows)
            outs.append(out)
            if chunk.shape[1] == self.mini_batch_size:
                W, b = W_next, b_next
        return torch.cat(outs, dim=1)

    def user_vector(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return last_position(self.outputs(history), lengths)

    def sequence_loss(self, items: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Eq. 16: cross-entropy of each next item over the catalogue, from the user
        vector after every token; ``weight [N, L-1]`` selects (and weighs) the targets
        ``items[:, 1:]``."""
        user = self.outputs(items[:, :-1])
        logits = user @ self.item_embedding.weight.T
        logits[..., 0] = float("-inf")
        target = items[:, 1:]
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                 reduction="none", ignore_index=0).view_as(target)
        mask = weight * (target > 0)
        return (losses * mask).sum() / mask.sum().clamp_min(1.0)
