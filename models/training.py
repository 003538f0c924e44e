"""Incremental (warm-start) training of a sequential recommender by a cloud job."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from dcrec.models.base import SequentialRecommender
from torch import nn


@dataclass(frozen=True)
class TrainingConfig:
    """Optimiser settings of a cloud job (defaults: MC²-SF §5.1.4 — Adam, lr 5e-4,
    L2 1e-4, mini-batches of 256)."""

    lr: float = 5e-4
    l2: float = 1e-4
    batch_size: int = 256
    epochs: int = 1
    n_negatives: int = 4
    # experience replay: past samples trained on per new sample, drawn from the most
    # recent ``replay_capacity`` (0: a job trains on what arrived since the last only)
    replay_ratio: int = 0
    replay_capacity: int = 50_000


# CPU GEMM kernels round differently below this many rows, and for a row count that is
# not a multiple of it (torch 2.13 here: a GRU step over 7 rows differs in the last bit
# from the same rows among 40; MC²-SF's scoring of 21, 42 or 43 rows differs from the
# same rows among 256, while every multiple of 16 agrees), so a device's result would
# depend on which devices share its batch. Model calls on the device path pad their rows
# to a multiple of this: a slice split across any number of workers gives the same bits
# as the whole slice in the local runtime.
ROW_FLOOR = 16


def pad_rows(array: np.ndarray, rows: int = ROW_FLOOR) -> np.ndarray:
    """``array`` with its first row repeated until its row count is a multiple of
    ``rows``."""
    missing = -len(array) % rows
    if missing == 0 or len(array) == 0:
        return array
    return np.concatenate([array, np.repeat(array[:1], missing, axis=0)])


# A replay at --threads 2 should reproduce one at --threads 1 (and the kafka cloud the
# local runtime). A GEMM over a few rows rounds differently at two threads than at one
# (torch 2.13, MKL: EC-CDR's epoch-closing batch of 6 × 50 GRU rows, after which every
# parameter differs), while row counts that are a multiple of ROW_FLOOR agree. So a
# cloud job runs at one thread, and only its training batches of a multiple of
# ROW_FLOOR rows — most of its time — at torch's count. At one thread all of this is a
# no-op: results made at one thread stay as they were. What this does not cover: a full
# batch's reduction of many rows to one number (the gradient of a one-output layer's
# bias over 256 × 5 × 50 attention rows) is split between threads and, now and then,
# rounds differently (MC²-SF on ML-100K: first in job 55 of 213). Only --threads 1
# reproduces every bit across machines.
_job_threads: int | None = None   # torch's thread count outside the running cloud job


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """The block at ``count`` torch threads; torch's count as it was after it."""
    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def cloud_job_threads() -> Iterator[None]:
    """Runs a cloud job at one torch thread, but for its training batches of a multiple
    of :data:`ROW_FLOOR` rows (:func:`batch_threads`): its few-row GEMMs (last batches,
    hints over the last devices) give the same bits at any thread count."""
    global _job_threads
    outer, _job_threads = _job_threads, torch.get_num_threads()
    try:
        with torch_threads(1):
            yield
    finally:
        _job_threads = outer


def batch_threads(rows: int) -> AbstractContextManager[None]:
    """The thread count a training batch of ``rows`` runs at: torch's (outside a cloud
    job's one) when ``rows`` is a multiple of :data:`ROW_FLOOR`, else one — training
    cannot pad its rows as the device path does (the repeated rows would weigh in the
    loss)."""
    wide = _job_threads or torch.get_num_threads()
    return torch_threads(wide if rows % ROW_FLOOR == 0 else 1)


