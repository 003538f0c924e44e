"""Click windows advanced for many devices at once equal the one-click-at-a-time loop."""

from __future__ import annotations

import numpy as np
from dcrec.state.click_history import advance, occurrence


def test_occurrence_counts_earlier_equal_keys():
    assert occurrence(np.array([3, 1, 3, 3, 1, 7])).tolist() == [0, 0, 1, 2, 1, 0]
    assert occurrence(np.array([], dtype=np.int64)).tolist() == []


def _reference(seq, length, rows, items):
    """One click at a time, in stream order."""
    window = seq.shape[1]
    histories = [list(seq[r, : length[r]]) for r in range(len(seq))]
    before = []
    for r, item in zip(rows, items, strict=True):
        before.append(list(histories[r][-window:]))
        histories[r].append(item)
    return before, [h[-window:] for h in histories]


def test_advance_matches_the_sequential_loop():
    rng = np.random.default_rng(0)
    window = 4
    for _ in range(50):
        n_rows = int(rng.integers(1, 6))
        length = rng.integers(0, window + 1, size=n_rows).astype(np.int32)
        seq = np.zeros((n_rows, window), dtype=np.int32)
        for r in range(n_rows):
            seq[r, : length[r]] = rng.integers(1, 100, size=length[r])
        rows = rng.integers(0, n_rows, size=int(rng.integers(0, 12)))
        items = rng.integers(1, 100, size=len(rows)).astype(np.int32)

        got = advance(seq, length, rows, items)
        before, after = _reference(seq, length, rows, items)

        for k, history in enumerate(before):
            assert got.lengths[k] == len(history)
            assert got.windows[k, : len(history)].tolist() == history
            assert not got.windows[k, len(history):].any()
        for r, history in enumerate(after):
            assert got.length[r] == len(history)
            assert got.seq[r, : len(history)].tolist() == history
