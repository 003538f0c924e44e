"""IntellectReq's request agent model (Lv et al., WWW 2024, §3.2.2–3.2.4): how likely a
device's cloud-generated parameters still recommend well, so it asks for new ones only
when that is low.

A device whose dynamic parameters were generated from its sequence at ``t′`` holds
``e_{t′}``; at ``T`` it has ``e_T`` (both from the static layers Ω of EC-CDR through a
small encoder). Then

- **MRD** (§3.2.2): ``m = f_MRD([e_{t′}; e_T; log(1 + T − t′)])`` — a fully connected
  network (Eq. 9 reads the sequences s_{t′} and s_T, which show how many clicks apart
  they are; codes of them do not, so the gap is an input) trained on
  labels history gives for free (Eq. 7–9): with parameters from ``t′`` applied at ``T``,
  does the click rank as well as with parameters fresh from ``T``
  (:func:`mis_recommendation_label`)?
- **DM** (§3.2.3): a conditional VAE on the device's state — prior ``P(z | e_T)``,
  posterior ``Q(z | e_T, t_v)`` with the clicked item — and a next-item network
  ``r̂ = NPN([e_T; dec(z)])`` scored ``⟨r̂, t_v⟩``; trained by cross-entropy plus
  ``β·KL(Q ‖ P)`` (Eq. 11–16). Its uncertainty about the device is the spread of
  ``r̂`` over ``n`` prior samples: ``u = Σ_k Var_i r̂_i^{(k)}`` (Eq. 17–18).
- **MRD reading drift** (dcrec's, the ``intellectreq-drift`` preset): the same network
  with one more input, ``log(1 + D)``, ADWIN's normalised gap between the mean item
  embedding of the clicks since t′ and that of the window at t′
  (:func:`~dcrec.models.request_baselines.window_drift`) — like the gap, a function of
  the two sequences Eq. 9 reads that two state codes of whole windows blur.
- **MRS** (appendix A.3 ④, MRD and DM together): ``MRS = σ(w·[m; log(1 + u)] + c)`` —
  the estimated chance the device's parameters are still right. A device requests when
  ``MRS ≤ threshold`` (Eq. 19–20); the cloud sets the threshold from the request budget.

Where the paper and the authors' code differ (docs/intellectreq-spec.md), dcrec follows
the paper: Gaussian sampling, the uncertainty of Eq. 18 (variance across samples), a
CVAE whose posterior sees the clicked item; ``u`` enters the combiner as ``log(1 + u)``.

>>> import torch
>>> agent = RequestAgentModel(dim=8)
>>> e_then, e_now = torch.randn(3, 8), torch.randn(3, 8)
>>> agent.mrs(e_then, e_now, since=torch.tensor([1, 3, 8])).shape
torch.Size([3])
"""

from __future__ import annotations

import torch
from dcrec.models.training import ROW_FLOOR
from torch import nn
from torch.nn import functional as F


def mis_recommendation_label(stale_logits: torch.Tensor,
                             fresh_logits: torch.Tensor) -> torch.Tensor:
    """MRD's label (Eq. 8, as revenue): ``(1 + AUC_stale − AUC_fresh) / 2`` per row of
    candidate logits ``[N, C]`` (the click in column 0, negatives after), where AUC is
    the share of negatives ranked below the click. 1: the stale parameters rank the
    click as well as parameters fresh from the current sequence could not — asking
    would lose; ½: no difference; 0: the stale ones mis-recommend where fresh ones
    would not — asking pays. Eq. 8 itself marks ``1[σ(stale logit) ≥ 0.5] == y``; that
    label mostly says how predictable a device is whatever its parameters, so the
    devices that ask are the hard ones, again and again (docs/intellectreq.md)."""
    def auc(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, 1:] < logits[:, :1]).float().mean(1)

    return (1 + auc(stale_logits) - auc(fresh_logits)) / 2


