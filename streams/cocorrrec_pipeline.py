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
- ``cocorrrec``: the device sends the hidden states H of the mini-batch so far
  (float16) to the cloud (``param.requests``); the cloud's GCN answers with the
  correction rows of the click's token (float16, ``param.responses``, Eq. 13); the
  device normalises and fuses them (Eq. 14–15) into a corrected user vector, which
  serves its next click. A correction that does not come back in time is skipped: the
  device keeps serving its own vector. The request travels through the runtime's
  :data:`~dcrec.streams.processor.Responder` (in-process in the local runtime, over
  the topics in the kafka runtime); the processor does no I/O.

Cloud (:class:`WholeSequenceCloudJob`): keeps every user's clicks and, each cloud
interval, continues training SCN (and GCN) jointly (Eq. 16) on the users with new
clicks — their sequence from the start (the last ``context`` clicks at most, from a
mini-batch boundary), the new clicks as targets — then releases the model. The
:class:`CorrectionService` answers each request with the GCN of the model version the
device serves.

A device keeps its TTT state across model releases: it is the device's memory of its
clicks, and a warm-started release moves the projections it was built with only a
little.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from dcrec.models.scn import SCN
from dcrec.models.training import TrainingConfig, WholeSequenceTrainer, pad_rows
from dcrec.state.click_history import neighbours, occurrence
from dcrec.state.device_state import StateField, StateRows, StateSpec
from dcrec.state.registry import ModelRegistry, ModelVersion, download
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.processor import DeviceBatch, Outputs, Responder
from dcrec.streams.request_service import RequestService
from dcrec.streams.schema import CLICK, ParamRequest, ParamResponse, Release

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
        "version": StateField("int32"),
    }
    if corrected:
        spec["user_corrected"] = StateField("float32", (dim,))
        spec["corrected"] = StateField("int8")
    return spec


