"""MC²-SF on the stream (Algorithm 1): the device's negative memory, F2S uploads, the
slow cloud DIN, S2F hints.

Device (:class:`MC2SFDeviceProcessor`), per batch of a device's events in stream order:

- every exposure advances the negative memory r̂₂ = GRU_n(H_n^F) by one GRU step
  (Eq. 3) — clicks never touch it; with S2F a second GRU_n state r̃_n starts from
  z_n of the latest hint (Eq. 7) and advances on the same exposures;
- every click is scored *before* the device appends it to its click window, with the
  negative state as of the exposures of earlier slates (strictly earlier timestamps:
  the click's own slate is the recommendation being made, so it is not an input);
- every ``upload_interval`` of event time the device uploads r̂₂ (``Upload`` of kind
  ``negative_memory``, float16) — Algorithm 1's "if time > threshold: upload r̂₂";
- a hint that arrived (``on_hint``) is applied when the device next has events; a
  device without one serves with zero initial states and r_t = 0.

Cloud (:class:`MC2SFCloudJob`): keeps each user's click window, exposure window, last
uploaded r̂₂ and last hint; every cloud interval it continues training (warm start)
the slow component on the clicks since the last job with the uploaded r̂₂ (Eq. 5–6)
and/or the fast component (Eq. 3–4, 7–8), releases the model the devices serve, and
sends each device active since the last job its hint ``(r_n, r_t)`` (Eq. 7).
"""

from __future__ import annotations

import numpy as np
import torch
from dcrec.models.mc2sf import (
    FastComponent,
    SlowComponent,
    as_loss,
    compute_hints,
    fast_score,
    slow_score,
)
from dcrec.models.training import (
    ROW_FLOOR,
    InputTrainer,
    TrainingConfig,
    pad_rows,
    score_inputs,
)
from dcrec.state import click_history
from dcrec.state.device_state import StateField, StateRows, StateSpec
from dcrec.state.registry import ModelRegistry, ModelVersion, download
from dcrec.streams.event_batch import EventBatch
from dcrec.streams.processor import DeviceBatch, Outputs
from dcrec.streams.schema import CLICK, EXPOSURE, Hint, Release, Upload, encode
from dcrec.streams.state_uploads import upload_due, upload_payload

FAST_MODEL = "mc2sf-fast-component"
SLOW_MODEL = "mc2sf-slow-component"


def hint_event(device: int, ts: int, payload: np.ndarray) -> Hint:
    """The S2F event for one device: ``payload`` is ``r_n ⊕ r_t`` ``[2d]``."""
    d = len(payload) // 2
    return Hint(device=device, ts=ts, r_n=payload[:d].astype("<f2").tobytes(),
                r_t=payload[d:].astype("<f2").tobytes())


def hint_payload(hint: Hint) -> np.ndarray:
    """``r_n ⊕ r_t`` (float32) of a hint event."""
    return np.concatenate([np.frombuffer(hint.r_n, "<f2"),
                           np.frombuffer(hint.r_t, "<f2")]).astype(np.float32)


def device_spec(max_len: int, dim: int, s2f: bool) -> StateSpec:
    """A device's state: click window, negative memory, (S2F) hint state, upload clock."""
    spec = {
        "seq": StateField("int32", (max_len,)),
        "length": StateField("int32"),
        "negative_memory": StateField("float32", (dim,)),
        "last_upload": StateField("int64"),
        "version": StateField("int32"),
    }
    if s2f:
        spec["negative_state"] = StateField("float32", (dim,))  # r̃_n, from z_n of the hint
        spec["hint"] = StateField("float16", (2 * dim,))        # r_n ⊕ r_t; zeros = none yet
    return spec


# what one more GRU step costs, in rows of a step (torch 2.13 CPU, d = 32: a step over R
# rows takes about 18 + 0.84·R µs at one thread, 40 + 0.7·R at two)
STEP_COST_IN_ROWS = 32.0


