"""DCCL's MetaPatch (Yao et al., KDD 2021, §3.2–3.3): a DIN backbone ``f`` whose
fully-connected junctions carry per-device patches generated from a shared basis.

At junction ``l`` with output ``z = f_l(x)`` (width ``k``) a patch adds a bottleneck
response (Houlsby-style, width ``r``):

    f_l^(m)(x) = f_l(x) + g · h_l^(m)(f_l(x))                        (DCCL Eq. 1)
    h_l^(m)(z) = W_up · ReLU(W_down · z + b_down) + b_up

All of a patch's parameters, flattened, are ``θ_l^(m) ∈ R^{K_l}`` (``K_l = 2kr + r + k``),
generated from the device's metapatch ``θ̂^(m) ∈ R^{K̂}`` and the basis ``Θ_l``:

    θ_l^(m) = Θ_l θ̂^(m) + θ_l⁰,    K̂ ≪ Σ_l K_l                       (DCCL Eq. 2)

where ``θ_l⁰ = [W⁰_down, b⁰_down, 0, 0]`` is a shared down-projection, part of the
basis (learnt in the cloud, frozen on the device). With Eq. 2 read as ``Θ_l θ̂`` alone,
``θ̂ = 0`` makes both projections zero and is a saddle of the device's loss (Eq. 3):
only ``b_up``'s directions of ``Θ_l`` get a gradient. The shared down-projection is
LoRA's remedy (one factor starts nonzero, the other at zero): ``W_up`` and ``b_up``
stay linear in ``θ̂``, so ``θ̂ = 0`` (or the gate ``g = 0``) still gives back the
backbone exactly, and every direction of ``θ̂`` that moves ``W_up`` has a gradient.
The cloud learns ``Θ`` through a proxy that replaces ``θ̂`` by the auxiliary encoder
over the metapatch and the user's profile ``u``:

    U(θ̂, u) = W⁽¹⁾ tanh(W⁽²⁾ θ̂ + W⁽³⁾ u)                             (DCCL Eq. 6)

Every row of a batch may carry its own metapatch: patches are applied per sample.

>>> import torch
>>> model = MetaPatchDIN(n_items=10, embedding_dim=8, metapatch_dim=4, profile_dim=3)
>>> history, lengths = torch.tensor([[3, 5, 0]]), torch.tensor([2])
>>> candidates = torch.tensor([[1, 2, 7]])
>>> zero = torch.zeros(1, 4)
>>> bool(torch.equal(model.score(history, lengths, candidates, zero),
...                  model.backbone.score(history, lengths, candidates)))
True
>>> model.score(history, lengths, candidates, torch.ones(1, 4)).shape
torch.Size([1, 3])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from dcrec.models.din import DIN, JUNCTIONS, SCORE_ROWS
from torch import nn


def patch_size(width: int, bottleneck: int) -> int:
    """``K_l``: parameters of one bottleneck patch on a junction of ``width``."""
    return 2 * width * bottleneck + bottleneck + width


class Patches:
    """The patches of one batch: per row and junction, ``(W_down, b_down, W_up, b_up)``
    unpacked from ``θ_l = Θ_l θ̂ + θ_l⁰`` (Eq. 2); called as DIN's junction hook (Eq. 1)."""

    def __init__(self, params: dict[str, torch.Tensor], widths: dict[str, int],
                 bottleneck: int, gate: float = 1.0) -> None:
        self.parts: dict[str, tuple[torch.Tensor, ...]] = {}
        r = bottleneck
        for name, theta in params.items():
            k, n = widths[name], theta.shape[0]
            w_down, b_down, w_up, b_up = torch.split(theta, [k * r, r, k * r, k], dim=1)
            self.parts[name] = (w_down.view(n, r, k), b_down, w_up.view(n, k, r), b_up)
        self.gate = gate

    def __call__(self, name: str, z: torch.Tensor) -> torch.Tensor:
        if name not in self.parts or self.gate == 0.0:
            return z
        w_down, b_down, w_up, b_up = self.parts[name]
        n = z.shape[0]
        flat = z.reshape(n, -1, z.shape[-1])                      # [N, *, k]
        hidden = torch.relu(torch.einsum("nsk,nrk->nsr", flat, w_down) + b_down[:, None])
        response = torch.einsum("nsr,nkr->nsk", hidden, w_up) + b_up[:, None]
        return z + self.gate * response.reshape(z.shape)


