"""MC²-SF (Chen et al., "MC²-SF: Slow-Fast Learning for Mobile-Cloud Collaborative
Recommendation", 2021): the slow cloud component, the fast device component, and the
S2F hint they exchange.

Item ids are shifted (0 = padding) and histories left-aligned, as in
:mod:`dcrec.models.base`. Both components share the embedding size ``d``; the GRU
hidden size is ``d`` too, so the negative memory r̂₂, r_n, r_t and r_f live in one space.

The S2F hint is per device, not per candidate: the issue's ``cloud.hints`` topic sends
one ``(r_n, r_t)`` pair per device, so the cloud evaluates Eq. (1) and Eq. (5) with the
device's most recent click as the query item (DIN's target) — see
:meth:`SlowComponent.hint`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from dcrec.models.din import SCORE_ROWS, TargetAttention, mlp
from torch import nn
from torch.nn import functional as F


def gru_step(gru: nn.GRU, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One step of a single-layer ``gru``: inputs ``[N, d]``, states ``[N, h]`` → ``[N, h]``."""
    return torch.gru_cell(x, h, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0,
                          gru.bias_hh_l0)


def run_gru(gru: nn.GRU, inputs: torch.Tensor, lengths: torch.Tensor,
            initial: torch.Tensor | None = None) -> torch.Tensor:
    """The state of ``gru`` after the first ``lengths`` of left-aligned ``inputs``
    ``[N, L, d]``, starting from ``initial`` (zeros if None); a zero-length row keeps
    its initial state."""
    n = inputs.size(0)
    h0 = initial if initial is not None else inputs.new_zeros(n, gru.hidden_size)
    if inputs.size(1) == 0:
        return h0
    outputs, _ = gru(inputs, h0[None].contiguous())
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, outputs.size(-1))
    last = outputs.gather(1, index).squeeze(1)
    return torch.where((lengths > 0)[:, None], last, h0)