def sequence_groups(lengths: np.ndarray, copies: int = 1) -> np.ndarray:
    """Group labels for sequences of ``lengths`` run as one padded GRU call per group,
    each call as long as its longest sequence and over ``copies`` stacked copies of its
    rows, each copy padded to a multiple of ``ROW_FLOOR`` rows. The groups split the
    sequences sorted by length where the estimated time, Σ width·(STEP_COST_IN_ROWS +
    copies·padded rows), is least (dynamic programming over the distinct lengths). The
    grouping decides the time only: a row's outputs have the same bits in any call whose
    row count is a multiple of ``ROW_FLOOR`` (a test).

    >>> sequence_groups(np.array([1, 1, 2, 500, 3])).tolist()   # one call: all fit in 16 rows
    [0, 0, 0, 0, 0]
    """
    values, inverse, counts = np.unique(lengths, return_inverse=True, return_counts=True)
    values, counts = values[::-1], counts[::-1]          # longest first
    rows = np.concatenate([[0], np.cumsum(counts)])
    best = np.zeros(len(values) + 1)
    start = np.zeros(len(values) + 1, np.int64)
    for j in range(1, len(values) + 1):   # best[j]: the j longest lengths grouped
        i = np.arange(j)
        cost = best[:j] + values[i] * (
            STEP_COST_IN_ROWS + copies * -(-(rows[j] - rows[i]) // ROW_FLOOR) * ROW_FLOOR)
        start[j] = int(np.argmin(cost))
        best[j] = cost[start[j]]
    label = np.empty(len(values), np.int64)
    j, group = len(values), 0
    while j > 0:
        label[start[j]:j] = group
        j, group = start[j], group + 1
    return label[::-1][inverse]


def _lookup(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions of ``wanted`` in ``keys`` (every wanted key is present)."""
    order = np.argsort(keys, kind="stable")
    return order[np.searchsorted(keys[order], wanted)]


class MC2SFDeviceProcessor:
    """The device side of an MC²-SF preset; serves the fast component (``mc2sf``,
    ``mc2sf-fast``) or the F2S slow component (``mc2sf-f2s``)."""

    def __init__(self, model: FastComponent | SlowComponent, model_name: str, max_len: int,
                 upload_interval: int | None) -> None:
        self.model = model.eval()
        self.model_name = model_name
        self.serves_fast = isinstance(model, FastComponent)
        self.s2f = self.serves_fast and model.s2f
        self.dim = model.item_embedding.embedding_dim
        self.state_spec = device_spec(max_len, self.dim, self.s2f)
        self.upload_interval = upload_interval
        self.version: ModelVersion | None = None
        self.inbox: dict[int, np.ndarray] = {}  # hints not yet seen by their device

    def on_release(self, version: ModelVersion, registry: ModelRegistry) -> None:
        if version.model == self.model_name:
            self.model.load_state_dict(registry.load(version))
            self.model.eval()
            self.version = version

    def on_hint(self, hint: Hint) -> None:
        self.inbox[hint.device] = hint_payload(hint)

    @property
    def _gru_n(self) -> tuple[torch.nn.GRU, torch.nn.Embedding]:
        return self.model.gru_n, self.model.item_embedding

    def _apply_hints(self, state: StateRows, devices: np.ndarray) -> None:
        """Hints delivered since a device's last batch: store them, restart r̃_n at z_n."""
        fresh = [k for k, device in enumerate(devices.tolist()) if device in self.inbox]
        if not fresh:
            return
        hints = np.stack([self.inbox.pop(int(devices[k])) for k in fresh])
        state["hint"][fresh] = hints
        _, z_n, _ = self.model.initial_states(torch.from_numpy(
            pad_rows(state["hint"][fresh].astype(np.float32))))
        state["negative_state"][fresh] = z_n.numpy()[:len(fresh)]

    def _advance_negative(self, states: list[np.ndarray], rows: np.ndarray,
                          items: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Run GRU_n from each row's states over its exposures in order (Eq. 3's
        r̂₂ = GRU_n(H_n^F), one step per exposure); returns the new states and, per
        state, the state after each exposure ``[n_exposures, d]``.

        Rows are grouped by exposure count (:func:`sequence_groups`), each group one
        padded GRU call; the states share their exposures, so a group's states run in
        that call, the group's rows stacked per state."""
        gru, embedding = self._gru_n
        final = [s.astype(np.float32) for s in states]
        after = [np.empty((len(rows), self.dim), np.float32) for _ in states]
        if len(rows) == 0:
            return final, after
        rank = click_history.occurrence(rows)
        counts = np.bincount(rows, minlength=len(states[0]))
        active = np.flatnonzero(counts)
        group = sequence_groups(counts[active], len(final))
        for g in np.unique(group):
            members = active[group == g]
            width = int(counts[members].max())
            slot = np.full(len(states[0]), -1, np.int64)
            slot[members] = np.arange(len(members))
            mine = slot[rows] >= 0
            padded = np.zeros((len(members), width), np.int64)
            padded[slot[rows[mine]], rank[mine]] = items[mine].astype(np.int64) + 1
            x = embedding(torch.from_numpy(pad_rows(padded)))
            lengths = counts[members]
            h0 = np.concatenate([pad_rows(f[members]) for f in final])[None]
            # [S·G', width, d]: each state's rows, the state after each exposure
            outputs, _ = gru(x.repeat(len(final), 1, 1), torch.from_numpy(h0))
            for out, f, a in zip(outputs.numpy().reshape(len(final), len(x), width, -1),
                                 final, after, strict=True):
                a[mine] = out[slot[rows[mine]], rank[mine]]
                f[members] = out[np.arange(len(members)), lengths - 1]
        return final, after

    @torch.inference_mode()
    def __call__(self, state: StateRows, batch: DeviceBatch) -> tuple[StateRows, Outputs]:
        events = batch.events
        state = {name: column.copy() for name, column in state.items()}
        if self.s2f:
            self._apply_hints(state, batch.devices)
        exposures = events.event == EXPOSURE
        clicks = events.event == CLICK
        names = ["negative_memory", "negative_state"] if self.s2f else ["negative_memory"]
        initial = [state[n] for n in names]
        final, after = self._advance_negative(initial, batch.row[exposures],
                                              events.item[exposures])

        # the negative states each click is scored with: after the exposures of earlier
        # slates (not the click's own slate, which did not exist when it was ranked)
        click_rows = batch.row[clicks]
        exposure_rows = batch.row[exposures]
        seen = click_history.earlier_counts(exposure_rows, events.ts[exposures], click_rows,
                                            events.ts[clicks])
        exposure_rank = click_history.occurrence(exposure_rows)
        span = int(exposure_rank.max(initial=0)) + 2
        has_prior = seen > 0
        at_click = [init[click_rows].astype(np.float32) for init in initial]
        if has_prior.any():
            index = _lookup(exposure_rows * span + exposure_rank,
                            click_rows[has_prior] * span + seen[has_prior] - 1)
            for value, a in zip(at_click, after, strict=True):
                value[has_prior] = a[index]

        advanced = click_history.advance(state["seq"], state["length"], click_rows,
                                         events.item[clicks].astype(np.int32) + 1)
        evaluated = batch.evaluate[clicks]
        scores = self._score(advanced, evaluated, at_click, state, click_rows,
                             batch.candidates + 1)

        state["seq"], state["length"] = advanced.seq, advanced.length
        for n, value in zip(names, final, strict=True):
            state[n] = value
        out = Outputs(scores=scores)
        out.bytes_down = download(state["version"], self.version)
        if self.upload_interval is not None:
            upload_due(state, batch, self.upload_interval, "negative_memory",
                       "negative_memory", out)
        return state, out

    def _score(self, advanced: click_history.Advanced, evaluated: np.ndarray,
               at_click: list[np.ndarray], state: StateRows, click_rows: np.ndarray,
               candidates: np.ndarray) -> np.ndarray:
        inputs = {"history": advanced.windows[evaluated], "lengths": advanced.lengths[evaluated],
                  "negative": at_click[-1][evaluated]}
        if self.s2f:
            inputs["hint"] = state["hint"][click_rows[evaluated]].astype(np.float32)
        model = self.model

        def score(b: dict[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
            if not self.serves_fast:
                return model.score(b["history"], b["negative"], c)
            z_p, _, r_t = model.initial_states(b.get("hint"))
            r_p = model.positive_interest(b["history"], b["lengths"], z_p)
            return model.score_states(r_p, b["negative"], r_t, c)

        return score_inputs(model, score, inputs, candidates)

class MC2SFCloudJob:
    """The cloud side: incremental training of the slow and/or fast component on what
    arrived since the last job, releases, and S2F hints."""

    def __init__(self, n_users: int, slow: SlowComponent | None, fast: FastComponent | None,
                 serve: str, training: TrainingConfig, seed: int, registry: ModelRegistry,
                 max_len: int, device_len: int = 20, exposure_len: int = 20,
                 send_hints: bool = False) -> None:
        n_items = (slow or fast).n_items  # type: ignore[union-attr]
        self.slow_trainer = (InputTrainer(slow, as_loss(slow_score(slow)), n_items, training,
                                          seed) if slow is not None else None)
        self.fast_trainer = (InputTrainer(fast, as_loss(fast_score(fast)), n_items, training,
                                          seed + 1)
                             if fast is not None else None)
        self.served = FAST_MODEL if serve == "fast" else SLOW_MODEL
        self.registry = registry
        self.send_hints = send_hints
        self.device_len = device_len  # l^F < l^S (§3): the fast component's click window
        dim = (slow or fast).item_embedding.embedding_dim  # type: ignore[union-attr]
        self.seq = np.zeros((n_users, max_len), np.int32)
        self.length = np.zeros(n_users, np.int32)
        self.exposure_seq = np.zeros((n_users, exposure_len), np.int32)
        self.exposure_length = np.zeros(n_users, np.int32)
        self.uploaded = np.zeros((n_users, dim), np.float32)   # last r̂₂ per device
        self.hints = np.zeros((n_users, 2 * dim), np.float32)  # last hint per device
        self._pending: list[dict[str, np.ndarray]] = []
        self.jobs = 0

    @property
    def served_model(self) -> torch.nn.Module:
        trainer = self.fast_trainer if self.served == FAST_MODEL else self.slow_trainer
        assert trainer is not None
        return trainer.model

    def initial_release(self) -> ModelVersion:
        """Version 1: the untrained served model, so devices can serve before any job."""
        return self.registry.publish(self.served, self.served_model.state_dict())

    def on_upload(self, upload: Upload) -> None:
        """F2S: keep the device's latest negative memory r̂₂."""
        if upload.kind == "negative_memory":
            self.uploaded[upload.device] = upload_payload(upload)

    def observe(self, events: EventBatch) -> None:
        if len(events) == 0:
            return
        devices, row = np.unique(events.user, return_inverse=True)
        clicks = events.event == CLICK
        exposures = ~clicks
        ex = click_history.advance(self.exposure_seq[devices], self.exposure_length[devices],
                                   row[exposures], events.item[exposures].astype(np.int32) + 1)
        # each click's exposure window (earlier slates): the window before the first
        # exposure at or after its time, or the final one
        click_rows = row[clicks]
        seen = click_history.earlier_counts(row[exposures], events.ts[exposures], click_rows,
                                            events.ts[clicks])
        counts = np.bincount(row[exposures], minlength=len(devices))
        exposure_windows = ex.seq[click_rows].copy()
        exposure_lengths = ex.length[click_rows].copy()
        inside = seen < counts[click_rows]
        if inside.any():
            rank = click_history.occurrence(row[exposures])
            span = int(rank.max(initial=0)) + 2
            index = _lookup(row[exposures] * span + rank,
                            click_rows[inside] * span + seen[inside])
            exposure_windows[inside] = ex.windows[index]
            exposure_lengths[inside] = ex.lengths[index]
        adv = click_history.advance(self.seq[devices], self.length[devices], click_rows,
                                    events.item[clicks].astype(np.int32) + 1)
        users = events.user[clicks]
        keep = adv.lengths > 0
        self._pending.append({
            "history": adv.windows[keep], "lengths": adv.lengths[keep],
            "exposures": exposure_windows[keep], "exposure_lengths": exposure_lengths[keep],
            "r_hat2": self.uploaded[users[keep]], "hint": self.hints[users[keep]],
            "target": events.item[clicks][keep].astype(np.int64) + 1,
            "users": users[keep],
        })
        self.seq[devices], self.length[devices] = adv.seq, adv.length
        self.exposure_seq[devices], self.exposure_length[devices] = ex.seq, ex.length

    def run(self, now: int) -> Outputs | None:
        if not self._pending:
            return None
        data = {k: np.concatenate([p[k] for p in self._pending]) for k in self._pending[0]}
        self._pending.clear()
        if len(data["target"]) == 0:
            return None
        if self.slow_trainer is not None:  # Algorithm 1, Slow/Training
            self.slow_trainer.fit({"history": data["history"], "r_hat2": data["r_hat2"]},
                                  data["target"])
        if self.fast_trainer is not None:  # the fast component, trained where the logs are
            history, lengths = click_history.tail(data["history"], data["lengths"],
                                                  self.device_len)
            inputs = {"history": history, "lengths": lengths, "exposures": data["exposures"],
                      "exposure_lengths": data["exposure_lengths"]}
            if self.fast_trainer.model.s2f:
                inputs["hint"] = data["hint"]
            self.fast_trainer.fit(inputs, data["target"])
        self.jobs += 1
        version = self.registry.publish(self.served, self.served_model.state_dict())
        out = Outputs(scores=np.zeros((0, 0), np.float32), emitted=[
            Release(model=self.served, version=version.version, ts=now,
                    checksum=version.checksum)])
        if self.send_hints:
            self._send_hints(np.unique(data["users"]), now, out)
        return out

    def _send_hints(self, users: np.ndarray, now: int, out: Outputs) -> None:
        """Algorithm 1, Slow/Inference: r_n, r_t for every device active since the last
        job, from its cloud click window and last uploaded r̂₂."""
        assert self.slow_trainer is not None
        payload = compute_hints(self.slow_trainer.model, self.seq[users], self.length[users],
                                r_hat2=self.uploaded[users])
        self.hints[users] = payload
        for user, row in zip(users.tolist(), payload, strict=True):
            event = hint_event(user, now, row)
            out.emitted.append(event)
            out.bytes_down += len(encode(event))


MC2SF_VARIANTS = ("mc2sf", "mc2sf-f2s", "mc2sf-fast")


MC2SFParts = tuple[MC2SFDeviceProcessor, "MC2SFCloudJob", ModelRegistry]


def build_mc2sf(variant: str, n_users: int, n_items: int, seed: int, max_len: int,
                embedding_dim: int, training: TrainingConfig, upload_interval: int,
                device_len: int = 20) -> MC2SFParts:
    """The device processor, cloud job and registry of an MC²-SF preset:

    - ``mc2sf``: devices serve the fast component with S2F hints and upload r̂₂; the
      cloud trains the F2S slow component and the fast component and sends hints;
    - ``mc2sf-f2s``: devices serve the slow component with their negative memory and
      upload r̂₂, on which the cloud trains it; no hints;
    - ``mc2sf-fast``: devices serve the independent fast component; no uploads, no hints.
    """
    if variant not in MC2SF_VARIANTS:
        raise ValueError(f"unknown MC²-SF variant {variant!r}")
    torch.manual_seed(seed)
    registry = ModelRegistry()
    slow = (SlowComponent(n_items, embedding_dim, f2s=True)
            if variant in ("mc2sf", "mc2sf-f2s") else None)
    fast = (FastComponent(n_items, embedding_dim, s2f=variant == "mc2sf")
            if variant in ("mc2sf", "mc2sf-fast") else None)
    if slow is not None and fast is not None:
        fast.warm_start_from(slow)
    serve = "slow" if variant == "mc2sf-f2s" else "fast"
    cloud = MC2SFCloudJob(n_users, slow, fast, serve, training, seed, registry, max_len,
                          device_len=min(device_len, max_len), send_hints=variant == "mc2sf")
    served = fast if serve == "fast" else slow
    assert served is not None
    device_model = type(served)(n_items, embedding_dim, **(
        {"s2f": served.s2f} if isinstance(served, FastComponent) else {"f2s": True}))
    processor = MC2SFDeviceProcessor(
        device_model, cloud.served, max_len if serve == "slow" else min(device_len, max_len),
        upload_interval if variant != "mc2sf-fast" else None)
    processor.on_release(cloud.initial_release(), registry)
    return processor, cloud, registry