class CorrectionService(RequestService):
    """The cloud's GCN answering correction requests (Eq. 13): from the uploaded hidden
    states of a device's mini-batch so far, the correction row of its last token,
    computed with the model version the device serves (read from the registry)."""

    def __init__(self, build_model: Callable[[], SCN], registry: ModelRegistry,
                 name: str) -> None:
        super().__init__(build_model(), registry, name)
        if self.model.gcn is None:
            raise ValueError("the correction service needs a model with a GCN")

    @torch.inference_mode()
    def answer(self, requests: list[ParamRequest]) -> list[ParamResponse | None]:
        """None for a request that cannot be answered (not a correction request, a
        payload that is not whole hidden states of at most one mini-batch, an unknown
        model version)."""
        model = self.model
        b, d = model.mini_batch_size, model.dim
        width = d * WIRE_DTYPE().itemsize
        answers: list[ParamResponse | None] = [None] * len(requests)
        for version in sorted({r.version for r in requests}):
            mine = [k for k, r in enumerate(requests) if r.version == version
                    and r.kind == "correction" and len(r.payload) % width == 0
                    and 0 < len(r.payload) // width <= b]
            if not mine or not self.load_version(version):
                continue
            hidden = np.zeros((len(mine), b, d), np.float32)
            last = np.empty(len(mine), np.int64)
            for row, k in enumerate(mine):
                tokens = np.frombuffer(requests[k].payload, WIRE_DTYPE).reshape(-1, d)
                hidden[row, :len(tokens)] = tokens
                last[row] = len(tokens) - 1
            assert model.gcn is not None
            rows = model.gcn(torch.from_numpy(pad_rows(hidden)))[torch.arange(len(mine)),
                                                                  torch.from_numpy(last)]
            payloads = rows.numpy().astype(WIRE_DTYPE)
            for row, k in enumerate(mine):
                r = requests[k]
                answers[k] = ParamResponse(device=r.device, ts=r.ts, version=version,
                                           payload=payloads[row].tobytes(),
                                           kind="correction", position=r.position)
        return answers


@dataclass(frozen=True)
class Segment:
    """The clicks of a batch that fall in their devices' s-th mini-batch of the batch
    (counted from each device's current one), one row per device."""

    clicks: np.ndarray   # the clicks' indices among the batch's clicks, in order
    dev: np.ndarray      # the devices' state rows, sorted
    slot: np.ndarray     # per click: its device's index in ``dev``
    place: np.ndarray    # per click: its place in the mini-batch
    full: np.ndarray     # per device: its mini-batch is full after this segment
    tokens: np.ndarray   # the mini-batches' tokens so far, rows padded to ROW_FLOOR

    @classmethod
    def plan(cls, state: StateRows, rows: np.ndarray, place: np.ndarray, items: np.ndarray,
             k: np.ndarray, b: int) -> Segment:
        """Clicks ``k`` join their mini-batches' tokens in ``state``; a mini-batch now
        full starts empty for the next segment."""
        state["tokens"][rows[k], place[k]] = items[k]
        dev = np.unique(rows[k])
        slot = np.searchsorted(dev, rows[k])
        full = np.zeros(len(dev), bool)
        full[slot[place[k] == b - 1]] = True
        tokens = pad_rows(state["tokens"][dev])
        state["tokens"][dev[full]] = 0
        return cls(k, dev, slot, place[k], full, tokens)


@dataclass
class Clicked:
    """Per click of a batch: the device's user vector after it, and its corrected form
    where the cloud's correction came back."""

    vector: np.ndarray
    corrected_vector: np.ndarray
    corrected: np.ndarray


class TTTProcessor:
    """The device side of ``scn`` and, with ``corrected``, ``cocorrrec``."""

    def __init__(self, build_model: Callable[[], SCN], corrected: bool = False,
                 responder: Responder | None = None) -> None:
        self.model = build_model().eval()
        self.corrected = corrected
        self.responder = responder
        m = self.model
        self.state_spec = ttt_spec(m.dim, m.heads, m.mini_batch_size, corrected)
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
        b = self.model.mini_batch_size
        fresh = state["clicks"] == 0
        W0, b0 = (p.detach().numpy() for p in (self.model.ttt.W0, self.model.ttt.b0))
        state["W"][fresh], state["b"][fresh] = W0, b0
        # each click's place in its device's sequence: its mini-batch (counted from the
        # device's current one) and its position there
        before = state["clicks"][rows] + occurrence(rows)
        place = before % b
        segment = before // b - state["clicks"][rows] // b
        clicked = Clicked(np.empty((len(items), self.model.dim), np.float32),
                          np.empty((len(items), self.model.dim), np.float32),
                          np.zeros(len(items), bool))
        first_served = self._serving_vector(state, rows)
        out = Outputs(scores=np.zeros((0, 0), np.float32))
        segments = [Segment.plan(state, rows, place, items, np.flatnonzero(segment == s), b)
                    for s in range(int(segment.max(initial=-1)) + 1)]
        # every segment's tokens through the embedding and projections in one call
        hidden, projected = self._project(segments)
        heads = torch.empty(len(items), self.model.heads, 1, self.model.ttt.head_dim)
        first = 0
        for seg in segments:
            rows_of = slice(first, first + len(seg.dev))   # the step's devices, unpadded
            first += len(seg.tokens)
            seg_projected = {name: v[rows_of] for name, v in projected.items()}
            start = self._mini_batch(state, seg, seg_projected, heads)
            if self.corrected:
                self._correct(batch.devices, rows, before, events.ts[clicks], seg, start,
                              hidden[rows_of], seg_projected, clicked, out)
        if len(items):
            clicked.vector[:] = self.model.readout(
                torch.from_numpy(pad_rows(heads.numpy())))[:len(items), 0].numpy()
        state["clicks"] += np.bincount(rows, minlength=len(state["clicks"])).astype(np.int32)
        previous, last = neighbours(rows)
        has_previous = previous >= 0
        served = first_served.copy()
        p = previous[has_previous]
        served[has_previous] = np.where(clicked.corrected[p, None], clicked.corrected_vector[p],
                                        clicked.vector[p])
        state["user"][rows[last]] = clicked.vector[last]
        if self.corrected:
            state["user_corrected"][rows[last]] = clicked.corrected_vector[last]
            state["corrected"][rows[last]] = clicked.corrected[last]
        evaluated = batch.evaluate[clicks]
        candidates = torch.from_numpy(batch.candidates.astype(np.int64) + 1)
        out.scores = torch.einsum("nd,ncd->nc", torch.from_numpy(served[evaluated]),
                                  self.model.item_embedding(candidates)).numpy()
        out.bytes_down += download(state["version"], self.version)
        return state, out

    def _serving_vector(self, state: StateRows, dev: np.ndarray) -> np.ndarray:
        """The user vector a device holds for its next click: corrected by the cloud
        when the correction came back."""
        if not self.corrected:
            return state["user"][dev]
        arrived = state["corrected"][dev] == 1
        return np.where(arrived[:, None], state["user_corrected"][dev], state["user"][dev])

    def _project(self, segments: list[Segment]
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The hidden states (Eq. 8) and projections (Eq. 9–10) of every segment's
        mini-batch tokens, stacked in segment order. A row's values do not depend on the
        rows around it (each segment's rows are a multiple of ``ROW_FLOOR``)."""
        tokens = np.concatenate([seg.tokens for seg in segments] or
                                [np.zeros((0, self.model.mini_batch_size), np.int32)])
        hidden = self.model.hidden(torch.from_numpy(tokens).long())
        return hidden, self.model.ttt.project(hidden)

    def _mini_batch(self, state: StateRows, seg: Segment, projected: dict[str, torch.Tensor],
                    heads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Recompute each of the segment's mini-batches from its device's TTT state,
        keep every click's heads' output, advance the state of the mini-batches now
        full. Returns the states the mini-batches started from. The dual form runs on
        the segment's devices alone, unpadded: its products are per device and head
        (batched), its reductions per row, so a device's values do not depend on how
        many share the step (a test checks 1…63 devices)."""
        W, bias = (torch.from_numpy(state[name][seg.dev]) for name in ("W", "b"))
        out, W_next, b_next = self.model.mini_batch_heads(W, bias, projected)
        heads[torch.from_numpy(seg.clicks), :, 0] = out[torch.from_numpy(seg.slot), :,
                                                        torch.from_numpy(seg.place)]
        state["W"][seg.dev[seg.full]] = W_next.numpy()[seg.full]
        state["b"][seg.dev[seg.full]] = b_next.numpy()[seg.full]
        return W, bias

    def _correct(self, devices: np.ndarray, rows: np.ndarray, before: np.ndarray,
                 ts: np.ndarray, seg: Segment, start: tuple[torch.Tensor, torch.Tensor],
                 hidden: torch.Tensor, projected: dict[str, torch.Tensor], clicked: Clicked,
                 out: Outputs) -> None:
        """Ask the cloud for the correction of each click's token (Eq. 13) and fuse what
        comes back into the click's corrected output (Eq. 14–15); ``start``: the TTT
        states the segment's mini-batches started from."""
        model, k, slot, place = self.model, seg.clicks, seg.slot, seg.place
        rows, before, ts = rows[k], before[k], ts[k]
        payloads = hidden.numpy().astype(WIRE_DTYPE)
        version = self.version.version if self.version is not None else 0
        requests = [ParamRequest(device=int(devices[r]), ts=int(t), kind="correction",
                                 payload=payloads[s, :p + 1].tobytes(), position=int(q),
                                 version=version)
                    for r, t, s, p, q in zip(rows.tolist(), ts.tolist(), slot.tolist(),
                                             place.tolist(), before.tolist(), strict=True)]
        responses = (self.responder(requests) if self.responder is not None
                     else [None] * len(requests))
        out.requests += len(requests)
        out.bytes_up += sum(len(r.payload) for r in requests)
        got = [i for i, r in enumerate(responses) if r is not None
               and r.position == requests[i].position and r.version == version]
        clicked.corrected[k] = False
        if not got:
            return
        assert model.gcn is not None
        W, bias = start
        rows_t = torch.zeros(len(W), model.mini_batch_size, model.gcn.row_width)
        for i in got:
            payload = responses[i].payload  # type: ignore[union-attr]
            rows_t[slot[i], place[i]] = torch.from_numpy(
                np.frombuffer(payload, WIRE_DTYPE).astype(np.float32))
            out.bytes_down += len(payload)
        heads, _, _ = model.mini_batch_heads(W, bias, projected, rows_t)
        corrected = model.readout(torch.from_numpy(pad_rows(heads.numpy())))  # a GEMM: padded
        got_a = np.asarray(got)
        clicked.corrected_vector[k[got_a]] = corrected[slot[got_a], place[got_a]].numpy()
        clicked.corrected[k[got_a]] = True


class WholeSequenceCloudJob:
    """Cloud side: every user's clicks; each job trains on the users with new clicks."""

    def __init__(self, name: str, build_model: Callable[[], SCN], n_users: int,
                 training: TrainingConfig, seed: int, registry: ModelRegistry,
                 context: int = 500) -> None:
        self.name = name
        self.trainer = WholeSequenceTrainer(build_model(), training, seed)
        self.registry = registry
        self.context = context
        self.sequences: list[list[int]] = [[] for _ in range(n_users)]
        self.trained = np.zeros(n_users, np.int64)  # clicks already learnt as targets
        self.jobs = 0

    def initial_release(self) -> ModelVersion:
        """Version 1: the untrained model, so devices can serve before any job ran."""
        return self._publish()

    def _publish(self) -> ModelVersion:
        return self.registry.publish(self.name, self.trainer.model.state_dict())

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