def score_candidates(model: SequentialRecommender, history: np.ndarray, lengths: np.ndarray,
                     candidates: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Scores ``[N, C]`` (float32) of shifted candidate ids, computed in chunks of
    ``chunk`` rows (default: the model's ``score_rows``), windows cut after each chunk's
    longest where the model allows it (see :func:`score_inputs`)."""
    return score_inputs(model, lambda b, c: model.score(b["history"], b["lengths"], c),
                        {"history": history, "lengths": lengths}, candidates, chunk)


Inputs = dict[str, np.ndarray]
InputLoss = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
InputScorer = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


def _tensor(array: np.ndarray) -> torch.Tensor:
    dtype = np.float32 if np.issubdtype(array.dtype, np.floating) else np.int64
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))


class AdamTrainer:
    """A model and its Adam optimizer (learning rate and L2 from the config), kept
    across cloud jobs so each continues from the last (warm start); ``steps`` counts
    the optimizer steps taken."""

    def __init__(self, model: nn.Module, config: TrainingConfig) -> None:
        self.model = model
        self.config = config
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                          weight_decay=config.l2)
        self.steps = 0

    def step(self, loss_of: Callable[[], torch.Tensor], rows: int) -> float:
        """One optimizer step down ``loss_of()``, the loss of a batch of ``rows``
        samples, computed and differentiated where its bits do not depend on torch's
        thread count (:func:`batch_threads`); the loss's value."""
        with batch_threads(rows):
            self.optimizer.zero_grad(set_to_none=True)
            loss = loss_of()
            loss.backward()
            self.optimizer.step()
        self.steps += 1
        return loss.item()


class InputTrainer(AdamTrainer):
    """:class:`IncrementalTrainer` for models with several named inputs (MC²-SF's
    click windows, exposure windows, negative memory, hints): ``loss(inputs,
    candidates)`` with the target in candidate column 0 and sampled negatives after.
    Keeps the model and its Adam state across :meth:`fit` calls (warm start) and, with
    ``replay_ratio`` > 0, the most recent samples to rehearse (experience replay)."""

    def __init__(self, model: nn.Module, loss: InputLoss, n_items: int,
                 config: TrainingConfig, seed: int) -> None:
        super().__init__(model, config)
        self.loss = loss
        self.n_items = n_items
        self.generator = torch.Generator().manual_seed(seed)
        self.recent: Inputs = {}   # the samples kept for rehearsal, target under ""

    def fit(self, inputs: Inputs, target: np.ndarray, epochs: int | None = None) -> float:
        """Train on ``inputs → target`` (shifted ids) and, with ``replay_ratio``, on
        that many draws per new sample from the recent ones; the mean loss."""
        n = len(target)
        if n == 0:
            return float("nan")
        if self.config.replay_ratio:
            inputs, target = self._with_rehearsal(inputs, target)
            n = len(target)
        tensors = {name: _tensor(array) for name, array in inputs.items()}
        target_t = _tensor(target)
        self.model.train()
        losses = []
        for _ in range(epochs or self.config.epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, self.config.batch_size):
                idx = order[start:start + self.config.batch_size]
                negatives = torch.randint(1, self.n_items + 1,
                                          (len(idx), self.config.n_negatives),
                                          generator=self.generator)
                candidates = torch.cat([target_t[idx, None], negatives], dim=1)
                batch = {k: v[idx] for k, v in tensors.items()}
                losses.append(self.step(partial(self.loss, batch, candidates), len(idx)))
        self.model.eval()
        return float(np.mean(losses))

    def _with_rehearsal(self, inputs: Inputs, target: np.ndarray) -> tuple[Inputs, np.ndarray]:
        """The new samples join the most recent ``replay_capacity``; returned with
        ``replay_ratio`` draws per new sample from those (with replacement)."""
        new = {**inputs, "": target}
        keep = self.config.replay_capacity
        self.recent = {name: np.concatenate([self.recent[name], array])[-keep:]
                       if self.recent else array[-keep:] for name, array in new.items()}
        drawn = self.draw_recent(self.config.replay_ratio * len(target), self.generator)
        mixed = {name: np.concatenate([array, drawn[name]]) for name, array in new.items()}
        return {name: mixed[name] for name in inputs}, mixed[""]

    def draw_recent(self, count: int, generator: torch.Generator) -> Inputs:
        """``count`` samples (at most as many as are kept) drawn with replacement from
        the recent ones, target under ``""``; empty when none are kept."""
        if not self.recent:
            return {}
        held = len(self.recent[""])
        draws = torch.randint(0, held, (min(held, count),), generator=generator).numpy()
        return {name: array[draws] for name, array in self.recent.items()}


@torch.inference_mode()
def score_inputs(model: nn.Module, score: InputScorer, inputs: Inputs, candidates: np.ndarray,
                 chunk: int | None = None) -> np.ndarray:
    """Scores ``[N, C]`` (float32) of ``score(inputs, candidates)``, computed in chunks of
    ``chunk`` rows (default: the model's ``score_rows``, else 256) so target-aware models
    stay within memory.

    For a model that reads no position of its click window past the window's length and
    gives the same bits on a window cut there (``cut_windows_exact``), given ``lengths``,
    rows are scored in order of length and each chunk's ``history`` is cut after its
    longest: a short window no longer pays for the padding up to ``max_len``.
    """
    chunk = chunk or getattr(model, "score_rows", 256)
    cut = getattr(model, "cut_windows_exact", False) and "lengths" in inputs
    model.eval()
    out = np.empty(candidates.shape, dtype=np.float32)
    order = (np.argsort(inputs["lengths"], kind="stable") if cut
             else np.arange(len(candidates)))
    for start in range(0, len(candidates), chunk):
        rows = order[start:start + chunk]
        part = {name: array[rows] for name, array in inputs.items()}
        if cut:
            part["history"] = part["history"][:, :max(int(part["lengths"].max()), 1)]
        batch = {name: _tensor(pad_rows(array)) for name, array in part.items()}
        out[rows] = score(batch, _tensor(pad_rows(candidates[rows]))).numpy()[:len(rows)]
    return out


class IncrementalTrainer(InputTrainer):
    """Keeps a model and its Adam state across cloud jobs; each :meth:`fit` continues
    from the previous weights on the samples that arrived since (warm start)."""

    def __init__(self, model: SequentialRecommender, config: TrainingConfig, seed: int) -> None:
        super().__init__(model, lambda b, candidates: model.loss(
            b["history"], b["lengths"], candidates[:, 0], candidates[:, 1:]),
            model.n_items, config, seed)

    def fit(self, history: np.ndarray, lengths: np.ndarray, target: np.ndarray,
            epochs: int | None = None) -> float:
        """Train on ``(history, lengths) → target`` samples (shifted ids); mean loss."""
        return super().fit({"history": history, "lengths": lengths}, target, epochs)


class WholeSequenceTrainer(AdamTrainer):
    """Trains a model whose state runs from a user's first click (CoCorrRec's SCN) on
    whole click sequences: ``model.sequence_loss(items, weight)`` over right-padded
    batches of ``users_per_batch`` users of similar length. Keeps the model and its Adam
    state across :meth:`fit` calls (warm start)."""

    def __init__(self, model: nn.Module, config: TrainingConfig, seed: int,
                 users_per_batch: int = 32) -> None:
        super().__init__(model, config)
        self.users_per_batch = users_per_batch
        self.rng = np.random.default_rng(seed)

    def fit(self, sequences: list[np.ndarray], weights: list[np.ndarray] | None = None,
            epochs: int | None = None) -> float:
        """Train on ``sequences`` (shifted ids, oldest first); ``weights[u]`` (length
        ``len(sequences[u]) - 1``) weighs each next-item target, all 1 by default.
        Returns the mean loss."""
        keep = [u for u, s in enumerate(sequences) if len(s) >= 2]
        if not keep:
            return float("nan")
        lengths = np.array([len(sequences[u]) for u in keep])
        self.model.train()
        losses = []
        for _ in range(epochs or self.config.epochs):
            order = self.rng.permutation(len(keep))
            order = order[np.argsort(lengths[order], kind="stable")]
            batches = [order[i:i + self.users_per_batch]
                       for i in range(0, len(order), self.users_per_batch)]
            for k in self.rng.permutation(len(batches)):
                rows = [keep[j] for j in batches[k]]
                width = max(len(sequences[u]) for u in rows)
                items = np.zeros((len(rows), width), np.int64)
                weight = np.zeros((len(rows), width - 1), np.float32)
                for r, u in enumerate(rows):
                    seq = sequences[u]
                    items[r, :len(seq)] = seq
                    weight[r, :len(seq) - 1] = 1.0 if weights is None else weights[u]
                losses.append(self.step(partial(self.model.sequence_loss, torch.from_numpy(
                    items), torch.from_numpy(weight)), len(rows)))
        self.model.eval()
        return float(np.mean(losses))
