"""EC-CDR, the cloud-generated device recommender IntellectReq throttles (Lv et al.,
WWW 2024, §3.2.1, Eq. 3–6; the DUET parameter generator).

The device model has static layers Ω, trained once in the cloud and shipped, and
dynamic layers whose parameters the cloud generates for each device from its recent
click sequence:

    u_T   = Ω(s_T)                           the device's state after its clicks s_T
    e     = E_shared(s)                       a shared encoder of a click sequence s
    θ_n   = L_layer^n(e) = (W_n(e), b_n(e))   parameters of dynamic layer n (Eq. 4–5)
    x_{n+1} = act(x_n W_n + b_n),  x_0 = u_T
    score(v) = ⟨x_last, t_v⟩,  t_v = target_trans(E_v)                      (Eq. 3, 6)

A device whose parameters were generated at ``t′`` scores with θ(s_{t′}) on its current
state u_T (Eq. 7): the gap between the two is what IntellectReq's request agent judges.
Ω and the generator train jointly in the cloud by binary cross-entropy (Eq. 6). Unlike
the authors' code (whose generator heads are never registered as parameters, so they
stay random), every part here learns; the heads start scaled so a generated layer has
the variance of a standard initialised one.

>>> import torch
>>> model = ECCDR(n_items=20, dim=8)
>>> history = torch.tensor([[3, 5, 7, 0], [4, 1, 0, 0]])
>>> lengths = torch.tensor([3, 2])
>>> stale = model.generate(torch.tensor([[3, 5, 0, 0], [4, 0, 0, 0]]), torch.tensor([2, 1]))
>>> model.score(history, lengths, torch.tensor([[1, 2], [6, 9]]), stale).shape
torch.Size([2, 2])
"""

from __future__ import annotations

import math

import torch
from dcrec.models.base import SequentialRecommender, last_position
from dcrec.models.training import ROW_FLOOR
from torch import nn

Generated = list[tuple[torch.Tensor, torch.Tensor]]  # per dynamic layer: W [N,i,o], b [N,o]


def flatten(params: Generated) -> torch.Tensor:
    """Generated parameters ``[N, P]``, layer by layer (W then b)."""
    return torch.cat([t.reshape(len(t), -1) for W, b in params for t in (W, b)], dim=1)


def unflatten(flat: torch.Tensor, sizes: list[tuple[int, int]]) -> Generated:
    """:func:`flatten` undone for dynamic layers of ``sizes``."""
    params, offset = [], 0
    for i, o in sizes:
        W = flat[:, offset:offset + i * o].reshape(-1, i, o)
        offset += i * o
        params.append((W, flat[:, offset:offset + o]))
        offset += o
    return params


class ParameterGenerator(nn.Module):
    """g = L_layer ∘ E_shared (Eq. 4–5): a GRU and a 2-layer MLP encode the embedded
    click sequence into e; one linear head per dynamic layer maps e to its weight
    matrix and one to its bias."""

    def __init__(self, dim: int, layer_sizes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.layer_sizes = layer_sizes
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.encoder = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim))
        self.weight_heads = nn.ModuleList(nn.Linear(dim, i * o) for i, o in layer_sizes)
        self.bias_heads = nn.ModuleList(nn.Linear(dim, o) for _, o in layer_sizes)
        for head, (i, _) in zip(self.weight_heads, layer_sizes, strict=True):
            # e has O(1) entries: a generated W then has entries of std ≈ 1/√i
            nn.init.normal_(head.weight, std=1.0 / math.sqrt(dim * i))
            nn.init.zeros_(head.bias)
        for head in self.bias_heads:
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def forward(self, embedded: torch.Tensor, lengths: torch.Tensor) -> Generated:
        """Parameters of every dynamic layer for sequences ``embedded [N, L, d]``."""
        states, _ = self.gru(embedded)
        return self.heads(last_position(states, lengths))

    def heads(self, last: torch.Tensor) -> Generated:
        """Parameters of every dynamic layer from the GRU's state ``[N, d]`` after a
        sequence: E_shared's MLP, then L_layer."""
        e = self.encoder(last)
        n = len(e)
        return [(w(e).view(n, i, o), b(e))
                for w, b, (i, o) in zip(self.weight_heads, self.bias_heads, self.layer_sizes,
                                        strict=True)]


