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


@torch.no_grad()
def test_prefix_states_are_the_states_of_the_cut_windows_bit_for_bit() -> None:
    """What IntellectReq's MRD pairs read of a window cut ``gap`` clicks earlier, from
    one pass over the whole window: the same bits as Ω and the generator run on the cut
    window itself, an empty cut included, for any number of rows."""
    torch.manual_seed(0)
    model = ECCDR(n_items=50, dim=8)
    for n in (3, 5, 16, 37):
        g = torch.Generator().manual_seed(n)
        lengths = torch.randint(0, 13, (n,), generator=g)
        history = torch.where(torch.arange(12)[None] < lengths[:, None],
                              torch.randint(1, 51, (n, 12), generator=g), 0)
        cut = (lengths - torch.randint(1, 6, (n,), generator=g)).clamp(min=0)
        assert (cut == 0).any() and (cut > 0).any()
        (u, gen), (u_cut, gen_cut) = model.prefix_states(history, [lengths, cut])
        window = torch.where(torch.arange(12)[None] < cut[:, None], history, 0)
        assert torch.equal(u, model.user_state(history, lengths))
        assert torch.equal(u_cut, model.user_state(window, cut))
        for ours, theirs in ((gen, model.generate(history, lengths)),
                             (gen_cut, model.generate(window, cut))):
            for (W, b), (W_, b_) in zip(model.generator.heads(ours), theirs, strict=True):
                assert torch.equal(W, W_) and torch.equal(b, b_)