def binary_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of Eq. (2)/(4) with the positive in column 0, sampled negatives after."""
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(logits, labels)


class SlowComponent(nn.Module):
    """The cloud (slow) component: DIN over the long click sequence, optionally
    continuing the device's negative memory with the candidate (F2S).

        r_t = DIN(H^S, e_i)                                  (Eq. 1)
        ŷ^S = σ(MLP(r_t ⊕ e_i))                              (Eq. 2, without F2S)
        r̄₂  = GRU_n(e_i)|_{r̂₂}                               (Eq. 5)
        r_n = r̄₂ ∗ σ(W_S [r̄₂ ⊕ e_i] + b_S)
        ŷ^S = σ(MLP(r_n ⊕ r_t ⊕ e_i))                        (Eq. 6)

    trained with the cross-entropy of Eq. (2). ``negative_memory`` is GRU_n over the
    device's exposed-but-not-clicked items (the r̂₂ a device uploads); it is part of
    this module because slow training updates GRU_n (§4.3).

    >>> import torch
    >>> slow = SlowComponent(n_items=10, embedding_dim=8)
    >>> r_hat2 = slow.negative_memory(torch.tensor([[4, 6, 0]]), torch.tensor([2]))
    >>> slow.score(torch.tensor([[3, 5, 0]]), r_hat2, torch.tensor([[1, 2, 7]])).shape
    torch.Size([1, 3])
    """

    cut_windows_exact = True   # DIN over the click window (see SequentialRecommender)
    score_rows = SCORE_ROWS

    def __init__(self, n_items: int, embedding_dim: int = 32, attention_hidden: int = 16,
                 mlp_hidden: tuple[int, int] = (64, 32), f2s: bool = True) -> None:
        super().__init__()
        d = embedding_dim
        self.n_items = n_items
        self.f2s = f2s
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.attention = TargetAttention(d, attention_hidden)
        self.gru_n = nn.GRU(d, d, batch_first=True)
        self.gate = nn.Linear(2 * d, d)  # W_S, b_S of Eq. (5)
        self.head = mlp([(3 if f2s else 2) * d, *mlp_hidden, 1])  # 3-layer MLP of Eq. (6)
        nn.init.normal_(self.item_embedding.weight, std=0.05)

    def negative_memory(self, exposures: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """r̂₂ = GRU_n(H_n^F) over left-aligned exposure windows ``[N, L]`` → ``[N, d]``."""
        return run_gru(self.gru_n, self.item_embedding(exposures), lengths)

    def interests(self, history: torch.Tensor, r_hat2: torch.Tensor | None,
                  candidates: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(r_n, r_t)`` for every candidate, each ``[N, C, d]`` (r_n None without F2S)."""
        e_i = self.item_embedding(candidates)
        r_t = self.attention(self.item_embedding(history), (history > 0).float(), e_i)
        if not self.f2s:
            return None, r_t
        n, c, d = e_i.shape
        assert r_hat2 is not None, "the F2S slow component needs the negative memory"
        r_bar2 = gru_step(self.gru_n, e_i.reshape(n * c, d),
                          r_hat2[:, None, :].expand(n, c, d).reshape(n * c, d)).view(n, c, d)
        r_n = r_bar2 * torch.sigmoid(self.gate(torch.cat([r_bar2, e_i], dim=-1)))
        return r_n, r_t

    def score(self, history: torch.Tensor, r_hat2: torch.Tensor | None,
              candidates: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, C]`` of Eq. (6) (Eq. 2 without F2S)."""
        r_n, r_t = self.interests(history, r_hat2, candidates)
        parts = [r_t, self.item_embedding(candidates)]
        if r_n is not None:
            parts.insert(0, r_n)
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)

    def hint(self, history: torch.Tensor, lengths: torch.Tensor,
             r_hat2: torch.Tensor | None) -> torch.Tensor:
        """The S2F payload ``r_n ⊕ r_t`` ``[N, 2d]`` for each device, with its most recent
        click as the query item; rows without clicks get zeros (no hint)."""
        last = history.gather(1, (lengths - 1).clamp(min=0)[:, None])  # [N, 1]
        r_n, r_t = self.interests(history, r_hat2, last)
        r_n = r_n if r_n is not None else torch.zeros_like(r_t)
        return torch.cat([r_n, r_t], dim=-1).squeeze(1) * (lengths > 0).float()[:, None]

    def loss(self, history: torch.Tensor, r_hat2: torch.Tensor | None,
             candidates: torch.Tensor) -> torch.Tensor:
        return binary_loss(self.score(history, r_hat2, candidates))


class FastComponent(nn.Module):
    """The device (fast) component: GRU_p over recent clicks, GRU_n over exposed but
    not clicked items, target-aware fusion, and (with S2F) the cloud's hint.

        r₁ = GRU_p(H_p^F),  r₂ = GRU_n(H_n^F)                                  (Eq. 3)
        r  = [r₁; r₂]ᵀ Softmax([MLP(r₁ ⊕ e_i); MLP(r₂ ⊕ e_i)])
        ŷ^F = σ(MLP(r ⊕ e_i))                                                  (Eq. 4)

    With S2F (``s2f=True``) the hint ``(r_n, r_t)`` sets the GRUs' initial states and
    joins the head:

        r_f = α r_n + (1 − α) r_t,   α = σ(W_F⁰ [r_n ⊕ r_t] + b_F⁰)              (Eq. 7)
        z_p = ReLU(W_F¹ r_f + b¹),   z_n = ReLU(W_F² r_f + b²)
        r_p = GRU_p(H_p^F)|_{z_p},   r̃_n = GRU_n(H_n^F)|_{z_n}
        ŷ^F = σ(MLP(r ⊕ r_t ⊕ e_i)),  r fused from (r_p, r̃_n) as in Eq. (3)     (Eq. 8)

    A device with no hint yet passes zeros: z_p = z_n = 0 (the GRUs start from zero,
    as without S2F) and r_t = 0 in the head.

    >>> import torch
    >>> fast = FastComponent(n_items=10, embedding_dim=8, s2f=True)
    >>> clicks, exposures = torch.tensor([[3, 5, 0]]), torch.tensor([[4, 6, 2]])
    >>> hint = torch.zeros(1, 16)  # no hint yet
    >>> fast.score(clicks, torch.tensor([2]), exposures, torch.tensor([3]), hint,
    ...            torch.tensor([[1, 2, 7]])).shape
    torch.Size([1, 3])
    """

    cut_windows_exact = True   # GRU_p read at the window's last click

    def __init__(self, n_items: int, embedding_dim: int = 32,
                 mlp_hidden: tuple[int, int] = (64, 32), s2f: bool = False) -> None:
        super().__init__()
        d = embedding_dim
        self.n_items = n_items
        self.s2f = s2f
        self.dim = d
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.gru_p = nn.GRU(d, d, batch_first=True)
        self.gru_n = nn.GRU(d, d, batch_first=True)
        self.attend = mlp([2 * d, *mlp_hidden, 1])  # the MLP inside Eq. (3)'s softmax
        self.head = mlp([(3 if s2f else 2) * d, *mlp_hidden, 1])  # Eq. (4) / Eq. (8)
        if s2f:
            self.mix = nn.Linear(2 * d, d)      # W_F⁰, b_F⁰
            self.init_p = nn.Linear(d, d)       # W_F¹, b¹
            self.init_n = nn.Linear(d, d)       # W_F², b²
        nn.init.normal_(self.item_embedding.weight, std=0.05)

    def initial_states(self, hint: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        """``(z_p, z_n, r_t)`` of Eq. (7) from hints ``[N, 2d]``; a zero hint (no hint yet)
        gives zero states and r_t = 0. All None without S2F."""
        if not self.s2f or hint is None:
            return None, None, None
        r_n, r_t = hint[:, :self.dim], hint[:, self.dim:]
        present = (hint.abs().sum(-1, keepdim=True) > 0).float()
        alpha = torch.sigmoid(self.mix(hint))
        r_f = alpha * r_n + (1 - alpha) * r_t
        z_p = F.relu(self.init_p(r_f)) * present
        z_n = F.relu(self.init_n(r_f)) * present
        return z_p, z_n, r_t

    def positive_interest(self, history: torch.Tensor, lengths: torch.Tensor,
                          z_p: torch.Tensor | None = None) -> torch.Tensor:
        """r₁ (or r_p from z_p): GRU_p over the click window ``[N, L]`` → ``[N, d]``."""
        return run_gru(self.gru_p, self.item_embedding(history), lengths, z_p)

    def negative_interest(self, exposures: torch.Tensor, lengths: torch.Tensor,
                          z_n: torch.Tensor | None = None) -> torch.Tensor:
        """r₂ (or r̃_n from z_n): GRU_n over the exposure window ``[N, L]`` → ``[N, d]``."""
        return run_gru(self.gru_n, self.item_embedding(exposures), lengths, z_n)

    def score_states(self, r_p: torch.Tensor, r_neg: torch.Tensor, r_t: torch.Tensor | None,
                     candidates: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, C]`` from the GRU states ``[N, d]`` (Eq. 3 fusion, Eq. 4/8 head)."""
        e_i = self.item_embedding(candidates)
        n, c, d = e_i.shape
        r1 = r_p[:, None, :].expand(n, c, d)
        r2 = r_neg[:, None, :].expand(n, c, d)
        logits = torch.cat([self.attend(torch.cat([r1, e_i], -1)),
                            self.attend(torch.cat([r2, e_i], -1))], dim=-1)  # [N, C, 2]
        weights = torch.softmax(logits, dim=-1)
        r = weights[..., :1] * r1 + weights[..., 1:] * r2
        parts = [r, e_i]
        if self.s2f:
            rt = r_t if r_t is not None else r_p.new_zeros(n, d)
            parts.insert(1, rt[:, None, :].expand(n, c, d))
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)

    def score(self, history: torch.Tensor, lengths: torch.Tensor, exposures: torch.Tensor,
              exposure_lengths: torch.Tensor, hint: torch.Tensor | None,
              candidates: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, C]`` of ``candidates`` after click and exposure windows."""
        z_p, z_n, r_t = self.initial_states(hint)
        r_p = self.positive_interest(history, lengths, z_p)
        r_neg = self.negative_interest(exposures, exposure_lengths, z_n)
        return self.score_states(r_p, r_neg, r_t, candidates)

    def loss(self, history: torch.Tensor, lengths: torch.Tensor, exposures: torch.Tensor,
             exposure_lengths: torch.Tensor, hint: torch.Tensor | None,
             candidates: torch.Tensor) -> torch.Tensor:
        return binary_loss(self.score(history, lengths, exposures, exposure_lengths, hint,
                                      candidates))

    def warm_start_from(self, slow: SlowComponent) -> None:
        """Take the cloud's item embeddings and GRU_n (E_I lives in the cloud and is sent
        to the device, §4; GRU_n is shared by Eq. 3 and Eq. 5)."""
        self.item_embedding.load_state_dict(slow.item_embedding.state_dict())
        self.gru_n.load_state_dict(slow.gru_n.state_dict())


# Named-input adapters for :class:`dcrec.models.training.InputTrainer` / ``score_inputs``.
# Inputs: ``history``, ``lengths`` (click window), ``exposures``, ``exposure_lengths``
# (exposure window), ``r_hat2`` (an uploaded negative memory), ``hint`` (S2F payload).

Batch = dict[str, torch.Tensor]


def slow_score(model: SlowComponent) -> Callable[[Batch, torch.Tensor], torch.Tensor]:
    """Eq. (6) logits; r̂₂ is the uploaded ``r_hat2`` or GRU_n over the exposure window."""
    def score(b: Batch, candidates: torch.Tensor) -> torch.Tensor:
        r_hat2 = b.get("r_hat2")
        if r_hat2 is None and model.f2s:
            r_hat2 = model.negative_memory(b["exposures"], b["exposure_lengths"])
        return model.score(b["history"], r_hat2, candidates)
    return score


def fast_score(model: FastComponent) -> Callable[[Batch, torch.Tensor], torch.Tensor]:
    """Eq. (4) / Eq. (8) logits from click and exposure windows (and the hint)."""
    def score(b: Batch, candidates: torch.Tensor) -> torch.Tensor:
        return model.score(b["history"], b["lengths"], b["exposures"], b["exposure_lengths"],
                           b.get("hint"), candidates)
    return score


def as_loss(score: Callable[[Batch, torch.Tensor], torch.Tensor]
            ) -> Callable[[Batch, torch.Tensor], torch.Tensor]:
    """The cross-entropy of Eq. (2)/(4) of a scorer (positive in candidate column 0)."""
    return lambda b, candidates: binary_loss(score(b, candidates))


@torch.inference_mode()
def compute_hints(slow: SlowComponent, history: np.ndarray, lengths: np.ndarray,
                  r_hat2: np.ndarray | None = None, exposures: np.ndarray | None = None,
                  exposure_lengths: np.ndarray | None = None, chunk: int = 512) -> np.ndarray:
    """S2F payloads ``r_n ⊕ r_t`` ``[N, 2d]`` (float32) of the slow component, from an
    uploaded r̂₂ or, if None, from exposure windows."""
    slow.eval()
    parts = [np.zeros((0, 2 * slow.item_embedding.embedding_dim), np.float32)]
    for start in range(0, len(history), chunk):
        window = slice(start, start + chunk)
        if r_hat2 is not None:
            memory = torch.from_numpy(np.ascontiguousarray(r_hat2[window], dtype=np.float32))
        else:
            assert exposures is not None and exposure_lengths is not None
            memory = slow.negative_memory(torch.from_numpy(exposures[window].astype(np.int64)),
                                          torch.from_numpy(exposure_lengths[window]
                                                           .astype(np.int64)))
        parts.append(slow.hint(torch.from_numpy(history[window].astype(np.int64)),
                               torch.from_numpy(lengths[window].astype(np.int64)),
                               memory).numpy())
    return np.concatenate(parts)
