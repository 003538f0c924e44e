"""IntellectReq on the stream (Lv et al., WWW 2024): devices serve EC-CDR with
cloud-generated parameters and ask for new ones only when their request agent says the
old ones no longer pay (the ``ec-cdr``, ``ec-cdr-static``, ``intellectreq`` and
``random`` presets).

Device (:class:`ParameterRequestProcessor`), per click in stream order:

- the click is scored with the static layers Ω on the clicks before it and the dynamic
  layers' parameters the device holds (Eq. 3–7) — *before* the device learns from it;
  a device that never received parameters uses the generic ones (the generator on an
  empty sequence, shipped with the release);
- then the device decides whether to ask the cloud for parameters generated from its
  clicks so far: ``ec-cdr`` at every click, ``ec-cdr-static`` never, ``random`` with the
  budget's probability, ``intellectreq`` when its mis-recommendation score
  MRS(e_{t′}, e_T) ≤ the cloud's threshold (Eq. 19–20). A request (``param.requests``)
  carries its click window; the answer (``param.responses``) the generated parameters
  (float16), which serve its next clicks.

Cloud (:class:`IntellectReqCloudJob`), each cloud interval: continues training EC-CDR
on the clicks since the last job (Eq. 6), then the request agent — MRD on labels history
gives for free (parameters from the window g clicks earlier applied now: was each
candidate predicted right? Eq. 7–9) and DM (Eq. 11–16) — and sets the threshold
(:class:`ThresholdController`). The :class:`ParameterService` answers requests with the
generator of the version the device serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import msgspec
import numpy as np
import torch
from dcrec.models.ec_cdr import ECCDR, flatten, unflatten
from dcrec.models.intellectreq import IntellectReqModel, mis_recommendation_label
from dcrec.models.request_baselines import (
    NOVELTY,
    drift_since,
    mean_of_last,
    window_drift,
)
from dcrec.models.training import AdamTrainer, IncrementalTrainer, TrainingConfig, pad_rows
from dcrec.state import click_history
from dcrec.state.device_state import StateField, StateRows, StateSpec
from dcrec.state.registry import ModelRegistry, ModelVersion, download
from dcrec.streams.admission import RequestAdmission
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.processor import (
    DeviceBatch,
    Outputs,
    Responder,
    parameter_age_counts,
)
from dcrec.streams.request_service import RequestService
from dcrec.streams.schema import CLICK, ParamRequest, ParamResponse, Release, Threshold
from dcrec.streams.sequence_pipeline import CloudClickWindows
from torch.nn import functional as F

WIRE_DTYPE = np.float16     # generated parameters down
POLICIES = ("always", "never", "random", "mrs", "mrs-drift", "drift", "lof", "ocsvm")
# the agents whose score the cloud thresholds from the budget
SCORED = ("mrs", "mrs-drift", "drift", "lof", "ocsvm")
# the agents that read the request agent model (MRD + DM)
LEARNT = ("mrs", "mrs-drift")
# the agents that read the drift statistic D of the clicks since the parameters' window
READS_DRIFT = ("drift", "mrs-drift")
# the policies whose decision reads no answer to an earlier request of the device
ANSWER_FREE = ("always", "never", "random", "lof", "ocsvm")
# negatives per MRD training pair: the label compares ranks, which 4 resolve coarsely
LABEL_NEGATIVES = 20


def window_after(windows: np.ndarray, lengths: np.ndarray,
                 items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned windows with ``items`` appended (the oldest click dropped when full)."""
    width = windows.shape[1]
    full = lengths >= width
    after = windows.copy()
    after[full] = np.roll(windows[full], -1, axis=1)
    place = np.where(full, width - 1, lengths)
    after[np.arange(len(after)), place] = items
    return after, np.minimum(lengths + 1, width).astype(lengths.dtype)