class DistributionMapper(nn.Module):
    """DM (Eq. 11–18): prior and posterior over a latent z, and the next-item network."""

    def __init__(self, dim: int, latent: int = 16) -> None:
        super().__init__()
        self.latent = latent
        self.prior = nn.Sequential(nn.Linear(dim, latent), nn.Tanh(), nn.Linear(latent, 2 * latent))
        self.posterior = nn.Sequential(nn.Linear(2 * dim, latent), nn.Tanh(),
                                       nn.Linear(latent, 2 * latent))
        self.decode = nn.Linear(latent, dim)
        self.next_item = nn.Linear(2 * dim, dim)   # NPN: r̂ from [e_T; dec(z)]

    @staticmethod
    def _split(out: torch.Tensor) -> torch.distributions.Normal:
        mean, log_var = out.chunk(2, dim=-1)
        return torch.distributions.Normal(mean, torch.exp(0.5 * log_var.clamp(-8, 8)))

    def predict(self, e: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """r̂ ``[..., d]``, the predicted next-item embedding (Eq. 13)."""
        return self.next_item(torch.cat([e, self.decode(z)], dim=-1))

    def loss(self, e: torch.Tensor, positive: torch.Tensor, targets: torch.Tensor,
             labels: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """Eq. 14–16: cross-entropy of ``⟨r̂, t_v⟩`` on candidates ``targets [N, C, d]``
        with ``labels [N, C]``, r̂ from a posterior sample given the clicked item
        ``positive [N, d]``, plus ``β·KL(Q ‖ P)``."""
        prior = self._split(self.prior(e))
        posterior = self._split(self.posterior(torch.cat([e, positive], dim=-1)))
        r_hat = self.predict(e, posterior.rsample())
        logits = torch.einsum("nd,ncd->nc", r_hat, targets)
        kl = torch.distributions.kl_divergence(posterior, prior).sum(-1)
        return F.binary_cross_entropy_with_logits(logits, labels) + beta * kl.mean()

    def uncertainty(self, e: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Eq. 17–18: ``Σ_k Var_i r̂_i^{(k)}`` over draws ``z_i = μ + σ·noise_i`` from the
        prior (``noise [n, latent]``, the same n standard normal draws for every row, so
        a device's value does not depend on which devices share the call)."""
        prior = self._split(self.prior(e))
        z = prior.loc + prior.scale * noise[:, None, :]
        r_hat = self.predict(e.expand(len(noise), *e.shape), z)
        return r_hat.var(dim=0).sum(-1)


class RequestAgentModel(nn.Module):
    """MRD, DM and their combination into the mis-recommendation score (MRS)."""

    def __init__(self, dim: int, hidden: int = 64, latent: int = 16, samples: int = 10,
                 reads_drift: bool = False) -> None:
        super().__init__()
        self.reads_drift = reads_drift
        self.encoder = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim))
        self.mrd = nn.Sequential(nn.Linear(2 * dim + 1 + reads_drift, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))
        self.dm = DistributionMapper(dim, latent)
        self.combine = nn.Linear(2, 1)
        # the n prior draws of Eq. 17, fixed with the model (common random numbers)
        self.register_buffer("noise", torch.randn(samples, latent))

    def mrs_logit(self, e_then: torch.Tensor, e_now: torch.Tensor, since: torch.Tensor,
                  drift: torch.Tensor | None = None) -> torch.Tensor:
        """The logit of MRS for states ``e_then`` (at the parameters' generation) and
        ``e_now`` ``[N, d]`` (already through :attr:`encoder`), ``since`` ``[N]`` clicks
        apart (what the two sequences of Eq. 9 show and two codes do not) and, for an
        agent that :attr:`reads_drift`, their drift statistic D ``[N]``."""
        if (drift is not None) != self.reads_drift:
            raise ValueError("the drift statistic D is given exactly to an agent that "
                             "reads it")
        features = [e_then, e_now, torch.log1p(since.to(e_now.dtype))[:, None]]
        if drift is not None:
            features.append(torch.log1p(drift.to(e_now.dtype))[:, None])
        m = self.mrd(torch.cat(features, dim=-1)).squeeze(-1)
        u = self.dm.uncertainty(e_now, self.noise)
        return self.combine(torch.stack([m, torch.log1p(u)], dim=-1)).squeeze(-1)

    def mrs(self, e_then: torch.Tensor, e_now: torch.Tensor, since: torch.Tensor,
            drift: torch.Tensor | None = None) -> torch.Tensor:
        """MRS in (0, 1): the chance parameters from ``e_then`` still serve ``e_now``."""
        return torch.sigmoid(self.mrs_logit(e_then, e_now, since, drift))


class IntellectReqModel(nn.Module):
    """What a release carries: the EC-CDR recommender (static layers and generator) and
    the request agent model, with the agent's encoder reading EC-CDR's static state."""

    def __init__(self, n_items: int, dim: int = 32, reads_drift: bool = False) -> None:
        super().__init__()
        from dcrec.models.ec_cdr import ECCDR

        self.rec = ECCDR(n_items, dim)
        self.agent = RequestAgentModel(dim, reads_drift=reads_drift)

    def state_code(self, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """e = encoder(Ω(s)) ``[N, d]``: what MRD and DM read of a click sequence."""
        return self.agent.encoder(self.rec.user_state(history, lengths))

    @torch.no_grad()
    def empty_code(self) -> torch.Tensor:
        """e of the empty click window ``[d]``: the state the generic parameters (the
        generator on an empty window) were made for, so what a device holding them
        compares its state against. Computed over ``ROW_FLOOR`` rows, so the device
        and the cloud get the same bits."""
        empty = torch.zeros(ROW_FLOOR, 1, dtype=torch.long)
        return self.state_code(empty, torch.zeros(ROW_FLOOR, dtype=torch.long))[0]
