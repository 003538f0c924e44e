"""DCCL on the stream (Algorithm 1 of Yao et al., KDD 2021): MetaPatch personalisation
on each device, MoMoDistill rounds in the cloud.

Device (:class:`MetaPatchProcessor`), per batch of its events in stream order:

- every click is scored by the device model f^(m) — the released backbone f with the
  patches its metapatch θ̂^(m) generates from the released basis Θ (Eq. 1–2) — *before*
  the device learns from it, then appended to the click window;
- clicks (label 1) and exposures (label 0) are local samples; once ``buffer`` of them
  have gathered, the device takes ``steps`` gradient steps on θ̂^(m) alone, f and Θ
  frozen, on the pointwise cross-entropy of Eq. 3; each sample is scored with the
  clicks that came before it;
- every ``upload_interval`` of event time it uploads θ̂^(m) (``Upload`` of kind
  ``metapatch``, float16).

Cloud (:class:`DCCLCloudJob`), one round per cloud interval:

- the first round pretrains (Algorithm 1, line 1): f on the clicks so far (Eq. 4), then
  Θ and the encoder U with θ̂ = 0 (Eq. 7);
- ``dccl-e``: later rounds continue training f on the new clicks (Eq. 4) — MetaPatch
  alone; ``dccl``: MoMoDistill — f learns from the data and from the device models,
  fed their uploaded metapatches as inputs (Eq. 5), then, f fixed, Θ and U learn to
  reproduce the device models through the proxy f̂^(m) with Θ·U(θ̂, u) (Eq. 6–7);
- every round releases f, Θ and U as one model version.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from dcrec.models.metapatch import MetaPatchDIN
from dcrec.models.training import (
    ROW_FLOOR,
    InputTrainer,
    TrainingConfig,
    score_inputs,
)
from dcrec.state import click_history
from dcrec.state.device_state import StateField, StateRows, StateSpec
from dcrec.state.registry import ModelRegistry, ModelVersion, download
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.processor import DeviceBatch, Outputs
from dcrec.streams.schema import CLICK, Release, Upload
from dcrec.streams.sequence_pipeline import CloudClickWindows
from dcrec.streams.state_uploads import upload_due, upload_payload
from torch import nn
from torch.nn import functional as F

DCCL_MODEL = "dccl-model"


def profile_matrix(features: dict[str, np.ndarray], n_users: int) -> np.ndarray:
    """The profile ``u`` of each user ``[n_users, d_u]``: its categorical attributes
    (age, gender, occupation on ML-100K; age and region in the world) one-hot."""
    columns = []
    for name in sorted(features):
        values = np.asarray(features[name], dtype=np.int64)[:n_users]
        onehot = np.zeros((n_users, int(values.max(initial=0)) + 1), np.float32)
        known = np.flatnonzero(values >= 0)  # a missing attribute is an all-zero block
        onehot[known, values[known]] = 1.0
        columns.append(onehot)
    return np.concatenate(columns, axis=1) if columns else np.zeros((n_users, 0), np.float32)


def device_spec(max_len: int, metapatch_dim: int, buffer: int) -> StateSpec:
    """A device's state: click window, metapatch, the local samples not yet learnt."""
    return {
        "seq": StateField("int32", (max_len,)),
        "length": StateField("int32"),
        "clicks": StateField("int32"),              # clicks ever, to place each sample
        "version": StateField("int32"),
        "metapatch": StateField("float32", (metapatch_dim,)),
        "sample_item": StateField("int32", (buffer,)),
        "sample_label": StateField("int8", (buffer,)),
        "sample_clicks": StateField("int32", (buffer,)),   # clicks before the sample
        "samples": StateField("int32"),
        "last_upload": StateField("int64"),
    }


def clicks_before(rows: np.ndarray, clicks: np.ndarray) -> np.ndarray:
    """For each event, how many clicks of its row came earlier in the batch."""
    order = np.argsort(rows, kind="stable")
    c = clicks[order].astype(np.int64)
    running = np.cumsum(c) - c
    starts = np.r_[0, np.flatnonzero(rows[order][1:] != rows[order][:-1]) + 1]
    run_start = np.repeat(running[starts], np.diff(np.r_[starts, len(rows)]))
    result = np.empty(len(rows), np.int64)
    result[order] = running - run_start
    return result


def bernoulli_kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """KL(σ(teacher) ‖ σ(student)) per element, from logits (the KL of Eq. 5 and 7)."""
    p = torch.sigmoid(teacher)
    return (p * (F.logsigmoid(teacher) - F.logsigmoid(student))
            + (1 - p) * (F.logsigmoid(-teacher) - F.logsigmoid(-student)))