def agent_spec(max_len: int, n_params: int, dim: int, anchored: bool = False) -> StateSpec:
    """A device's state: click window, its parameters and what they were generated at —
    the state code e_{t′} (``drift``: the window's mean item embedding), the click and
    the window's length —, the model version they and the static layers are of; an
    ``anchored`` agent (``mrs-drift``) also keeps the window's mean item embedding."""
    return {
        "seq": StateField("int32", (max_len,)),
        "length": StateField("int32"),
        "clicks": StateField("int32"),
        "params": StateField("float16", (n_params,)),
        "has_params": StateField("int8"),
        "code": StateField("float32", (dim,)),
        "asked_at": StateField("int32"),      # the click its parameters were asked at
        "asked_len": StateField("int32"),     # and the length of the window they came from
        "version": StateField("int32"),
        **({"anchor": StateField("float32", (dim,))} if anchored else {}),
    }


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: every input bit reaches every output bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def request_draw(devices: np.ndarray, clicks: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number per (device, click count), independent across clicks and devices
    and the same in every runtime (a hash, so no generator state to keep in step)."""
    with np.errstate(over="ignore"):
        key = _splitmix(devices.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15))
        mixed = _splitmix(key ^ clicks.astype(np.uint64))
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class ParameterService(RequestService):
    """The cloud's generator answering parameter requests (Eq. 4–5): parameters from
    the click window a device sends, with the model version it serves."""

    def __init__(self, build_model: Callable[[], IntellectReqModel], registry: ModelRegistry,
                 name: str, max_len: int, admission: RequestAdmission | None = None) -> None:
        super().__init__(build_model(), registry, name)
        self.max_len = max_len
        self.admission = admission
        self.shed = self.admitted = 0
        # (device, position, model version, window) of each answered request
        self.answered: list[tuple[int, int, int, np.ndarray]] = []

    def take_admitted(self) -> int:
        """Requests served (not shed) since the last call."""
        with self.lock:
            admitted, self.admitted = self.admitted, 0
        return admitted

    def summary(self) -> dict[str, float]:
        door = self.admission
        return {**super().summary(), "shed": self.shed,
                "max_queue": door.max_queue if door else 0,
                "queue_bound": door.queue_bound if door else 0}

    def take_answered(self) -> list[tuple[int, int, int, np.ndarray]]:
        """The requests answered since the last call: device, click position, model
        version, window."""
        with self.lock:
            answered, self.answered = self.answered, []
        return answered

    @torch.inference_mode()
    def answer(self, requests: list[ParamRequest]) -> list[ParamResponse | None]:
        """None for a request that cannot be answered (not a parameter request, a window
        that is not int32 item ids of at most ``max_len`` known items, an unknown model
        version); a ``busy`` response for one the door shed (the cloud at capacity)."""
        n_items = self.model.rec.n_items
        answers: list[ParamResponse | None] = [None] * len(requests)
        served = np.ones(len(requests), bool)
        if self.admission is not None:   # at the door, in stream order
            for k in sorted(range(len(requests)), key=lambda k: requests[k].ts):
                served[k] = self.admission.admit(requests[k].ts)
            self.shed += int((~served).sum())
        self.admitted += int(served.sum())
        for k in np.flatnonzero(~served):
            r = requests[k]
            answers[k] = ParamResponse(device=r.device, ts=r.ts, version=r.version,
                                       payload=b"", kind="busy", position=r.position)
        for version in sorted({r.version for r in requests}):
            mine, windows = [], []
            for k, r in enumerate(requests):
                if not served[k] or r.version != version or r.kind != "params" \
                        or len(r.summary) % 4:
                    continue
                ids = np.frombuffer(r.summary, "<i4")
                if 0 < len(ids) <= self.max_len and ids.min() >= 1 and ids.max() <= n_items:
                    mine.append(k)
                    windows.append(ids)
            if not mine or not self.load_version(version):
                continue
            history = np.zeros((len(mine), self.max_len), np.int64)
            lengths = np.array([len(w) for w in windows])
            for row, w in enumerate(windows):
                history[row, :len(w)] = w
            params = self.model.rec.generate(torch.from_numpy(pad_rows(history)),
                                             torch.from_numpy(pad_rows(lengths)))
            payloads = flatten(params)[:len(mine)].numpy().astype(WIRE_DTYPE)
            for row, k in enumerate(mine):
                r = requests[k]
                answers[k] = ParamResponse(device=r.device, ts=r.ts, version=version,
                                           payload=payloads[row].tobytes(), kind="params",
                                           position=r.position)
                self.answered.append((r.device, r.position, version, windows[row]))
        return answers


@dataclass(frozen=True)
class DecidedClicks:
    """The clicks a request decision is made after, one entry per click: the device's
    state row, the click's time, its window after the click (``window``, ``length``)
    with the window's item embeddings (drift and the novelty tests only) and state code
    e_T, and the device's clicks before it (``position``)."""

    row: np.ndarray
    ts: np.ndarray
    window: np.ndarray
    length: np.ndarray
    embedded: np.ndarray | None
    code: np.ndarray
    position: np.ndarray

    def take(self, k: np.ndarray) -> DecidedClicks:
        """The clicks at positions ``k``."""
        return DecidedClicks(self.row[k], self.ts[k], self.window[k], self.length[k],
                             None if self.embedded is None else self.embedded[k],
                             self.code[k], self.position[k])


@dataclass(frozen=True)
class Exchange:
    """Requests sent in one call and their answers; ``index`` says which of the
    caller's clicks asked each."""

    index: np.ndarray
    requests: list[ParamRequest]
    answers: list[ParamResponse | None]

    def of(self, keep: np.ndarray) -> Exchange:
        """The requests (and answers) where ``keep`` (one flag per request)."""
        picked = np.flatnonzero(keep).tolist()
        return Exchange(self.index[keep], [self.requests[j] for j in picked],
                        [self.answers[j] for j in picked])


class ParameterRequestProcessor:
    """The device side of the EC-CDR presets: serve, then decide whether to request."""

    def __init__(self, build_model: Callable[[], IntellectReqModel], max_len: int,
                 policy: str, budget: float, seed: int,
                 responder: Responder | None = None, threshold: float = 0.5) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown request policy {policy!r}; known: {POLICIES}")
        self.model = build_model().eval()
        self.max_len, self.policy, self.budget, self.seed = max_len, policy, budget, seed
        self.responder = responder
        self.threshold = threshold
        self.sizes = self.model.rec.generator.layer_sizes
        n_params = sum(i * o + o for i, o in self.sizes)
        self.state_spec = agent_spec(max_len, n_params, self.model.rec.dim,
                                     anchored=policy == "mrs-drift")
        self.version: ModelVersion | None = None
        self.generic = np.zeros(n_params, np.float32)
        self.empty_code = np.zeros(self.model.rec.dim, np.float32)

    def on_release(self, version: ModelVersion, registry: ModelRegistry) -> None:
        self.model.load_state_dict(registry.load(version))
        self.model.eval()
        self.version = version
        self.generic = self.model.rec.generic.numpy().copy()
        self.empty_code = self.model.empty_code().numpy()

    def on_threshold(self, event: Threshold) -> None:
        self.threshold = event.threshold

    @torch.inference_mode()
    def __call__(self, state: StateRows, batch: DeviceBatch) -> tuple[StateRows, Outputs]:
        state = {name: column.copy() for name, column in state.items()}
        self._expire(state)
        events = batch.events
        clicks = events.event == CLICK
        rows = batch.row[clicks]
        items = events.item[clicks].astype(np.int32) + 1
        advanced = click_history.advance(state["seq"], state["length"], rows, items)
        evaluated = batch.evaluate[clicks]
        eval_index = np.cumsum(evaluated) - 1
        scores = np.zeros(batch.candidates.shape, np.float32)
        out = Outputs(scores=scores)
        # clicks since the window of the parameters each click is served with (0: generic)
        age = np.zeros(len(rows), np.int64)
        rank = click_history.occurrence(rows)
        previous, _ = click_history.neighbours(rows)
        # Ω after every click in one call, and before it: after the device's previous
        # click, or (a device's first click of the batch) computed
        after, after_len = window_after(advanced.windows, advanced.lengths, items)
        after_state = self._static_state(after, after_len)
        before_state = np.empty_like(after_state)
        first = previous < 0
        before_state[~first] = after_state[previous[~first]]
        if first.any():
            before_state[first] = self._static_state(advanced.windows[first],
                                                     advanced.lengths[first])
        # the windows' item embeddings (what drift and the novelty tests read), and the
        # state code e_T after each click (``drift``: its window's mean embedding)
        embedded = (self._embedded(after) if self.policy in READS_DRIFT or self.policy in NOVELTY
                    else None)
        codes = (mean_of_last(embedded, after_len, after_len) if self.policy == "drift"
                 else self.model.agent.encoder(
                     torch.from_numpy(pad_rows(after_state)))[:len(rows)].numpy())
        decided = DecidedClicks(rows, events.ts[clicks], after, after_len, embedded, codes,
                                state["clicks"][rows] + rank)
        # a policy that reads no answer decides after every click of the batch at once
        # and sends the requests in one call (one generator pass in the cloud, not one per
        # rank); each answer still serves from the device's click after its own
        whole = (self._request(state, batch.devices, decided, np.argsort(rank, kind="stable"),
                               out)
                 if self.policy in ANSWER_FREE else None)
        for r in range(int(rank.max(initial=-1)) + 1):
            k = np.flatnonzero(rank == r)             # each device's r-th click of the batch
            dev = rows[k]
            params = np.where(state["has_params"][dev, None] == 1,
                              state["params"][dev].astype(np.float32), self.generic[None])
            served = evaluated[k]
            if served.any():
                s = k[served]
                scores[eval_index[s]] = self._score(before_state[s], params[served],
                                                    batch.candidates[eval_index[s]] + 1)
                age[s] = self._clicks_since(state, dev[served], np.zeros_like(s))
            if whole is None:
                mine = decided.take(k)
                exchange = self._request(state, batch.devices, mine, np.arange(len(k)), out)
                self._take_answers(state, mine, exchange, out)
            else:
                self._take_answers(state, decided, whole.of(rank[whole.index] == r), out)
            state["clicks"][dev] += 1
        state["seq"], state["length"] = advanced.seq, advanced.length
        out.parameter_age = parameter_age_counts(age[evaluated])
        out.bytes_down += download(state["version"], self.version)
        return state, out

    @property
    def _version_number(self) -> int:
        """The release the device serves (0 before any)."""
        return self.version.version if self.version is not None else 0

    def _expire(self, state: StateRows) -> None:
        """Parameters generated by an older release do not fit this release's static
        layers: a device moving to a new version serves with the generic parameters
        until it asks again, as a new device does, and its agent compares against the
        state those were made for (the empty window's code)."""
        moved = state["version"] < self._version_number
        state["has_params"][moved] = 0
        state["code"][moved] = 0.0
        state["asked_len"][moved] = 0
        if "anchor" in state:
            state["anchor"][moved] = 0.0

    def _embedded(self, windows: np.ndarray) -> np.ndarray:
        """Item embeddings of click windows ``[N, L, d]`` (the drift test's stream)."""
        return self.model.rec.item_embedding.weight.numpy()[windows]

    def _static_state(self, windows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """u = Ω(s) ``[N, d]`` of left-aligned click windows."""
        n = len(windows)
        h, n_ = (torch.from_numpy(pad_rows(a.astype(np.int64))) for a in (windows, lengths))
        return self.model.rec.user_state(h, n_)[:n].numpy()

    def _score(self, u: np.ndarray, params: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Scores with the dynamic block's ``params`` on static states ``u`` (Eq. 3, 7)."""
        rec, n = self.model.rec, len(u)
        u_t, p, c = (torch.from_numpy(pad_rows(a)) for a in (
            u, params, candidates.astype(np.int64)))
        user = rec.user_vector(u_t, unflatten(p, self.sizes))
        targets = rec.target_trans(rec.item_embedding(c))
        return torch.einsum("nd,ncd->nc", user, targets)[:n].numpy()

    @staticmethod
    def _clicks_since(state: StateRows, dev: np.ndarray, after_len: np.ndarray) -> np.ndarray:
        """Clicks since the window the parameters of ``dev`` came from (a device on the
        generic ones: its whole window)."""
        return np.where(state["asked_len"][dev] > 0,
                        state["clicks"][dev] - state["asked_at"][dev], after_len)

    def _decide(self, state: StateRows, devices: np.ndarray,
                clicks: DecidedClicks) -> tuple[np.ndarray, np.ndarray]:
        """Whether each device asks after its click, and the score the decision read."""
        dev, after_len, embedded = clicks.row, clicks.length, clicks.embedded
        n = len(dev)
        mrs = np.ones(n)
        if self.policy == "always":   # the bound: every click (budget 0: none, DESIGN.md)
            return np.full(n, self.budget > 0), mrs
        if self.policy == "never":
            return np.zeros(n, bool), mrs
        if self.policy == "random":
            return request_draw(devices[dev], clicks.position, self.seed) < self.budget, mrs
        if self.policy == "drift":   # the drift statistic D, high = ask (as −D ≤ …)
            since = self._clicks_since(state, dev, after_len)
            mrs = -self._drift(state, clicks, since, state["code"][dev])
        elif self.policy in NOVELTY:   # −LOF / OC-SVM value of the newest click, low = ask
            assert embedded is not None
            mrs = NOVELTY[self.policy](embedded, after_len)
        else:
            # a device on the generic parameters: against the empty window's code
            then = np.where(state["has_params"][dev, None] == 1, state["code"][dev],
                            self.empty_code[None])
            since = self._clicks_since(state, dev, after_len)
            drift = (self._drift(state, clicks, since, state["anchor"][dev])
                     if self.policy == "mrs-drift" else None)
            then_t, code_t, since_t = (torch.from_numpy(pad_rows(a))
                                       for a in (then, clicks.code, since))
            drift_t = None if drift is None else torch.from_numpy(pad_rows(drift))
            mrs = self.model.agent.mrs(then_t, code_t, since_t, drift_t)[:n].numpy()
        return mrs <= self.threshold, mrs

    @staticmethod
    def _drift(state: StateRows, clicks: DecidedClicks, since: np.ndarray,
               anchor: np.ndarray) -> np.ndarray:
        """D of each device's ``since`` clicks since the window its parameters came from,
        whose mean item embedding is ``anchor`` (0 and no clicks: the generic ones)."""
        assert clicks.embedded is not None
        recent = np.minimum(since, clicks.length)
        return window_drift(mean_of_last(clicks.embedded, clicks.length, recent), recent,
                            anchor, state["asked_len"][clicks.row])

    def _request(self, state: StateRows, devices: np.ndarray, clicks: DecidedClicks,
                 order: np.ndarray, out: Outputs) -> Exchange:
        """The request decisions after ``clicks`` and, in ``order``, the requests of the
        clicks that ask, sent in one call with their answers."""
        ask, mrs = self._decide(state, devices, clicks)
        asking = order[ask[order]]
        if len(asking) == 0 or self.responder is None:
            return Exchange(asking[:0], [], [])
        version = self._version_number
        requests = [ParamRequest(device=int(devices[clicks.row[i]]), ts=int(clicks.ts[i]),
                                 mrs=float(mrs[i]), kind="params",
                                 summary=clicks.window[i, :clicks.length[i]]
                                 .astype("<i4").tobytes(),
                                 position=int(clicks.position[i]), version=version)
                    for i in asking.tolist()]
        out.requests += len(requests)
        out.bytes_up += sum(len(r.summary) for r in requests)
        return Exchange(asking, requests, self.responder(requests))

    def _take_answers(self, state: StateRows, clicks: DecidedClicks, exchange: Exchange,
                      out: Outputs) -> None:
        """The parameters of the answered requests serve their devices from now on; the
        code, click and window length they were asked at are kept for the agent."""
        version = self._version_number
        for i, request, answer in zip(exchange.index.tolist(), exchange.requests,
                                      exchange.answers, strict=True):
            if answer is None or answer.kind != "params" \
                    or answer.position != request.position or answer.version != version:
                continue   # refused, shed (busy) or stale: serve on with what it holds
            d = clicks.row[i]
            state["params"][d] = np.frombuffer(answer.payload, WIRE_DTYPE)
            state["has_params"][d] = 1
            state["code"][d] = clicks.code[i]
            state["asked_at"][d] = request.position
            state["asked_len"][d] = clicks.length[i]
            if "anchor" in state:
                assert clicks.embedded is not None
                state["anchor"][d] = mean_of_last(clicks.embedded[i:i + 1],
                                                  clicks.length[i:i + 1],
                                                  clicks.length[i:i + 1])[0]
            out.bytes_down += len(answer.payload)


class ThresholdController:
    """Sets the MRS threshold (Eq. 19–20) so the request rate meets what the cloud can
    afford: the budget share of clicks, at most ``capacity`` requests per second of
    event time (configured) and, when given one, at most what the service's measured
    time per answer lets it serve. The threshold is the q-quantile of recent MRS
    values (the devices' own); q follows the affordable rate, and is corrected by the
    request rate actually seen (more requests than affordable → q shrinks, the
    threshold tightens; fewer → it relaxes)."""

    def __init__(self, budget: float, capacity: float | None = None) -> None:
        self.budget, self.capacity = budget, capacity
        self.level = budget        # the quantile level of the last threshold
        self.target = budget       # the share of clicks it meant to let ask
        self.correction = 1.0      # realised / intended request share, learnt
        self.recent = np.zeros(0)

    def observe(self, mrs: np.ndarray) -> None:
        """The devices' MRS after the clicks since the last update, by the agent the
        devices will hold next (an older agent's values are on another scale)."""
        self.recent = np.asarray(mrs, np.float64)

    def affordable(self, clicks: int, seconds: float, measured: float | None = None) -> float:
        """The share of clicks the cloud can answer over ``seconds`` of event time, at
        its configured capacity and at ``measured`` (requests per event-time second the
        service's measured time per answer allows)."""
        rate = self.budget
        for capacity in (self.capacity, measured):
            if capacity is not None and clicks:
                rate = min(rate, capacity * seconds / clicks)
        return rate

    def update(self, requests: int, clicks: int, seconds: float, now: int,
               measured: float | None = None) -> Threshold:
        target = self.affordable(clicks, seconds, measured)
        if clicks:   # the sample is the devices' own MRS: q is the affordable share,
            # corrected by how far the share asking missed the last one (within ×/÷ 2)
            seen = max(requests, 1) / clicks
            self.correction = float(np.clip(self.correction * np.sqrt(
                self.target / seen), 0.5, 2.0))
            self.target = target
            self.level = float(np.clip(target * self.correction, 1e-4, 1.0))
        values = np.asarray(self.recent) if len(self.recent) else np.array([0.5])
        threshold = float(np.quantile(values, self.level))
        return Threshold(ts=now, threshold=threshold,
                         load=requests / clicks if clicks else 0.0, capacity=target,
                         level=self.level, requests=requests, seconds=seconds)


@dataclass(frozen=True)
class MRDPairs:
    """Training pairs of MRD (Eq. 7–9): the static states at T and at t′ = T − gap, the
    label (:func:`mis_recommendation_label`: do the parameters from t′ rank the click
    at T as well as fresh ones would), and the candidates' target embeddings with
    their labels (the click first)."""

    u_now: torch.Tensor
    u_then: torch.Tensor
    still_right: torch.Tensor
    candidates: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def mrd_pairs(rec: ECCDR, windows: torch.Tensor, lengths: torch.Tensor,
              targets: torch.Tensor, gap: torch.Tensor, negatives: torch.Tensor) -> MRDPairs:
    """The labels history gives for free: for each click (``windows`` before it,
    ``targets``), the window ``gap`` clicks earlier generates the parameters a stale
    device would hold, the window itself the ones a request now would bring; applied
    to the current state, how does each rank the click against ``negatives``?"""
    candidates = torch.cat([targets[:, None], negatives], dim=1)
    labels = torch.zeros(candidates.shape)
    labels[:, 0] = 1.0
    # the window at t′ is the window at T cut ``gap`` clicks earlier: one pass of each GRU
    (u_now, g_now), (u_then, g_then) = rec.prefix_states(
        windows, [lengths, (lengths - gap).clamp(min=0)])
    targets_t = rec.target_trans(rec.item_embedding(candidates))

    def logits(generator_state: torch.Tensor) -> torch.Tensor:
        params = rec.generator.heads(generator_state)
        return torch.einsum("nd,ncd->nc", rec.user_vector(u_now, params), targets_t)

    still_right = mis_recommendation_label(logits(g_then), logits(g_now))
    return MRDPairs(u_now, u_then, still_right, targets_t, labels)


def pair_drift(embedding: np.ndarray, windows: np.ndarray, lengths: np.ndarray,
               gap: np.ndarray, since: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """D of each MRD pair as its device would compute it: the ``since`` newest clicks of
    the window at T against the window at t′ (the first ``lengths − gap`` clicks; none
    for the generic parameters, ``gap ≥ lengths``), over item ``embedding`` rows."""
    then_len = np.maximum(lengths - gap, 0)
    out = np.empty(len(windows))
    for start in range(0, len(windows), chunk):
        part = slice(start, start + chunk)
        embedded = embedding[windows[part]]
        out[part] = drift_since(embedded, lengths[part], since[part], embedded,
                                then_len[part])
    return out


def measured_capacity(requests: int, busy_seconds: float, wall_seconds: float,
                      stream_seconds: float) -> float | None:
    """Requests per event-time second the service can answer: requests per second it
    was busy answering them (its measured time per answer) times the wall seconds an
    event-time second took (1 live; a fraction in a fast replay). None before there is
    anything to measure."""
    if requests == 0 or busy_seconds <= 0 or stream_seconds <= 0:
        return None
    return requests / busy_seconds * wall_seconds / stream_seconds


class IntellectReqCloudJob:
    """Cloud side: click windows, EC-CDR training, request-agent training, threshold."""

    def __init__(self, name: str, build_model: Callable[[], IntellectReqModel], n_users: int,
                 max_len: int, training: TrainingConfig, seed: int, registry: ModelRegistry,
                 service: ParameterService, controller: ThresholdController | None,
                 max_gap: int = 8, score: str = "mrs", measure_capacity: bool = False) -> None:
        if score not in SCORED:
            raise ValueError(f"the threshold is on one of {SCORED}, not {score!r}")
        self.name, self.score = name, score
        self.model = build_model()
        self.trainer = IncrementalTrainer(self.model.rec, training, seed)
        # the request agent (MRD + DM) learns without weight decay
        self.agent_trainer = AdamTrainer(self.model.agent, replace(training, l2=0.0))
        self.training = training
        self.registry, self.service, self.controller = registry, service, controller
        self.windows = CloudClickWindows(n_users, max_len)
        self.max_gap = max_gap
        # what each device's agent compares against: its clicks so far, the version
        # devices serve until the next release, and the requests answered with it
        self.clicks = np.zeros(n_users, np.int64)
        self.served = 0
        self.pending_answers: list[tuple[int, int, int, np.ndarray]] = []
        self.generator = torch.Generator().manual_seed(seed)
        self.last_run: int | None = None   # the last job's time (the stream's start before)
        # the controller also holds requests to the service's measured capacity
        self.measure_capacity = measure_capacity
        self.last_wall = time.perf_counter()

    def initial_release(self) -> ModelVersion:
        version = self.registry.publish(self.name, self.model.state_dict())
        self.served = version.version
        return version

    def observe(self, events: EventBatch) -> None:
        if self.last_run is None and len(events):
            self.last_run = int(events.ts[0])
        self.windows.observe(events)

    def run(self, now: int) -> Outputs | None:
        samples = self.windows.take()
        since = now - self.last_run if self.last_run is not None else 0   # stream seconds
        clock = time.perf_counter()
        wall, self.last_wall = clock - self.last_wall, clock
        self.last_run = now
        if samples is None:
            return None
        windows, lengths, targets, users = samples
        self.trainer.fit(windows, lengths, targets)
        self.model.rec.refresh_generic()
        emitted: list = []
        if self.controller is not None:
            if self.score in LEARNT:
                self._train_agent(windows, lengths, targets)
            self.controller.observe(self._device_mrs(windows, lengths, targets, users))
            load, busy = self.service.take_load(), self.service.take_busy_seconds()
            measured = measured_capacity(load, busy, wall, since) \
                if self.measure_capacity else None
            threshold = self.controller.update(load, len(targets), since, now, measured)
            if self.measure_capacity and self.service.admission is not None:
                self.service.admission.hold_to(measured)   # the door holds to it too
            emitted.append(msgspec.structs.replace(
                threshold, admitted=self.service.take_admitted()))
        version = self.registry.publish(self.name, self.model.state_dict())
        self.served = version.version
        emitted.insert(0, Release(model=self.name, version=version.version, ts=now,
                                  checksum=version.checksum))
        return Outputs(scores=np.zeros((0, 0), dtype=np.float32), emitted=emitted)

    @torch.no_grad()
    def _device_mrs(self, windows: np.ndarray, lengths: np.ndarray, targets: np.ndarray,
                    users: np.ndarray) -> np.ndarray:
        """The MRS (``drift``: −D) each device computed after each of these clicks, as
        the device computes it — its state now against the state of the window its
        latest request answered with the version it serves carried (the empty window's
        code if it has none: parameters of an older release expire with it) — with the
        agent just trained: the sample whose quantiles set the threshold."""
        # a device's first click has no window before it and is no sample: position + 1
        positions = self.clicks[users] + click_history.occurrence(users) + 1
        np.add.at(self.clicks, users, 1)
        answers = self.pending_answers + self.service.take_answered()
        # answers of a later version (a worker ahead of this job) wait for their job
        self.pending_answers = [a for a in answers if a[2] > self.served]
        answers = sorted((a for a in answers if a[2] == self.served),
                         key=lambda a: (a[0], a[1]))
        # a request at position p (made after click p) serves the decisions after click p+1 …
        keys = np.array([(d << 32) + p for d, p, _, _ in answers], np.int64)
        found = np.searchsorted(keys, (users.astype(np.int64) << 32) + positions) - 1
        own = found >= 0
        own[own] = keys[found[own]] >> 32 == users[own]
        then_windows = np.zeros_like(windows)
        then_lengths = np.zeros_like(lengths)
        asked_at = np.zeros_like(positions)
        for row in np.flatnonzero(own):
            _, asked_at[row], _, window = answers[found[row]]
            then_windows[row, :len(window)] = window
            then_lengths[row] = len(window)
        after, after_len = window_after(windows, lengths, targets.astype(np.int32))
        embedded = self.model.rec.item_embedding.weight.numpy()
        if self.score in NOVELTY:   # as the device: the newest click among its window
            return NOVELTY[self.score](embedded[after], after_len)
        # clicks since the parameters' window, as the device counts them
        since = np.where(then_lengths > 0, positions - asked_at, after_len)
        if self.score in READS_DRIFT:   # as the device: D of its clicks since it asked
            drift = drift_since(embedded[after], after_len, since, embedded[then_windows],
                                then_lengths)
            if self.score == "drift":
                return -drift
        agent = self.model.agent
        now = self.model.state_code(*(torch.from_numpy(a.astype(np.int64))
                                      for a in (after, after_len)))
        then = self.model.state_code(*(torch.from_numpy(a.astype(np.int64))
                                       for a in (then_windows, then_lengths)))
        # a device on the generic parameters compares against the empty window's code
        then[torch.from_numpy(then_lengths == 0)] = self.model.empty_code()
        return agent.mrs(then, now, torch.from_numpy(since),
                         torch.from_numpy(drift) if agent.reads_drift else None).numpy()

    def _train_agent(self, windows: np.ndarray, lengths: np.ndarray,
                     targets: np.ndarray) -> None:
        """MRD + combiner on the free labels of Eq. 7–9 and DM (Eq. 14–16), EC-CDR
        fixed."""
        rec, agent = self.model.rec, self.model.agent
        windows, lengths, targets = self._with_rehearsal(windows, lengths, targets)
        n = len(targets)
        # parameters 1 … max_gap clicks old and, one draw in max_gap + 1, the generic
        # ones (from the empty window), which every device holds after a release until
        # it asks: the pairs the agent judges on devices
        lengths_t = torch.from_numpy(lengths.astype(np.int64))
        gap = torch.randint(1, self.max_gap + 2, (n,), generator=self.generator)
        gap = torch.where(gap > self.max_gap, lengths_t, gap)
        since = torch.minimum(gap, lengths_t)   # a device on the generic ones: its window
        negatives = torch.randint(1, rec.n_items + 1, (n, LABEL_NEGATIVES),
                                  generator=self.generator)
        pairs = mrd_pairs(rec, torch.from_numpy(windows.astype(np.int64)), lengths_t,
                          torch.from_numpy(targets.astype(np.int64)), gap, negatives)
        u_now, u_then, still_right = pairs.u_now, pairs.u_then, pairs.still_right
        targets_t, labels = pairs.candidates, pairs.labels
        drift = (torch.from_numpy(pair_drift(
            rec.item_embedding.weight.detach().numpy(), windows, lengths, gap.numpy(),
            since.numpy())) if agent.reads_drift else None)

        def loss(i: torch.Tensor) -> torch.Tensor:   # MRD's and DM's, over the pairs i
            e_now, e_then = agent.encoder(u_now[i]), agent.encoder(u_then[i])
            mrs_logit = agent.mrs_logit(e_then, e_now, since[i],
                                        None if drift is None else drift[i])
            return (F.binary_cross_entropy_with_logits(mrs_logit, still_right[i])
                    + agent.dm.loss(e_now, targets_t[i, 0], targets_t[i], labels[i]))

        agent.train()
        for _ in range(self.training.epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, self.training.batch_size):
                i = order[start:start + self.training.batch_size]
                self.agent_trainer.step(partial(loss, i), len(i))
        agent.eval()

    def _with_rehearsal(self, windows: np.ndarray, lengths: np.ndarray,
                        targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The new clicks and, as EC-CDR's own training rehearses, ``replay_ratio``
        draws per new click from the recent ones it keeps: a day's clicks alone give
        the agent a few optimiser steps a day."""
        ratio = self.training.replay_ratio
        drawn = self.trainer.draw_recent(ratio * len(targets), self.generator) if ratio else {}
        if not drawn:
            return windows, lengths, targets
        return (np.concatenate([windows, drawn["history"]]),
                np.concatenate([lengths, drawn["lengths"]]),
                np.concatenate([targets, drawn[""]]))
