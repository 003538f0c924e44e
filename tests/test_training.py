"""Cloud-job training: warm starts and experience replay (rehearsal)."""

from __future__ import annotations

import numpy as np
import torch
from dcrec.models.training import InputTrainer, TrainingConfig
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