MAX_GRAD_NORM = 1.0  # a device's metapatch gradient, per step (see metapatch_steps)


def metapatch_steps(model: MetaPatchDIN, metapatch: np.ndarray, owner: np.ndarray,
                    history: np.ndarray, item: np.ndarray, label: np.ndarray,
                    weight: np.ndarray, steps: int, lr: float) -> np.ndarray:
    """MetaPatch's local learning (DCCL Eq. 3): ``steps`` of gradient descent on the
    metapatches ``[R, K̂]`` alone, f and Θ frozen, on the pointwise cross-entropy of
    samples ``(history, item, label)`` of device ``owner``; each device's loss is the
    ``weight``-ed mean over its samples. Returns the new metapatches.

    A device's result has the same bits whatever other devices share the call."""
    weight = weight.astype(np.float32)
    per_device = np.bincount(owner, weights=weight, minlength=len(metapatch))
    weight = weight / np.maximum(per_device[owner], 1.0).astype(np.float32)
    pad = max(ROW_FLOOR - len(owner), 0)
    index = np.r_[owner, np.zeros(pad, np.int64)]
    history_t, item_t, label_t, weight_t = (
        torch.from_numpy(np.r_[a, np.zeros((pad, *a.shape[1:]), a.dtype)])
        for a in (history.astype(np.int64), item.astype(np.int64), label.astype(np.float64),
                  weight.astype(np.float64)))
    lengths_t = (history_t > 0).sum(1)
    metapatch = metapatch.astype(np.float32).copy()
    with torch.enable_grad():
        for _ in range(steps):
            # per-sample gradients, summed per device in sample order here: the sum
            # autograd would do over the batch need not give a device the same bits
            rows = torch.from_numpy(metapatch)[torch.from_numpy(index)].requires_grad_(True)
            logits = model.score(history_t, lengths_t, item_t[:, None], rows)[:, 0]
            # d BCE / d logit = σ(logit) − y, in float64: torch's float32 sigmoid takes a
            # vector or a scalar path by the element's place in the batch, and the two
            # differ in the last bit
            with torch.no_grad():
                upstream = ((torch.sigmoid(logits.double()) - label_t) * weight_t).float()
            (grad,) = torch.autograd.grad(logits, rows, grad_outputs=upstream)
            total = np.zeros_like(metapatch)
            np.add.at(total, index, grad.numpy())
            # the patch is quadratic in θ̂, so a step can run away once Θ has grown:
            # each device's gradient is clipped to MAX_GRAD_NORM, and a device whose step
            # still leaves the finite numbers keeps its metapatch
            norm = np.linalg.norm(total, axis=1, keepdims=True)
            total = np.where(norm > MAX_GRAD_NORM,
                             total * (MAX_GRAD_NORM / np.maximum(norm, 1e-30)), total)
            stepped = metapatch - np.float32(lr) * total.astype(np.float32)
            metapatch = np.where(np.isfinite(stepped).all(axis=1, keepdims=True), stepped,
                                 metapatch)
    return metapatch


