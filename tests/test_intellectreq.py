"""IntellectReq's agent model: labels from history, the DM's uncertainty, MRS."""

from __future__ import annotations

import torch
from dcrec.models.intellectreq import (
    DistributionMapper,
    RequestAgentModel,
    mis_recommendation_label,
)


def test_the_label_marks_predictions_the_stale_parameters_got_wrong() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert mis_recommendation_label(logits, labels).tolist() == [1.0, 0.0, 0.0, 1.0]


def test_uncertainty_is_the_spread_across_prior_samples() -> None:
    """Eq. 18: a prior with (next to) no spread gives (next to) no uncertainty; a wider
    one far more."""
    torch.manual_seed(0)
    dm = DistributionMapper(dim=8, latent=4)
    e = torch.randn(5, 8)
    with torch.no_grad():
        dm.prior[-1].weight.zero_()
        dm.prior[-1].bias.zero_()
        dm.prior[-1].bias[4:] = -30.0      # log-variance, clamped at -8: σ ≈ 0.018
        narrow = dm.uncertainty(e, samples=200)
        dm.prior[-1].bias[4:] = 0.0        # σ = 1
        wide = dm.uncertainty(e, samples=200)
    assert (narrow < 1e-3).all() and (wide > 1000 * narrow).all()


def test_the_dm_learns_the_next_item_and_its_kl_stays_finite() -> None:
    torch.manual_seed(0)
    dm = DistributionMapper(dim=8, latent=4)
    e, items = torch.randn(64, 8), torch.randn(10, 8)
    pos = torch.randint(0, 10, (64,))
    targets = items[torch.stack([pos, (pos + 3) % 10], dim=1)]
    labels = torch.tensor([[1.0, 0.0]]).expand(64, 2)
    optimizer = torch.optim.Adam(dm.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        loss = dm.loss(e, items[pos], targets, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0] and all(map(lambda x: x == x, losses))


def test_mrs_is_a_probability_and_learns_which_devices_drifted() -> None:
    """Trained on pairs labelled by Eq. 8, MRS is high where the state did not move
    and low where it did (so the moved devices request)."""
    torch.manual_seed(0)
    agent = RequestAgentModel(dim=8, samples=4)
    then = torch.randn(256, 8)
    moved = torch.rand(256) < 0.5
    now = torch.where(moved[:, None], torch.randn(256, 8), then + 0.01 * torch.randn(256, 8))
    still_right = (~moved).float()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-2)
    for _ in range(200):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            agent.mrs_logit(then, now), still_right)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        mrs = agent.mrs(then, now)
    assert ((mrs > 0) & (mrs < 1)).all()
    assert mrs[~moved].mean() > 0.8 and mrs[moved].mean() < 0.2
