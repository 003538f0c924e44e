"""Cloud-job training: warm starts and experience replay (rehearsal)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from dcrec.models.din import DIN
from dcrec.models.gru4rec import GRU4Rec
from dcrec.models.mc2sf import FastComponent, SlowComponent
from dcrec.models.metapatch import MetaPatchDIN
from dcrec.models.training import (
    IncrementalTrainer,
    InputTrainer,
    TrainingConfig,
    pad_rows,
    score_inputs,
    torch_threads,
)
from torch import nn


class _Recorder(nn.Module):
    """A model whose loss records which samples (by id) each fit trained on."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen: list[int] = []

    def loss(self, inputs: dict[str, torch.Tensor], candidates: torch.Tensor) -> torch.Tensor:
        self.seen.extend(inputs["id"].tolist())
        # the target travels with its sample: candidate column 0 is id + 1
        assert torch.equal(candidates[:, 0], inputs["id"] + 1)
        return (self.weight ** 2).sum() + 0 * candidates.float().sum()


def _trainer(ratio: int, capacity: int) -> tuple[InputTrainer, _Recorder]:
    model = _Recorder()
    config = TrainingConfig(batch_size=4, epochs=1, replay_ratio=ratio,
                            replay_capacity=capacity)
    return InputTrainer(model, model.loss, n_items=50, config=config, seed=0), model


def _fit(trainer: InputTrainer, model: _Recorder, ids: range) -> list[int]:
    model.seen = []
    ids_ = np.array(ids)
    trainer.fit({"id": ids_}, ids_ + 1)
    return model.seen


def test_without_replay_a_job_trains_on_what_arrived_since_the_last_only() -> None:
    trainer, model = _trainer(ratio=0, capacity=100)
    assert sorted(_fit(trainer, model, range(0, 6))) == list(range(0, 6))
    assert sorted(_fit(trainer, model, range(6, 9))) == [6, 7, 8]
    assert trainer.recent == {}


def test_replay_rehearses_ratio_draws_per_new_sample_from_the_most_recent() -> None:
    trainer, model = _trainer(ratio=2, capacity=5)
    first = _fit(trainer, model, range(0, 3))
    # 3 new, then min(held 3, 2·3) draws among them
    assert len(first) == 6 and set(first) <= {0, 1, 2} and set(first) >= {0, 1, 2}
    second = _fit(trainer, model, range(3, 7))
    # 4 new (each at least once) + min(held 5, 2·4) = 5 draws from the last 5: ids 2 … 6
    assert len(second) == 9
    assert set(second) >= {3, 4, 5, 6} and set(second) <= {2, 3, 4, 5, 6}
    assert trainer.recent[""].tolist() == [3, 4, 5, 6, 7]   # targets: id + 1
    assert trainer.recent["id"].tolist() == [2, 3, 4, 5, 6]


def test_replay_draws_are_seeded() -> None:
    runs = []
    for _ in range(2):
        trainer, model = _trainer(ratio=3, capacity=50)
        runs.append([_fit(trainer, model, range(a, a + 5)) for a in (0, 5, 10)])
    assert runs[0] == runs[1]


