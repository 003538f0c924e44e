"""EC-CDR: generated dynamic layers per device, stale parameters, joint training."""

from __future__ import annotations

import torch
from dcrec.models.ec_cdr import ECCDR


def _batch():
    history = torch.tensor([[3, 5, 7, 2, 0], [4, 1, 0, 0, 0], [9, 9, 8, 0, 0]])
    return history, torch.tensor([4, 2, 3]), torch.tensor([[1, 2, 3], [6, 9, 4], [2, 5, 7]])


def test_each_device_gets_its_own_generated_layers() -> None:
    torch.manual_seed(0)
    model = ECCDR(n_items=20, dim=8)
    history, lengths, _ = _batch()
    params = model.generate(history, lengths)
    assert len(params) == 2
    W, b = params[0]
    assert W.shape == (3, 8, 8) and b.shape == (3, 8)
    assert not torch.allclose(W[0], W[1])
    # a generated layer has the scale of an ordinary one, not O(√d)
    assert 0.05 < W.std().item() < 1.0


def test_parameters_from_the_current_sequence_are_the_up_to_date_model() -> None:
    torch.manual_seed(0)
    model = ECCDR(n_items=20, dim=8)
    history, lengths, candidates = _batch()
    fresh = model.score(history, lengths, candidates)
    same = model.score(history, lengths, candidates, model.generate(history, lengths))
    torch.testing.assert_close(fresh, same)
    stale = model.generate(history[:, :1], torch.ones(3, dtype=torch.long))
    assert not torch.allclose(fresh, model.score(history, lengths, candidates, stale))


def test_the_generator_learns_with_the_static_layers() -> None:
    """Every part of the generator is a registered parameter and gets a gradient (the
    authors' code keeps its heads in plain lists, where they never learn)."""
    torch.manual_seed(0)
    model = ECCDR(n_items=20, dim=8)
    names = {n for n, _ in model.named_parameters()}
    assert any(n.startswith("generator.weight_heads") for n in names)
    history, lengths, candidates = _batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = model.loss(history, lengths, candidates[:, 0], candidates[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            if name.startswith("generator.weight_heads"):
                assert p.grad is not None and p.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
