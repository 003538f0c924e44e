"""CoCorrRec on the stream (Zhan et al., 2025): the self-correction network on each
device, the global correction network in the cloud (the ``scn`` and ``cocorrrec``
presets).

Device (:class:`TTTProcessor`), per click in stream order:

- the click is scored with the user vector the device holds — the SCN output after its
  previous click, corrected by the cloud if the correction arrived in time — *before*
  the device learns from it;
- the click joins the device's current TTT mini-batch; the device recomputes that
  mini-batch in the dual form from the TTT state ``(W, b)`` it started from (Eq. 5–7)
  and keeps the output after the click as its next user vector; when the mini-batch is
  full, ``(W, b)`` advance to its end. So a device's state after n clicks is the block
  run over those n clicks in one pass;
- ``cocorrrec``: the device uploads the hidden states H of the mini-batch so far
  (float16, ``param.requests``) and keeps serving; the cloud's GCN answers with the
  correction rows of the click's token (float16, ``param.responses``, Eq. 13); the
  device normalises and fuses them (Eq. 14–15) into a corrected user vector. The
  correction serves the next click if it arrived before it: the local runtime simulates
  the round trip on the event clock (``latency`` seconds; 0 = within the device's
  tolerance, the paper's Fig. 5).

Cloud (:class:`WholeSequenceCloudJob`): keeps every user's clicks and, each cloud
interval, continues training SCN (and GCN) jointly (Eq. 16) on the users with new
clicks — their sequence from the start (the last ``context`` clicks at most, from a
mini-batch boundary), the new clicks as targets — then releases the model; the
:class:`CorrectionService` answers with the released GCN.

A device keeps its TTT state across model releases: it is the device's memory of its
clicks, and a warm-started release moves the projections it was built with only a
little.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from dcrec.models.scn import SCN
from dcrec.models.training import TrainingConfig, WholeSequenceTrainer, pad_rows
from dcrec.state.click_history import occurrence
from dcrec.state.device_state import StateField, StateRows, StateSpec
from dcrec.state.registry import ModelRegistry, ModelVersion, download
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.processor import DeviceBatch, Outputs
from dcrec.streams.schema import CLICK, Release

WIRE_DTYPE = np.float16  # hidden states up, correction rows down


def ttt_spec(dim: int, heads: int, mini_batch: int, corrected: bool) -> StateSpec:
    """A device's state: TTT state (W, b) at the start of its current mini-batch, that
    mini-batch's clicks, the user vector after its last click (and its corrected form)."""
    f = dim // heads
    spec = {
        "W": StateField("float32", (heads, f, f)),
        "b": StateField("float32", (heads, f)),
        "tokens": StateField("int32", (mini_batch,)),
        "clicks": StateField("int32"),
        "user": StateField("float32", (dim,)),
        "last_click": StateField("int64"),
        "version": StateField("int32"),
    }
    if corrected:
        spec["user_corrected"] = StateField("float32", (dim,))
        spec["corrected"] = StateField("int8")
    return spec


class CorrectionService:
    """The cloud's GCN answering correction requests (Eq. 13): from the uploaded hidden
    states of a device's mini-batch so far, the correction row of its last token."""

    def __init__(self, model: SCN) -> None:
        if model.gcn is None:
            raise ValueError("the correction service needs a model with a GCN")
        self.model = model.eval()
        self.requests = 0
        self.seconds = 0.0

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)
        self.model.eval()

    @torch.inference_mode()
    def correct(self, hidden: np.ndarray, last: np.ndarray) -> np.ndarray:
        """``hidden [N, b, d]`` (wire dtype, zero after each device's tokens) → the row
        of token ``last[n]`` for each device ``[N, row_width]`` (wire dtype)."""
        started = time.perf_counter()
        assert self.model.gcn is not None
        rows = self.model.gcn(torch.from_numpy(pad_rows(hidden.astype(np.float32))))
        out = rows[torch.arange(len(last)), torch.from_numpy(last)].numpy().astype(WIRE_DTYPE)
        self.seconds += time.perf_counter() - started
        self.requests += len(last)
        return out


