"""``river-mf``: river's online biased matrix factorisation, learning per event.

The library baseline a user would reach for: one global ``river.reco.BiasedMF``
(16 factors, latent factors by SGD 0.05, biases by river's default optimiser), for
every click first asked to score the candidates, then taught the click (y = 1) and one
uniformly sampled item (y = 0). It keeps no device state: the user factors live inside
the river model. This is the configuration of the online anchor in PEERS.md (with the
biases also on SGD 0.05 HR@10 drops from 0.49 to 0.44 on ML-100K).
"""

from __future__ import annotations

import numpy as np
from dcrec.state.device_state import StateRows, StateSpec
from dcrec.streams.processor import DeviceBatch, Outputs
from dcrec.streams.schema import CLICK
from river import optim, reco


def biased_mf(seed: int, n_factors: int = 16, lr: float = 0.05) -> reco.BiasedMF:
    """The river model of the ``river-mf`` baseline, online and offline alike."""
    return reco.BiasedMF(n_factors=n_factors, latent_optimizer=optim.SGD(lr), seed=seed)


class RiverMFProcessor:
    state_spec: StateSpec = {}  # noqa: RUF012 - the (empty) layout is a class constant

    def __init__(self, n_items: int, seed: int, n_factors: int = 16, lr: float = 0.05) -> None:
        self.model = biased_mf(seed, n_factors, lr)
        self.n_items = n_items
        self.rng = np.random.default_rng(seed)

    def __call__(self, state: StateRows, batch: DeviceBatch) -> tuple[StateRows, Outputs]:
        events = batch.events
        scores = np.empty(batch.candidates.shape, dtype=np.float32)
        evaluated_rank = np.cumsum(batch.evaluate) - 1
        for k in np.flatnonzero(events.event == CLICK):
            user, item = int(events.user[k]), int(events.item[k])
            if batch.evaluate[k]:
                row = scores[evaluated_rank[k]]
                for j, candidate in enumerate(batch.candidates[evaluated_rank[k]]):
                    row[j] = self.model.predict_one(user, int(candidate))
            self.model.learn_one(user, item, 1.0)
            self.model.learn_one(user, int(self.rng.integers(self.n_items)), 0.0)
        return state, Outputs(scores=scores)


class PopularityProcessor:
    """``popularity``: rank candidates by how often they were clicked so far."""

    state_spec: StateSpec = {}  # noqa: RUF012

    def __init__(self, n_items: int) -> None:
        self.counts = np.zeros(n_items, dtype=np.int64)

    def __call__(self, state: StateRows, batch: DeviceBatch) -> tuple[StateRows, Outputs]:
        events = batch.events
        clicks = np.flatnonzero(events.event == CLICK)
        # a click is scored on the counts before it: add the clicks that precede it in
        # the batch to the counts at the batch start
        evaluated = clicks[batch.evaluate[clicks]]
        scores = self.counts[batch.candidates].astype(np.float32)
        # plus the clicks on the same item earlier in this batch
        stride = len(events) + 1
        keys = np.sort(events.item[clicks].astype(np.int64) * stride + clicks)
        base = batch.candidates.astype(np.int64) * stride
        scores += (np.searchsorted(keys, base + evaluated[:, None])
                   - np.searchsorted(keys, base)).astype(np.float32)
        np.add.at(self.counts, events.item[clicks], 1)
        return state, Outputs(scores=scores)