class MetaPatchProcessor:
    """The device side of ``dccl`` and ``dccl-e``: serve f^(m), learn θ̂^(m) (Eq. 3)."""

    def __init__(self, model: MetaPatchDIN, max_len: int, upload_interval: int | None,
                 buffer: int = 16, steps: int = 3, lr: float = 0.5) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)  # f and Θ are frozen on the device
        self.state_spec = device_spec(max_len, model.metapatch_dim, buffer)
        self.upload_interval = upload_interval
        self.buffer, self.steps, self.lr = buffer, steps, lr
        self.version: ModelVersion | None = None

    def on_release(self, version: ModelVersion, registry: ModelRegistry) -> None:
        if version.model == DCCL_MODEL:
            self.model.load_state_dict(registry.load(version))
            self.model.eval()
            self.version = version

    def __call__(self, state: StateRows, batch: DeviceBatch) -> tuple[StateRows, Outputs]:
        events = batch.events
        state = {name: column.copy() for name, column in state.items()}
        clicks = events.event == CLICK
        click_rows = batch.row[clicks]
        advanced = click_history.advance(state["seq"], state["length"], click_rows,
                                         events.item[clicks].astype(np.int32) + 1)
        evaluated = batch.evaluate[clicks]
        model = self.model
        scores = score_inputs(model, lambda b, c: model.score(
            b["history"], b["lengths"], c, b["metapatch"]), {
                "history": advanced.windows[evaluated], "lengths": advanced.lengths[evaluated],
                "metapatch": state["metapatch"][click_rows[evaluated]]},
            batch.candidates + 1)
        before = state["clicks"][batch.row] + clicks_before(batch.row, clicks)
        state["seq"], state["length"] = advanced.seq, advanced.length
        state["clicks"] += np.bincount(click_rows, minlength=len(batch.devices)).astype(np.int32)
        self._learn(state, batch.row, events.item.astype(np.int32) + 1,
                    clicks.astype(np.int8), before.astype(np.int32))

        out = Outputs(scores=scores)
        out.bytes_down = download(state["version"], self.version)
        if self.upload_interval is not None:
            upload_due(state, batch, self.upload_interval, "metapatch", "metapatch", out)
        return state, out

    def _learn(self, state: StateRows, rows: np.ndarray, items: np.ndarray,
               labels: np.ndarray, before: np.ndarray) -> None:
        """Add the batch's samples; devices with ``buffer`` of them learn (Eq. 3)."""
        held = state["samples"]
        new = np.bincount(rows, minlength=len(held))
        ready = np.flatnonzero(held + new >= self.buffer)
        keep = ~np.isin(rows, ready)
        slot = held[rows[keep]] + click_history.occurrence(rows[keep])
        state["sample_item"][rows[keep], slot] = items[keep]
        state["sample_label"][rows[keep], slot] = labels[keep]
        state["sample_clicks"][rows[keep], slot] = before[keep]
        state["samples"] += np.bincount(rows[keep], minlength=len(held)).astype(np.int32)
        if len(ready) == 0:
            return
        # every sample of the ready devices: for each device its buffered ones first,
        # then this batch's, in order (the order its gradient is summed in)
        buffered = np.arange(self.buffer) < held[ready][:, None]
        fresh = ~keep
        device = np.r_[np.repeat(ready, held[ready]), rows[fresh]]
        item, label, seen = (np.r_[state[f"sample_{name}"][ready][buffered], column[fresh]]
                             for name, column in (("item", items), ("label", labels),
                                                  ("clicks", before)))
        state["metapatch"][ready] = self._fit(state, ready, device, item, label, seen)
        state["samples"][ready] = 0

    def _fit(self, state: StateRows, ready: np.ndarray, device: np.ndarray, item: np.ndarray,
             label: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """Eq. 3 for the devices ``ready``; each sample is scored with the clicks before
        it (a prefix of the device's window now)."""
        window, length = state["seq"][device], state["length"][device]
        first = state["clicks"][device] - length          # click count at window start
        prefix = np.clip(seen - first, 0, length)
        history = np.where(np.arange(window.shape[1]) < prefix[:, None], window, 0)
        weight = (prefix > 0).astype(np.float32)
        return metapatch_steps(self.model, state["metapatch"][ready],
                               np.searchsorted(ready, device), history, item, label, weight,
                               self.steps, self.lr)

class _Basis(nn.Module):
    """Θ (with its shared down-projection θ⁰) and the encoder's W_e of a
    :class:`MetaPatchDIN`: what Eq. 7 trains."""

    def __init__(self, model: MetaPatchDIN) -> None:
        super().__init__()
        self.parts = nn.ModuleList([model.basis, model.down_projection, model.encoder_out,
                                    model.encoder_metapatch,
                                    *([model.encoder_profile] if model.encoder_profile
                                      else [])])


class DCCLCloudJob:
    """The cloud side: pretraining, then a round per job — plain incremental training of
    f (``distill=False``, dccl-e) or MoMoDistill (Eq. 5, then Eq. 7)."""

    def __init__(self, model: MetaPatchDIN, n_users: int, max_len: int,
                 training: TrainingConfig, seed: int, registry: ModelRegistry,
                 profiles: np.ndarray, distill: bool, beta: float = 0.01) -> None:
        # β weighs the distillation of Eq. 5 and Eq. 7 against the data; 0.01 is the
        # paper's setting for MovieLens and Taobao (DCCL appendix, Table 5)
        self.model = model
        self.registry = registry
        self.distill = distill
        self.beta = beta
        self.profiles = profiles.astype(np.float32)
        self.metapatches = np.zeros((n_users, model.metapatch_dim), np.float32)
        self.windows = CloudClickWindows(n_users, max_len)
        self.teacher = copy.deepcopy(model).eval()  # the released f and Θ: the devices'
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.backbone_trainer = InputTrainer(model.backbone, self._backbone_loss,
                                             model.n_items, training, seed)
        self.basis_trainer = InputTrainer(_Basis(model), self._basis_loss, model.n_items,
                                          training, seed + 1)
        self.rounds = 0

    def initial_release(self) -> ModelVersion:
        return self.registry.publish(DCCL_MODEL, self.model.state_dict())

    def on_upload(self, upload: Upload) -> None:
        if upload.kind == "metapatch":
            self.metapatches[upload.device] = upload_payload(upload)

    def observe(self, events: EventBatch) -> None:
        self.windows.observe(events)

    def inputs(self, windows: np.ndarray, lengths: np.ndarray,
               users: np.ndarray) -> dict[str, np.ndarray]:
        """The training inputs of samples: history, each user's last metapatch, profile."""
        return {"history": windows, "lengths": lengths, "metapatch": self.metapatches[users],
                "profile": self.profiles[users]}

    def learn_basis(self, inputs: dict[str, np.ndarray], targets: np.ndarray,
                    epochs: int | None = None) -> None:
        """Eq. 7: Θ and U learn with f fixed."""
        for p in self.model.backbone.parameters():
            p.requires_grad_(False)
        self.basis_trainer.fit(inputs, targets, epochs)
        for p in self.model.backbone.parameters():
            p.requires_grad_(True)

    def end_round(self) -> None:
        """What was learnt is now what devices run: the teacher of the next round."""
        self.rounds += 1
        self.teacher.load_state_dict(self.model.state_dict())

    def _teacher_logits(self, b: dict[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        """f^(m)(x): the device models, as released, fed their metapatches."""
        with torch.no_grad():
            return self.teacher.score(b["history"], b["lengths"], c, b["metapatch"])

    def _labels(self, c: torch.Tensor) -> torch.Tensor:
        labels = torch.zeros(c.shape)
        labels[:, 0] = 1.0
        return labels

    def _backbone_loss(self, b: dict[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        """Eq. 5: ℓ(y, f(x)) + β KL(f^(m)(x) ‖ f(x)); Eq. 4 when not distilling."""
        logits = self.model.backbone.score(b["history"], b["lengths"], c)
        loss = F.binary_cross_entropy_with_logits(logits, self._labels(c))
        if self.distill and self.beta > 0 and self.rounds > 0:
            loss = loss + self.beta * bernoulli_kl(self._teacher_logits(b, c), logits).mean()
        return loss

    def _basis_loss(self, b: dict[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        """Eq. 7: ℓ(y, f̂^(m)(x)) + β KL(f^(m)(x) ‖ f̂^(m)(x)), f fixed."""
        logits = self.model.proxy_score(b["history"], b["lengths"], c, b["metapatch"],
                                        b["profile"])
        loss = F.binary_cross_entropy_with_logits(logits, self._labels(c))
        if self.beta > 0:
            loss = loss + self.beta * bernoulli_kl(self._teacher_logits(b, c), logits).mean()
        return loss

    def run(self, now: int) -> Outputs | None:
        samples = self.windows.take()
        if samples is None:
            return None
        windows, lengths, targets, users = samples
        inputs = self.inputs(windows, lengths, users)
        self.backbone_trainer.fit(inputs, targets)                  # Eq. 4 / Eq. 5
        if self.rounds == 0:  # Algorithm 1, line 1: Θ with θ̂ = 0
            self.learn_basis({**inputs, "metapatch": np.zeros_like(inputs["metapatch"])},
                             targets)
        elif self.distill:
            self.learn_basis(inputs, targets)                       # Eq. 7
        self.end_round()
        version = self.registry.publish(DCCL_MODEL, self.model.state_dict())
        return Outputs(scores=np.zeros((0, 0), np.float32), emitted=[
            Release(model=DCCL_MODEL, version=version.version, ts=now,
                    checksum=version.checksum)])


def build_dccl(variant: str, n_users: int, n_items: int, seed: int, max_len: int,
               embedding_dim: int, training: TrainingConfig, upload_interval: int,
               profiles: np.ndarray, metapatch_dim: int = 32,
               ) -> tuple[MetaPatchProcessor, DCCLCloudJob, ModelRegistry]:
    """The ``dccl`` (MetaPatch + MoMoDistill) or ``dccl-e`` (MetaPatch) pipeline."""
    if variant not in ("dccl", "dccl-e"):
        raise ValueError(f"unknown DCCL variant {variant!r}")
    torch.manual_seed(seed)
    model = MetaPatchDIN(n_items, embedding_dim=embedding_dim, metapatch_dim=metapatch_dim,
                         profile_dim=profiles.shape[1])
    registry = ModelRegistry()
    cloud = DCCLCloudJob(model, n_users, max_len, training, seed, registry, profiles,
                         distill=variant == "dccl")
    processor = MetaPatchProcessor(copy.deepcopy(model), max_len, upload_interval)
    processor.on_release(cloud.initial_release(), registry)
    return processor, cloud, registry