def _windows(n: int, n_items: int, max_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned click windows of mixed lengths (many short, some full)."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(0.08, n), max_len).astype(np.int32)
    windows = np.zeros((n, max_len), dtype=np.int32)
    for row, length in enumerate(lengths):
        windows[row, :length] = rng.integers(1, n_items + 1, length)
    return windows, lengths


def _cut_models() -> dict[str, tuple[nn.Module, Callable, dict]]:
    """Every model scored with cut windows, its scorer and its extra inputs."""
    torch.manual_seed(0)
    n, d = 300, 16
    rng = np.random.default_rng(1)
    gru4rec, din = GRU4Rec(200, 16, 16), DIN(200, d)
    slow, fast = SlowComponent(200, d), FastComponent(200, d, s2f=True)
    metapatch = MetaPatchDIN(200, d, metapatch_dim=8)
    return {
        "gru4rec": (gru4rec, lambda b, c: gru4rec.score(b["history"], b["lengths"], c), {}),
        "din": (din, lambda b, c: din.score(b["history"], b["lengths"], c), {}),
        "mc2sf slow": (slow, lambda b, c: slow.score(b["history"], b["negative"], c),
                       {"negative": rng.normal(size=(n, d)).astype(np.float32)}),
        "mc2sf fast": (fast, lambda b, c: fast.score_states(
            fast.positive_interest(b["history"], b["lengths"], fast.initial_states(b["hint"])[0]),
            b["negative"], fast.initial_states(b["hint"])[2], c),
            {"negative": rng.normal(size=(n, d)).astype(np.float32),
             "hint": rng.normal(size=(n, 2 * d)).astype(np.float32)}),
        "dccl": (metapatch, lambda b, c: metapatch.score(b["history"], b["lengths"], c,
                                                         b["metapatch"]),
                 {"metapatch": rng.normal(size=(n, 8)).astype(np.float32)}),
    }


@pytest.mark.parametrize("name", ["gru4rec", "din", "mc2sf slow", "mc2sf fast", "dccl"])
@pytest.mark.parametrize("chunk", [16, 256])
def test_windows_cut_after_each_chunks_longest_score_the_same_bits(name: str, chunk: int) -> None:
    model, score, extra = _cut_models()[name]
    history, lengths = _windows(300, 200, 50, seed=2)
    candidates = np.random.default_rng(3).integers(1, 201, (300, 101))
    inputs = {"history": history, "lengths": lengths, **extra}
    assert model.cut_windows_exact
    model.eval()
    with torch.inference_mode():   # every row at once, windows whole
        whole = score({k: torch.from_numpy(pad_rows(v.astype(np.float32 if v.dtype.kind == "f"
                                                            else np.int64)))
                       for k, v in inputs.items()},
                      torch.from_numpy(pad_rows(candidates))).numpy()[:300]
    cut = score_inputs(model, score, inputs, candidates, chunk=chunk)
    assert np.array_equal(cut, whole)



@pytest.mark.parametrize("name", ["mc2sf slow", "mc2sf fast"])
def test_a_row_scores_the_same_bits_whoever_shares_its_call(name: str) -> None:
    """Rows padded to a multiple of ROW_FLOOR: the first n rows scored alone give the
    bits they get among 300 (unpadded, MC²-SF's 21 or 43 rows differed in the last bit)."""
    model, score, extra = _cut_models()[name]
    history, lengths = _windows(300, 200, 50, seed=2)
    candidates = np.random.default_rng(3).integers(1, 201, (300, 101))
    inputs = {"history": history, "lengths": lengths, **extra}
    whole = score_inputs(model, score, inputs, candidates)
    for n in range(1, 80):
        alone = score_inputs(model, score, {k: v[:n] for k, v in inputs.items()},
                             candidates[:n])
        assert np.array_equal(alone, whole[:n]), f"{n} rows"


def _trained_at(threads: int, samples: int) -> dict[str, torch.Tensor]:
    """GRU4Rec's parameters after one fit on ``samples`` windows at ``threads``."""
    torch.manual_seed(0)
    model = GRU4Rec(200, 32, 32)
    trainer = IncrementalTrainer(model, TrainingConfig(batch_size=16, epochs=2), seed=0)
    history, lengths = _windows(samples, 200, 50, seed=4)
    target = np.random.default_rng(5).integers(1, 201, samples)
    with torch_threads(threads):
        trainer.fit(history, lengths, target)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("samples", [16 + 5, 16 + 6, 16 + 10, 48])
def test_training_gives_the_same_bits_at_any_thread_count(samples: int) -> None:
    """An epoch's last batch of a few rows (a GEMM over 6 × 50 GRU rows rounds
    differently at two threads) is trained at one thread, so this fit gives the same
    bits at two threads as at one (models/training.py says what that cannot cover)."""
    one, two = _trained_at(1, samples), _trained_at(2, samples)
    for name in one:
        assert torch.equal(one[name], two[name]), name
