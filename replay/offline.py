"""Offline protocols (``dcrec eval``): fixed time-ordered splits, sampled negatives.

``loo`` — leave-last-out (DCCL §4.1.1 / appendix A.1, RecBole's ``LS valid_and_test``):
each user's last click is the test item, the second last the validation item, the
rest train. Training samples are every prefix of the training part (at most
``max_len`` clicks of history); early stopping on validation NDCG@10.

``mc2sf`` — MC²-SF §5.1.1: for a user with ``l`` clicks, the last 5 are the test phase,
clicks ``l-9 … l-5`` the fast phase and the rest the slow phase. The cloud (slow)
model trains on the slow phase and "predicts every item in the testing phase based on
the sequence in the slow training phase"; a device (fast) model sees every click
before its target. Baselines here early-stop on the fast phase.

Every test item is ranked against ``n_negatives`` items the user never clicked.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from dcrec.models.metrics import RankingEvaluator, head_and_tail
from dcrec.replay.log import InteractionLog
from dcrec.replay.negatives import NegativeSampler
from dcrec.streams.schema import CLICK
from torch import nn


@dataclass(frozen=True)
class UserSequences:
    """Every user's clicks in time order, concatenated: ``items[start[u]:start[u+1]]``."""

    items: np.ndarray    # shifted ids (item + 1)
    users: np.ndarray    # user of each position
    ts: np.ndarray       # time of each click
    start: np.ndarray    # [n_users + 1]
    log_index: np.ndarray | None = None  # position of each entry in the log

    @classmethod
    def from_log(cls, log: InteractionLog, event: int = CLICK) -> UserSequences:
        """Each user's events of kind ``event`` (clicks by default; ``EXPOSURE`` gives
        the exposure sequences MC²-SF's negative memory reads)."""
        rows = np.flatnonzero(log.event == event)
        order = rows[np.argsort(log.user[rows], kind="stable")]  # stable keeps time order
        users = log.user[order].astype(np.int64)
        start = np.searchsorted(users, np.arange(log.n_users + 1))
        return cls(log.item[order].astype(np.int64) + 1, users, log.ts[order], start, order)

    def windows_before(self, users: np.ndarray, log_index: np.ndarray,
                       max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows of each user's entries that come before log position ``log_index``."""
        assert self.log_index is not None
        span = np.int64(self.log_index.max(initial=0)) + 2
        keys = self.users * span + self.log_index
        end = np.searchsorted(keys, users.astype(np.int64) * span + log_index)
        return self.windows(end, users, max_len)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.start)

    def windows(self, end: np.ndarray, users: np.ndarray,
                max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Left-aligned windows of each user's clicks before position ``end``
        (exclusive): ``([N, max_len], lengths)``."""
        first = self.start[users]
        length = np.minimum(end - first, max_len)
        index = (end - length)[:, None] + np.arange(max_len)[None, :]
        valid = np.arange(max_len)[None, :] < length[:, None]
        return np.where(valid, self.items[np.minimum(index, len(self.items) - 1)], 0), length


@dataclass(frozen=True)
class Samples:
    """Next-item samples: history windows, their lengths, the target (shifted ids) and
    each sample's user and position (the negatives' key)."""

    history: np.ndarray
    lengths: np.ndarray
    target: np.ndarray
    users: np.ndarray
    key: np.ndarray

    def __len__(self) -> int:
        return len(self.target)


@dataclass(frozen=True)
class Split:
    train: Samples
    valid: Samples
    test: Samples
    activity: np.ndarray  # clicks per user: the activity groups of the test (DCCL Fig. 4)


def _samples(seqs: UserSequences, positions: np.ndarray, history_end: np.ndarray,
             max_len: int) -> Samples:
    history, lengths = seqs.windows(history_end, seqs.users[positions], max_len)
    keep = lengths > 0
    return Samples(history[keep], lengths[keep], seqs.items[positions][keep],
                   seqs.users[positions][keep], positions[keep])


def loo_split(seqs: UserSequences, max_len: int) -> Split:
    """Leave-last-out: train on every prefix but the last two clicks of each user."""
    lengths = seqs.lengths
    eligible = np.flatnonzero(lengths >= 3)
    test_pos = seqs.start[eligible + 1] - 1
    valid_pos = test_pos - 1
    offsets = np.arange(len(seqs.items)) - seqs.start[seqs.users]
    train_limit = np.where(lengths >= 3, lengths - 2, lengths)[seqs.users]
    train_pos = np.flatnonzero((offsets >= 1) & (offsets < train_limit))
    return Split(_samples(seqs, train_pos, train_pos, max_len),
                 _samples(seqs, valid_pos, valid_pos, max_len),
                 _samples(seqs, test_pos, test_pos, max_len), lengths)


def mc2sf_split(seqs: UserSequences, max_len: int, device_model: bool) -> Split:
    """MC²-SF §5.1.1 phases: slow = clicks before ``l-9``, fast = ``l-9 … l-5``,
    test = the last 5. A cloud model sees only the slow phase at test time."""
    lengths = seqs.lengths
    eligible = np.flatnonzero(lengths >= 12)  # at least two slow clicks to train on
    offsets = np.arange(len(seqs.items)) - seqs.start[seqs.users]
    in_eligible = np.isin(seqs.users, eligible)
    user_len = lengths[seqs.users]
    slow = in_eligible & (offsets >= 1) & (offsets < user_len - 10)
    fast = in_eligible & (offsets >= user_len - 10) & (offsets < user_len - 5)
    test = in_eligible & (offsets >= user_len - 5)
    slow_end = seqs.start[seqs.users] + user_len - 10
    train_pos, valid_pos, test_pos = (np.flatnonzero(m) for m in (slow, fast, test))

    def history_end(pos: np.ndarray) -> np.ndarray:
        return pos if device_model else slow_end[pos]

    return Split(_samples(seqs, train_pos, train_pos, max_len),
                 _samples(seqs, valid_pos, history_end(valid_pos), max_len),
                 _samples(seqs, test_pos, history_end(test_pos), max_len), lengths)


Scorer = Callable[[Samples, np.ndarray], np.ndarray]  # (samples, candidates) -> scores


def evaluate(scorer: Scorer, samples: Samples, sampler: NegativeSampler,
             activity: np.ndarray | None = None) -> dict:
    """Rank each sample's target against its sampled negatives: metric name → value.
    With the users' ``activity`` (clicks per user) also the 20 activity groups'
    macro-AUC (``groups``, DCCL Fig. 4) and their head and tail means
    (:func:`~dcrec.models.metrics.head_and_tail`)."""
    candidates = sampler.sample(samples.key, samples.users, samples.target - 1)
    evaluator = RankingEvaluator()
    evaluator.add(samples.users, scorer(samples, candidates + 1))
    summary: dict = evaluator.summary()
    if activity is not None:
        groups = evaluator.activity_groups(activity)
        summary.update(head_and_tail(groups), groups=groups)
    return summary


@dataclass
class EarlyStopping:
    """Keep the best state by validation NDCG@10; stop after ``patience`` epochs
    without improvement (RecBole's ``stopping_step``)."""

    patience: int
    best: float = -1.0
    best_epoch: int = -1
    best_state: dict | None = None
    stale: int = 0

    def update(self, epoch: int, value: float, state: dict) -> bool:
        """Record an epoch; True when training should stop."""
        if value > self.best:
            self.best, self.best_epoch, self.stale = value, epoch, 0
            self.best_state = copy.deepcopy(state)
        else:
            self.stale += 1
        return self.stale >= self.patience


def train_early_stopped(model: nn.Module, fit_epoch: Callable[[], float],
                        validate: Callable[[], float], max_epochs: int, patience: int,
                        on_epoch: Callable[[int, float, float], None]) -> dict:
    """Train ``model`` an epoch at a time (``fit_epoch`` returns the epoch's loss) until
    validation NDCG@10 (``validate``) has not improved for ``patience`` epochs, then load
    its best state; returns ``best_epoch`` and ``epochs``."""
    stopper = EarlyStopping(patience)
    epoch = 0
    for epoch in range(max_epochs):
        loss = fit_epoch()
        ndcg = validate()
        on_epoch(epoch, loss, ndcg)
        if stopper.update(epoch, ndcg, model.state_dict()):
            break
    assert stopper.best_state is not None
    model.load_state_dict(stopper.best_state)
    return {"best_epoch": stopper.best_epoch, "epochs": epoch + 1}
