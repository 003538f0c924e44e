"""DCCL under an offline protocol (``loo``): one round of Algorithm 1 on a fixed split,
with the paper's phases (DCCL appendix: pretraining, device-cloud learning and test
phases by log time).

The training clicks are cut at a global time: the first ``pretrain_share`` of them
(by time) are the pretraining phase, the rest the device phase — by default in halves,
as the paper does ("we split the training data into two parts on average according to
the temporal order", §4.2.1; 10 days and 10 days in §4.2.2). Validation and test
stay each user's last two clicks, so the numbers compare with every ``loo`` method.

1. Pretraining (Algorithm 1, line 1): the backbone f (DIN) on the pretraining phase,
   early-stopped on validation NDCG@10 with the ``din`` baseline's model, sampler and
   optimiser, then the basis Θ and the encoder U with θ̂ = 0 (Eq. 7).
2. Devices (MetaPatch, Eq. 3): each user's device-phase clicks are its local samples
   (label 1) and its device-phase exposures the negatives (label 0), each with the
   clicks before it as history — what the device saw, as in the stream's processor.
   A log without exposures (ML-100K) gets ``local_negatives`` sampled items per click
   instead. ``device_epochs`` passes of gradient steps on θ̂ alone.
3. ``dccl`` only: MoMoDistill on the device phase — f from the data and the device
   models (Eq. 5), then Θ and U with f fixed (Eq. 6–7) — and step 2 again.

Two DIN baselines:

- ``din-pretrain``: step 1 alone, tested with θ̂ = 0 — the cloud model of the round
  that the devices start from, DCCL Table 3's DIN ("without our two modules, the
  model performance is as DIN").
- ``din`` (:mod:`~dcrec.replay.offline_runner`): trained on both phases, as if the
  cloud had every device's clicks at once — more than a round's cloud model knows.
  With ``pretrain_share = 1`` there is no device phase and ``dccl-e`` is ``din``
  exactly (a test).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from dcrec.models.metapatch import MetaPatchDIN
from dcrec.models.training import TrainingConfig, score_inputs
from dcrec.replay.log import InteractionLog
from dcrec.replay.negatives import NegativeSampler
from dcrec.replay.offline import Samples, Split, UserSequences, evaluate, train_early_stopped
from dcrec.state.registry import ModelRegistry
from dcrec.streams.dccl_pipeline import DCCLCloudJob, metapatch_steps, profile_matrix
from dcrec.streams.schema import EXPOSURE

DCCL_METHODS = ("dccl", "dccl-e", "din-pretrain")


def _inputs(cloud: DCCLCloudJob, samples: Samples) -> dict[str, np.ndarray]:
    return cloud.inputs(samples.history, samples.lengths, samples.users)


def _scorer(model: MetaPatchDIN, metapatches: np.ndarray | None):
    def scorer(samples: Samples, candidates: np.ndarray) -> np.ndarray:
        inputs = {"history": samples.history, "lengths": samples.lengths}
        if metapatches is None:
            return score_inputs(model, lambda b, c: model.backbone.score(
                b["history"], b["lengths"], c), inputs, candidates)
        inputs["metapatch"] = metapatches[samples.users]
        return score_inputs(model, lambda b, c: model.score(
            b["history"], b["lengths"], c, b["metapatch"]), inputs, candidates)
    return scorer


def device_exposures(log_: InteractionLog, split: Split, device_phase: Samples,
                     max_len: int) -> Samples | None:
    """Each user's logged exposures of the device phase (after the phase's first click,
    before the user's validation click), with the clicks before each as history;
    ``None`` for a log without exposures."""
    exposed = np.flatnonzero(log_.event == EXPOSURE)
    if len(exposed) == 0 or len(device_phase) == 0:
        return None
    clicks = UserSequences.from_log(log_)
    assert clicks.log_index is not None
    begins = clicks.log_index[device_phase.key].min()
    ends = np.full(log_.n_users, -1, np.int64)
    ends[split.valid.users] = clicks.log_index[split.valid.key]
    user = log_.user[exposed].astype(np.int64)
    keep = (exposed > begins) & (exposed < ends[user])
    exposed, user = exposed[keep], user[keep]
    history, lengths = clicks.windows_before(user, exposed, max_len)
    return Samples(history, lengths, log_.item[exposed].astype(np.int64) + 1, user, exposed)


def personalise(model: MetaPatchDIN, metapatches: np.ndarray, train: Samples, n_items: int,
                seed: int, local_negatives: int, epochs: int, lr: float,
                exposures: Samples | None = None, chunk_users: int = 256) -> np.ndarray:
    """Step 2: every user's θ̂ learns from its own local samples (Eq. 3): its clicks,
    and its ``exposures`` as negatives, or ``local_negatives`` sampled items per click
    when there are none."""
    rng = np.random.default_rng(seed)
    users = np.unique(train.users if exposures is None
                      else np.r_[train.users, exposures.users])
    out = metapatches.copy()
    for start in range(0, len(users), chunk_users):
        group = users[start:start + chunk_users]
        mine = np.isin(train.users, group)
        history, positives, owner = (train.history[mine], train.target[mine],
                                     np.searchsorted(group, train.users[mine]))
        if exposures is None:
            negatives = rng.integers(1, n_items + 1, (len(positives), local_negatives))
            negative_owner = np.repeat(owner, local_negatives)
            negative_history = np.repeat(history, local_negatives, axis=0)
            negatives = negatives.reshape(-1)
        else:
            theirs = np.isin(exposures.users, group)
            negatives, negative_history = exposures.target[theirs], exposures.history[theirs]
            negative_owner = np.searchsorted(group, exposures.users[theirs])
        rows = np.r_[owner, negative_owner]
        items = np.r_[positives, negatives]
        labels = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
        histories = np.r_[history, negative_history]
        out[group] = metapatch_steps(model, out[group], rows, histories, items, labels,
                                     np.ones(len(rows), np.float32), epochs, lr)
    return out


def _subset(samples: Samples, keep: np.ndarray) -> Samples:
    return Samples(samples.history[keep], samples.lengths[keep], samples.target[keep],
                   samples.users[keep], samples.key[keep])


_PRETRAINED: dict[tuple, tuple] = {}  # recent pretraining stages, by run settings


def _pretrained(log_: InteractionLog, split: Split, train: Samples, seed: int,
                sampler: NegativeSampler, embedding_dim: int, training: TrainingConfig,
                max_epochs: int, patience: int, basis_epochs: int,
                on_epoch: Callable[[int, float, float], None],
                ) -> tuple[MetaPatchDIN, DCCLCloudJob, dict]:
    """Step 1 (Algorithm 1, line 1): f early-stopped on validation, then Θ and U with
    θ̂ = 0. The same for every method of a seed (distillation starts in the next round),
    so it is computed once per settings and handed out as a copy."""
    key = (log_.name, log_.n_events, len(train), seed, embedding_dim, training, max_epochs,
           patience, basis_epochs)
    if key not in _PRETRAINED:
        torch.manual_seed(seed)
        profiles = profile_matrix(log_.user_features, log_.n_users)
        model = MetaPatchDIN(log_.n_items, embedding_dim=embedding_dim,
                             profile_dim=profiles.shape[1])
        cloud = DCCLCloudJob(model, log_.n_users, split.train.history.shape[1], training,
                             seed, ModelRegistry(), profiles, distill=False)
        stage = train_early_stopped(                                       # Eq. 4
            model.backbone,
            lambda: cloud.backbone_trainer.fit(_inputs(cloud, train), train.target, epochs=1),
            lambda: evaluate(_scorer(model, None), split.valid, sampler)["NDCG@10"],
            max_epochs, patience, on_epoch)
        cloud.learn_basis(_inputs(cloud, train), train.target, basis_epochs)       # Eq. 7
        cloud.end_round()
        if len(_PRETRAINED) >= 4:
            _PRETRAINED.pop(next(iter(_PRETRAINED)))
        _PRETRAINED[key] = (copy.deepcopy((model, cloud)), torch.get_rng_state(),
                            stage)
    (model, cloud), rng_state, stage = _PRETRAINED[key]
    torch.set_rng_state(rng_state)
    model, cloud = copy.deepcopy((model, cloud))
    return model, cloud, dict(stage)


def run_dccl(method: str, log_: InteractionLog, split: Split, train_ts: np.ndarray,
             seed: int, sampler: NegativeSampler, embedding_dim: int,
             training: TrainingConfig, max_epochs: int, patience: int,
             on_epoch: Callable[[int, float, float], None], pretrain_share: float = 0.5,
             local_negatives: int = 4, device_epochs: int = 3, device_lr: float = 0.5,
             basis_epochs: int = 2) -> dict:
    """Train and test ``dccl``, ``dccl-e`` or ``din-pretrain`` on ``split``;
    ``train_ts`` is the time of each training sample's target (see the module
    docstring)."""
    if method not in DCCL_METHODS:
        raise ValueError(f"unknown DCCL method {method!r}")
    order = np.argsort(train_ts, kind="stable")
    pretrain = np.zeros(len(train_ts), bool)
    pretrain[order[:round(pretrain_share * len(order))]] = True
    train, device_phase = _subset(split.train, pretrain), _subset(split.train, ~pretrain)
    model, cloud, stage = _pretrained(log_, split, train, seed, sampler, embedding_dim,
                                      training, max_epochs, patience, basis_epochs, on_epoch)
    cloud.distill = method == "dccl"
    exposures = (None if method == "din-pretrain"  # its devices do not learn
                 else device_exposures(log_, split, device_phase, split.train.history.shape[1]))
    if method != "din-pretrain" and len(device_phase):
        cloud.metapatches = personalise(model, cloud.metapatches, device_phase,
                                        log_.n_items, seed, local_negatives, device_epochs,
                                        device_lr, exposures)
    if method == "dccl" and len(device_phase):                         # MoMoDistill
        inputs = _inputs(cloud, device_phase)
        cloud.backbone_trainer.fit(inputs, device_phase.target, epochs=1)        # Eq. 5
        cloud.learn_basis(inputs, device_phase.target, epochs=1)                 # Eq. 7
        cloud.end_round()
        cloud.metapatches = personalise(model, cloud.metapatches, device_phase,
                                        log_.n_items, seed + 1, local_negatives,
                                        device_epochs, device_lr, exposures)
    scorer = _scorer(model, cloud.metapatches)
    return {**stage,
            "valid": evaluate(scorer, split.valid, sampler),
            "test": evaluate(scorer, split.test, sampler, split.activity),
            "metapatch_bytes": int(model.metapatch_dim * 4),
            "phases": {"pretrain": int(pretrain.sum()), "device": int((~pretrain).sum())}}
