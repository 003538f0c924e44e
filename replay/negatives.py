"""Sampled evaluation candidates, fixed by seed and event position.

For the interaction at stream position ``p`` the 100 negatives are drawn by a counter
hash (SplitMix64) of ``(seed, p, j)``, so every method and every runtime — however it
cuts the stream into batches — ranks the true item against exactly the same items.
Which items count as "touched" depends on the protocol:

- offline (``loo``, ``mc2sf``): items the user clicked anywhere in the log, as
  RecBole's ``uni100`` does, so peer figures compare;
- prequential (``replay``): items the user clicked *before* the scored event — all a
  streaming system can know. Excluding future clicks as well would remove exactly the
  items the user is about to like, which are more popular than average, and makes
  every method look better (popularity on ML-100K: HR@10 0.518 against 0.465).
- a lazily streamed source (the synthetic world): only the true item.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser, vectorised over uint64."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class NegativeSampler:
    """Candidates ``[N, 1 + n]``: column 0 the true item, then ``n`` negatives (drawn
    with replacement, as uniform sampling does)."""

    def __init__(self, n_items: int, n_negatives: int, seed: int,
                 clicked_keys: np.ndarray | None = None,
                 first_clicked: np.ndarray | None = None) -> None:
        if n_negatives >= n_items:
            raise ValueError(f"{n_negatives} negatives need more than {n_items} items")
        self.n_items = n_items
        self.n_negatives = n_negatives
        self.seed = np.uint64(seed)
        self.clicked_keys = clicked_keys  # sorted user * n_items + item, or None
        # stream position of each key's first click: exclude only clicks before the event
        self.first_clicked = first_clicked

    @classmethod
    def for_log(cls, user: np.ndarray, item: np.ndarray, n_items: int, n_negatives: int,
                seed: int, positions: np.ndarray | None = None) -> NegativeSampler:
        """Exclude the user's clicks in the whole log or, given their stream
        ``positions``, only those before the scored event."""
        keys = user.astype(np.int64) * n_items + item.astype(np.int64)
        unique, first = np.unique(keys, return_index=True)
        if positions is None:
            return cls(n_items, n_negatives, seed, unique)
        return cls(n_items, n_negatives, seed, unique, np.asarray(positions)[first])

    def _excluded(self, positions: np.ndarray, users: np.ndarray, items: np.ndarray,
                  positives: np.ndarray) -> np.ndarray:
        excluded = items == positives[:, None]
        if self.clicked_keys is not None:
            keys = users[:, None].astype(np.int64) * self.n_items + items
            pos = np.searchsorted(self.clicked_keys, keys)
            pos = np.minimum(pos, len(self.clicked_keys) - 1)
            touched = self.clicked_keys[pos] == keys
            if self.first_clicked is not None:
                touched &= self.first_clicked[pos] < positions[:, None]
            excluded |= touched
        return excluded

    def sample(self, positions: np.ndarray, users: np.ndarray, positives: np.ndarray) -> np.ndarray:
        n = len(positions)
        out = np.empty((n, 1 + self.n_negatives), dtype=np.int64)
        out[:, 0] = positives
        if n == 0:
            return out
        filled = np.zeros(n, dtype=np.int64)
        draw = 0
        pending = np.arange(n)
        width = self.n_negatives + 16
        while len(pending):
            counters = (positions[pending].astype(np.uint64)[:, None] * np.uint64(1 << 20)
                        + np.uint64(draw) + np.arange(width, dtype=np.uint64)[None, :])
            hashed = splitmix64(counters ^ splitmix64(np.full(1, self.seed))[0])
            items = (hashed % np.uint64(self.n_items)).astype(np.int64)
            ok = ~self._excluded(positions[pending], users[pending], items,
                                 positives[pending])
            rank = np.cumsum(ok, axis=1)
            need = self.n_negatives - filled[pending]
            take = ok & (rank <= need[:, None])
            r, c = np.nonzero(take)
            rows = pending[r]
            out[rows, filled[rows] + rank[r, c]] = items[r, c]
            filled[pending] += take.sum(axis=1)
            pending = pending[filled[pending] < self.n_negatives]
            draw += width
            if draw > 64 * width:
                raise ValueError("user has clicked almost every item; cannot sample negatives")
        return out