class MetaPatchDIN(nn.Module):
    """DIN ``f`` + patch basis ``Θ`` + auxiliary encoder ``U`` (see the module docstring).

    ``junctions`` selects the patched junctions (DCCL Table 4): ``attention`` (the first
    layer of DIN's activation unit, after the embeddings), ``mlp1`` (the first layer of
    the head) and ``pre_output`` (the layer before the output)."""

    cut_windows_exact = True   # the patched DIN, as DIN
    score_rows = SCORE_ROWS

    def __init__(self, n_items: int, embedding_dim: int = 32, metapatch_dim: int = 32,
                 bottleneck: int = 4, profile_dim: int = 0,
                 junctions: tuple[str, ...] = JUNCTIONS) -> None:
        super().__init__()
        unknown = set(junctions) - set(JUNCTIONS)
        if unknown:
            raise ValueError(f"unknown junctions {sorted(unknown)}; known: {JUNCTIONS}")
        self.n_items = n_items
        self.backbone = DIN(n_items, embedding_dim=embedding_dim)
        self.metapatch_dim = metapatch_dim
        self.bottleneck = bottleneck
        self.widths = {j: w for j, w in self.backbone.junction_widths().items()
                       if j in junctions}
        # Θ_l [K_l, K̂]: small, so a fresh metapatch makes small patches
        self.basis = nn.ParameterDict({
            j: nn.Parameter(torch.randn(patch_size(w, bottleneck), metapatch_dim) * 0.01)
            for j, w in self.widths.items()})
        # θ_l⁰: W⁰_down ~ N(0, 1/k) (a unit-scale bottleneck), b⁰_down = 0
        self.down_projection = nn.ParameterDict({
            j: nn.Parameter(torch.cat([torch.randn(w * bottleneck) / w ** 0.5,
                                       torch.zeros(bottleneck)]))
            for j, w in self.widths.items()})
        # U(θ̂, u) of Eq. 6: W⁽¹⁾, W⁽²⁾ [K̂, K̂], W⁽³⁾ [K̂, d_u]
        self.encoder_out = nn.Linear(metapatch_dim, metapatch_dim, bias=False)
        self.encoder_metapatch = nn.Linear(metapatch_dim, metapatch_dim, bias=False)
        self.encoder_profile = (nn.Linear(profile_dim, metapatch_dim, bias=False)
                                if profile_dim else None)

    def patches(self, metapatch: torch.Tensor, gate: float = 1.0) -> Patches:
        """Eq. 2 for a batch of metapatches ``[N, K̂]``."""
        # one small product per row, not one GEMM over the batch: a GEMM's summation
        # order (and so its bits) follows the batch size and thread count, and a
        # device's patch must not depend on which devices share its batch
        n = metapatch.shape[0]
        params = {j: torch.bmm(basis.expand(n, *basis.shape), metapatch[:, :, None])[..., 0]
                  + self._offset(j) for j, basis in self.basis.items()}
        return Patches(params, self.widths, self.bottleneck, gate)

    def _offset(self, junction: str) -> torch.Tensor:
        """θ_l⁰ of Eq. 2 as a ``[K_l]`` vector: the down-projection, zero up-projection."""
        down = self.down_projection[junction]
        return F.pad(down, (0, self.basis[junction].shape[0] - down.shape[0]))

    def encode(self, metapatch: torch.Tensor, profile: torch.Tensor | None) -> torch.Tensor:
        """U(θ̂, u) of Eq. 6 ``[N, K̂]``."""
        inner = self.encoder_metapatch(metapatch)
        if self.encoder_profile is not None and profile is not None:
            inner = inner + self.encoder_profile(profile)
        return self.encoder_out(torch.tanh(inner))

    def score(self, history: torch.Tensor, lengths: torch.Tensor, candidates: torch.Tensor,
              metapatch: torch.Tensor, gate: float = 1.0) -> torch.Tensor:
        """The device model f^(m): scores ``[N, C]`` with each row's metapatch."""
        return self.backbone.score(history, lengths, candidates,
                                   self.patches(metapatch, gate))

    def proxy_score(self, history: torch.Tensor, lengths: torch.Tensor,
                    candidates: torch.Tensor, metapatch: torch.Tensor,
                    profile: torch.Tensor | None) -> torch.Tensor:
        """The cloud's proxy f̂^(m) of Eq. 7: patches from Θ · U(θ̂, u)."""
        return self.backbone.score(history, lengths, candidates,
                                   self.patches(self.encode(metapatch, profile)))