class TTTProcessor:
    """The device side of ``scn`` and ``cocorrrec``."""

    def __init__(self, build_model: Callable[[], SCN], service: CorrectionService | None = None,
                 latency: float = 0.0) -> None:
        self.model = build_model().eval()
        self.service = service
        self.latency = latency
        m = self.model
        self.state_spec = ttt_spec(m.dim, m.heads, m.mini_batch_size, service is not None)
        self.version: ModelVersion | None = None

    def on_release(self, version: ModelVersion, registry: ModelRegistry) -> None:
        self.model.load_state_dict(registry.load(version))
        self.model.eval()
        self.version = version

    @torch.inference_mode()
    def __call__(self, state: StateRows, batch: DeviceBatch) -> tuple[StateRows, Outputs]:
        state = {name: column.copy() for name, column in state.items()}
        events = batch.events
        clicks = events.event == CLICK
        rows = batch.row[clicks]
        items = events.item[clicks].astype(np.int32) + 1
        ts = events.ts[clicks]
        fresh = state["clicks"] == 0
        W0, b0 = (p.detach().numpy() for p in (self.model.ttt.W0, self.model.ttt.b0))
        state["W"][fresh], state["b"][fresh] = W0, b0
        served = np.empty((len(items), self.model.dim), np.float32)
        out = Outputs(scores=np.zeros((0, 0), np.float32))
        rank = occurrence(rows)
        for r in range(int(rank.max(initial=-1)) + 1):
            k = np.flatnonzero(rank == r)            # each device's r-th click of the batch
            served[k] = self._serving_vector(state, rows[k], ts[k])
            self._advance(state, rows[k], items[k], ts[k], out)
        evaluated = batch.evaluate[clicks]
        candidates = torch.from_numpy(batch.candidates.astype(np.int64) + 1)
        user = torch.from_numpy(served[evaluated])
        out.scores = torch.einsum("nd,ncd->nc", user,
                                  self.model.item_embedding(candidates)).numpy()
        out.bytes_down += download(state["version"], self.version)
        return state, out

    def _serving_vector(self, state: StateRows, dev: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """The user vector each device serves its next click with."""
        if self.service is None:
            return state["user"][dev]
        arrived = (state["corrected"][dev] == 1) & (ts - state["last_click"][dev] >= self.latency)
        return np.where(arrived[:, None], state["user_corrected"][dev], state["user"][dev])

    def _advance(self, state: StateRows, dev: np.ndarray, items: np.ndarray, ts: np.ndarray,
                 out: Outputs) -> None:
        """One click per device in ``dev``: recompute its mini-batch, keep the output."""
        model, b = self.model, self.model.mini_batch_size
        place = state["clicks"][dev] % b
        state["tokens"][dev, place] = items
        n = len(dev)
        W, bias, tokens = (torch.from_numpy(pad_rows(state[name][dev]))
                           for name in ("W", "b", "tokens"))
        tokens = tokens.long()
        user, W_next, b_next = model.mini_batch_outputs(W, bias, tokens)
        at = torch.arange(n), torch.from_numpy(place.astype(np.int64))
        state["user"][dev] = user[at].numpy()
        if self.service is not None:
            hidden = model.hidden(tokens).numpy().astype(WIRE_DTYPE)
            correction = self.service.correct(hidden[:n], place.astype(np.int64))
            rows = torch.from_numpy(pad_rows(correction.astype(np.float32)))
            rows = rows[:, None, :].expand(-1, b, -1)  # only the token's own row is read
            corrected, _, _ = model.mini_batch_outputs(W, bias, tokens, rows)
            state["user_corrected"][dev] = corrected[at].numpy()
            state["corrected"][dev] = 1
            out.requests += n
            out.bytes_up += int((place + 1).sum()) * model.dim * WIRE_DTYPE().itemsize
            out.bytes_down += n * correction.shape[1] * WIRE_DTYPE().itemsize
        full = place == b - 1
        state["W"][dev[full]] = W_next[:n].numpy()[full]
        state["b"][dev[full]] = b_next[:n].numpy()[full]
        state["tokens"][dev[full]] = 0
        state["clicks"][dev] += 1
        state["last_click"][dev] = ts


class WholeSequenceCloudJob:
    """Cloud side: every user's clicks; each job trains on the users with new clicks."""

    def __init__(self, name: str, build_model: Callable[[], SCN], n_users: int,
                 training: TrainingConfig, seed: int, registry: ModelRegistry,
                 service: CorrectionService | None = None, context: int = 500) -> None:
        self.name = name
        self.trainer = WholeSequenceTrainer(build_model(), training, seed)
        self.registry = registry
        self.service = service
        self.context = context
        self.sequences: list[list[int]] = [[] for _ in range(n_users)]
        self.trained = np.zeros(n_users, np.int64)  # clicks already learnt as targets
        self.jobs = 0

    def initial_release(self) -> ModelVersion:
        """Version 1: the untrained model, so devices can serve before any job ran."""
        return self._publish()

    def _publish(self) -> ModelVersion:
        weights = self.trainer.model.state_dict()
        if self.service is not None:
            self.service.load(weights)
        return self.registry.publish(self.name, weights)

    def observe(self, events: EventBatch) -> None:
        clicks = np.flatnonzero(events.event == CLICK)
        for user, item in zip(events.user[clicks].tolist(), events.item[clicks].tolist(),
                              strict=True):
            self.sequences[user].append(item + 1)

    def run(self, now: int) -> Outputs | None:
        lengths = np.array([len(s) for s in self.sequences])
        users = np.flatnonzero(lengths > np.maximum(self.trained, 1))
        if len(users) == 0:
            return None
        b = self.trainer.model.mini_batch_size
        sequences, weights = [], []
        for u in users.tolist():
            start = max(0, int(lengths[u]) - self.context) // b * b
            seq = np.asarray(self.sequences[u][start:], np.int64)
            target_index = start + 1 + np.arange(len(seq) - 1)
            sequences.append(seq)
            weights.append((target_index >= self.trained[u]).astype(np.float32))
        self.trainer.fit(sequences, weights)
        self.trained[users] = lengths[users]
        self.jobs += 1
        version = self._publish()
        return Outputs(scores=np.zeros((0, 0), dtype=np.float32), emitted=[
            Release(model=self.name, version=version.version, ts=now, checksum=version.checksum)
        ])
