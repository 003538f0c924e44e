"""The TTT-Linear block of CoCorrRec's self-correction network (Zhan et al., 2025, §3 and
Algorithm 1; TTT-Linear of Sun et al., 2024).

The block's hidden state is a linear model ``f(x; W, b) = x W + b`` per head, trained
while the sequence is read by a self-supervised step on every token:

    ℓ(W; x_t) = ‖ LN(θ_K x_t W + b) − (θ_V x_t − θ_K x_t) ‖²               (Eq. 2)
    W_t = W_{t-1} − η_t ∇ℓ(W_{t-1}; x_t),     z_t = f(θ_Q x_t; W_t)         (Eq. 1, 3)

With mini-batches of ``b`` tokens every gradient in a mini-batch is taken at the state
``W_{t'}`` the mini-batch started from (Eq. 5):

    W̄_t = W_{t'} − η_t Σ_{s=t'+1..t} lr_s ∇ℓ(W_{t'}; x_s)

and the dual form (Eq. 6–7) computes all the mini-batch's outputs and the next state
with matrix products only, never materialising a W̄ per token:

    ∇_Z = ∂ℓ/∂Z at Z = X_K W_{t'} + b        (one row per token)
    A   = tril(η ⊙ X_Q X_Kᵀ)
    Z̄   = X_Q W_{t'} + b − A ∇_Z − tril(η) ∇_Z
    W_b = W_{t'} − (η_last ⊙ X_K)ᵀ ∇_Z,       b_b = b − Σ_s η_last,s ∇_{Z,s}

The block's output for token ``t`` is ``θ_Q x_t + LN(z̄_t)`` per head. ``η_{t,s} =
scale_t · lr_s``: ``lr_s = base_lr · σ(x_s · w_h + c_h) / head_dim`` is the learnt
per-token rate and ``scale_t = max(1/(t−t') + δ_t, 0)`` averages the gradients so far
(δ learnt). Positions inside a mini-batch carry rotary embeddings (Eq. 10).

:meth:`TTTLinear.mini_batch` also takes the cloud's correction of Eq. 15 (CoCorrRec
§4.2): rows to add to the attention ``A`` and the bias ``b̄`` of each token.

>>> import torch
>>> block = TTTLinear(dim=8, heads=2, mini_batch=4)
>>> x = torch.randn(3, 10, 8)
>>> out, (W, b) = block(x)
>>> out.shape, W.shape, b.shape
(torch.Size([3, 10, 8]), torch.Size([3, 2, 4, 4]), torch.Size([3, 2, 4]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE (Su et al.; CoCorrRec Eq. 10) on the last dim of ``x [..., L, f]`` for
    ``positions [L]``: pairs ``(x_i, x_{i+f/2})`` rotated by ``position · base^(−2i/f)``."""
    half = x.shape[-1] // 2
    freq = base ** (-torch.arange(half, dtype=torch.float32) / half)
    angle = positions.to(torch.float32)[:, None] * freq[None, :]
    cos, sin = torch.cos(angle), torch.sin(angle)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def layer_norm(z: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
               eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the last dim with per-head ``gamma, beta [H, 1, f]``."""
    mu = z.mean(-1, keepdim=True)
    var = z.var(-1, keepdim=True, unbiased=False)
    return gamma * (z - mu) / torch.sqrt(var + eps) + beta


def reconstruction_grad(z: torch.Tensor, target: torch.Tensor, gamma: torch.Tensor,
                        beta: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """∂/∂z of ½‖LN(z) − target‖² (the inner loss of Eq. 2), in closed form."""
    d = z.shape[-1]
    mu = z.mean(-1, keepdim=True)
    std = torch.sqrt(z.var(-1, keepdim=True, unbiased=False) + eps)
    z_hat = (z - mu) / std
    g = (gamma * z_hat + beta - target) * gamma
    return (d * g - g.sum(-1, keepdim=True)
            - z_hat * (g * z_hat).sum(-1, keepdim=True)) / (d * std)


@dataclass(frozen=True)
class Correction:
    """The cloud's correction of one mini-batch (CoCorrRec Eq. 13–15), already
    normalised to the device values (Eq. 14): ``attn [N, H, K, b]`` is added to the
    attention rows ``A`` times ``P``, ``bias [N, H, K, f]`` to ``b̄`` times ``Q``."""

    attn: torch.Tensor
    bias: torch.Tensor


class TTTLinear(nn.Module):
    """θ_Q, θ_K, θ_V projections (Eq. 9), RoPE (Eq. 10) and the TTT-Linear hidden state
    updated in mini-batches of ``mini_batch`` tokens in the dual form (Eq. 5–7); the
    heads' outputs concatenated. Sequences start at a mini-batch boundary."""

    def __init__(self, dim: int, heads: int, mini_batch: int, base_lr: float = 1.0) -> None:
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim {dim} must split into {heads} heads of even width")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.mini_batch_size = mini_batch
        self.base_lr = base_lr
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        f = self.head_dim
        self.W0 = nn.Parameter(torch.randn(heads, f, f) * 0.02)
        self.b0 = nn.Parameter(torch.zeros(heads, f))
        self.ln_gamma = nn.Parameter(torch.ones(heads, 1, f))
        self.ln_beta = nn.Parameter(torch.zeros(heads, 1, f))
        self.lr_weight = nn.Parameter(torch.randn(heads, dim) * 0.02)
        self.lr_bias = nn.Parameter(torch.zeros(heads))
        self.scale_offset = nn.Parameter(torch.zeros(mini_batch))

    def initial_state(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, b)`` of ``n`` fresh sequences: the learnt W₀, b₀."""
        return (self.W0.expand(n, -1, -1, -1).clone(), self.b0.expand(n, -1, -1).clone())

    def project(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-head ``XQ, XK, XV [N, H, L, f]`` with RoPE at each token's place in its
        mini-batch, and the learnt rates ``lr [N, H, L]`` of ``x [N, L, d]``."""
        n, length, _ = x.shape
        split = [p(x).view(n, length, self.heads, self.head_dim).transpose(1, 2)
                 for p in (self.q, self.k, self.v)]
        place = torch.arange(length) % self.mini_batch_size
        lr = torch.sigmoid(torch.einsum("nld,hd->nhl", x, self.lr_weight)
                           + self.lr_bias[None, :, None]) * (self.base_lr / self.head_dim)
        return {"XQ": rotary(split[0], place), "XK": rotary(split[1], place),
                "XV": split[2], "lr": lr}

    def eta(self, lr: torch.Tensor) -> torch.Tensor:
        """``η [N, H, K, K]``: ``η[t, s] = scale_t · lr_s`` for ``s ≤ t``, else 0."""
        k = lr.shape[-1]
        scale = torch.clamp_min(1.0 / torch.arange(1, k + 1) + self.scale_offset[:k], 0.0)
        return torch.tril(scale[:, None] * lr[..., None, :])

    def mini_batch(self, W: torch.Tensor, b: torch.Tensor, XQ: torch.Tensor,
                   XK: torch.Tensor, XV: torch.Tensor, lr: torch.Tensor,
                   correction: Correction | None = None, P: torch.Tensor | None = None,
                   Q: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One mini-batch of ``K ≤ mini_batch`` tokens from state ``W [N, H, f, f]``,
        ``b [N, H, f]`` in the dual form (Eq. 6–7).

        Returns the heads' outputs ``θ_Q x + LN(z̄) [N, H, K, f]``, the state after the
        K-th token ``(W_b, b_b)``, and the device values the correction of Eq. 14 is
        normalised to (``attn``, ``bias`` rows)."""
        b_ = b[:, :, None, :]
        Z = XK @ W + b_
        grad = reconstruction_grad(Z, XV - XK, self.ln_gamma, self.ln_beta)
        eta = self.eta(lr)
        attn = torch.tril(XQ @ XK.transpose(-1, -2))
        bias = b_ - eta @ grad
        values = {"attn": attn, "bias": bias}
        if correction is not None:
            assert P is not None and Q is not None
            attn = attn + P * torch.tril(correction.attn[..., :attn.shape[-1]])
            bias = bias + Q * correction.bias
        z_bar = XQ @ W - (eta * attn) @ grad + bias
        last = eta[:, :, -1, :, None]                       # η of the K-th token's row
        W_next = W - (last * XK).transpose(-1, -2) @ grad
        b_next = b - (last * grad).sum(-2)
        out = XQ + layer_norm(z_bar, self.ln_gamma, self.ln_beta)
        return out, W_next, b_next, values

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run over ``x [N, L, d]`` (starting at a mini-batch boundary) from ``state``
        (default W₀, b₀): the outputs ``[N, L, d]`` and the state after the last
        complete mini-batch. Padding after a row's real tokens does not change that
        row's earlier outputs (the block is causal)."""
        n, length, _ = x.shape
        W, b = state if state is not None else self.initial_state(n)
        p = self.project(x)
        outs = []
        for start in range(0, length, self.mini_batch_size):
            stop = min(start + self.mini_batch_size, length)
            out, W_next, b_next, _ = self.mini_batch(
                W, b, *(p[k][:, :, start:stop] for k in ("XQ", "XK", "XV", "lr")))
            outs.append(out)
            if stop - start == self.mini_batch_size:
                W, b = W_next, b_next
        out = torch.cat(outs, dim=2) if outs else x.new_zeros(n, self.heads, 0, self.head_dim)
        return out.transpose(1, 2).reshape(n, length, self.dim), (W, b)


def primal_outputs(block: TTTLinear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same block token by token in the primal form of Eq. 1–5, with the inner
    gradient taken by autograd: for token ``t`` of the mini-batch from ``t'``,
    ``W̄_t = W_{t'} − scale_t Σ_{s≤t} lr_s ∇_W ℓ(W_{t'}; x_s)`` and ``z_t = LN(x_Q W̄_t
    + b̄_t)``. Slow; the reference the dual form is tested against. Returns the outputs
    ``[N, L, d]`` and ``W`` after the last complete mini-batch."""
    n, length, _ = x.shape
    p = block.project(x)
    W, b = block.initial_state(n)
    outs = []
    for start in range(0, length, block.mini_batch_size):
        stop = min(start + block.mini_batch_size, length)
        grads_W, grads_b = [], []
        for s in range(start, stop):
            Wv = W.detach().clone().requires_grad_(True)
            bv = b.detach().clone().requires_grad_(True)
            xk, xv = p["XK"][:, :, s], p["XV"][:, :, s]
            z = (xk[:, :, None, :] @ Wv).squeeze(2) + bv
            loss = 0.5 * ((layer_norm(z[:, :, None], block.ln_gamma, block.ln_beta)[:, :, 0]
                           - (xv - xk)) ** 2).sum()
            gW, gb = torch.autograd.grad(loss, (Wv, bv))
            grads_W.append(p["lr"][:, :, s, None, None] * gW)
            grads_b.append(p["lr"][:, :, s, None] * gb)
            t = s - start
            scale = torch.clamp_min(1.0 / (t + 1) + block.scale_offset[t], 0.0)
            W_t = W - scale * torch.stack(grads_W).sum(0)
            b_t = b - scale * torch.stack(grads_b).sum(0)
            xq = p["XQ"][:, :, s]
            z_t = (xq[:, :, None, :] @ W_t).squeeze(2) + b_t
            outs.append(xq + layer_norm(z_t[:, :, None], block.ln_gamma, block.ln_beta)[:, :, 0])
        if stop - start == block.mini_batch_size:
            W, b = W_t, b_t
    out = torch.stack(outs, dim=2)  # [N, H, L, f]
    return out.transpose(1, 2).reshape(n, length, block.dim), W


__all__ = ["Correction", "TTTLinear", "layer_norm", "primal_outputs", "reconstruction_grad",
           "rotary"]