class ECCDR(SequentialRecommender):
    """EC-CDR with a GRU as the static sequence layers Ω (cheap on a device) and a
    ``dim → dim → dim`` dynamic block (DUET's), tanh between dynamic layers."""

    def __init__(self, n_items: int, dim: int = 32, dynamic_layers: int = 2) -> None:
        super().__init__(n_items)
        self.dim = dim
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.seq_trans = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.backbone = nn.GRU(dim, dim, batch_first=True)
        self.target_trans = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim))
        self.generator = ParameterGenerator(dim, [(dim, dim)] * dynamic_layers)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        # the parameters of a device that never asked: shipped with the static layers
        n_params = sum(i * o + o for i, o in self.generator.layer_sizes)
        self.register_buffer("generic", torch.zeros(n_params))
        self.refresh_generic()

    @torch.no_grad()
    def refresh_generic(self) -> None:
        """:attr:`generic` := the generator's parameters for an empty sequence."""
        empty = torch.zeros(1, 1, dtype=torch.long)
        self.generic.copy_(flatten(self.generate(empty, torch.zeros(1, dtype=torch.long)))[0])

    def embed(self, history: torch.Tensor) -> torch.Tensor:
        """The embedded sequence both Ω and the generator read."""
        return self.seq_trans(self.item_embedding(history))

    def user_state(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """u_T = Ω(s_T) ``[N, d]``: the static layers' state after the clicks."""
        states, _ = self.backbone(self.embed(history))
        return last_position(states, lengths)

    def generate(self, history: torch.Tensor, lengths: torch.Tensor) -> Generated:
        """θ(s): the dynamic layers' parameters the cloud generates from ``history``."""
        return self.generator(self.embed(history), lengths)

    def prefix_states(self, history: torch.Tensor, prefixes: list[torch.Tensor],
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each of ``prefixes`` (click counts ``[N]``): Ω's state and the
        generator's GRU state after that many of the first clicks of ``history`` — what
        :meth:`user_state` and :meth:`generate` read of the window cut there, from one
        pass of each GRU (a GRU's state after k clicks does not see the clicks after
        them). A zero count reads the empty window's states, computed apart on
        ``ROW_FLOOR`` empty rows of the same width, which round as they would among
        the others."""
        embedded = self.embed(history)
        omega, _ = self.backbone(embedded)
        generator, _ = self.generator.gru(embedded)
        out = [(last_position(omega, k), last_position(generator, k)) for k in prefixes]
        cut_to_nothing = [k == 0 for k in prefixes]
        if any(bool(rows.any()) for rows in cut_to_nothing):
            empty = self.embed(torch.zeros((ROW_FLOOR, history.shape[1]), dtype=torch.long))
            empty_omega = self.backbone(empty)[0][0, 0]
            empty_generator = self.generator.gru(empty)[0][0, 0]
            for (u, g), rows in zip(out, cut_to_nothing, strict=True):
                u[rows], g[rows] = empty_omega, empty_generator
        return out

    def user_vector(self, state: torch.Tensor, params: Generated) -> torch.Tensor:
        """The dynamic block on ``state`` with ``params``."""
        x = state
        for k, (W, b) in enumerate(params):
            x = torch.bmm(x.unsqueeze(1), W).squeeze(1) + b
            if k < len(params) - 1:
                x = torch.tanh(x)
        return x

    def score(self, history: torch.Tensor, lengths: torch.Tensor, candidates: torch.Tensor,
              params: Generated | None = None) -> torch.Tensor:
        """Scores ``[N, C]``; ``params`` from an earlier sequence make a stale device
        (Eq. 7), by default they are generated from ``history`` itself (up to date)."""
        if params is None:
            params = self.generate(history, lengths)
        user = self.user_vector(self.user_state(history, lengths), params)
        return torch.einsum("nd,ncd->nc", user, self.target_trans(self.item_embedding(candidates)))
