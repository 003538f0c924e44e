"""Each device's (or the cloud's per-user) window of its most recent clicks.

The window is a left-aligned ``[L]`` int32 row of shifted item ids (0 = empty), oldest
first, plus its length. :func:`advance` appends a batch of new clicks for many users
at once and returns, for every new click, the window *before* it — what a model must
see to predict that click — so prediction always precedes the update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Advanced:
    """Result of :func:`advance`: per new click its prior window, and the new rows."""

    windows: np.ndarray   # [n_clicks, L] int32, left-aligned history before each click
    lengths: np.ndarray   # [n_clicks] int32
    seq: np.ndarray       # [B, L] int32, the rows after all new clicks
    length: np.ndarray    # [B] int32


def occurrence(keys: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same key (0, 1, 2, …)."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.r_[0, np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    result = np.empty(len(keys), dtype=np.int64)
    result[order] = np.arange(len(keys)) - run_start
    return result


def neighbours(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For entries grouped by ``rows`` in stream order: each entry's previous entry of
    the same row (-1 for the first), and the index of each row's last entry."""
    order = np.argsort(rows, kind="stable")
    same = rows[order][1:] == rows[order][:-1]
    previous = np.full(len(rows), -1, np.int64)
    previous[order[1:][same]] = order[:-1][same]
    last = order[np.r_[~same, True]] if len(rows) else order
    return previous, last


def advance(seq: np.ndarray, length: np.ndarray, rows: np.ndarray,
            items: np.ndarray) -> Advanced:
    """Append ``items`` (shifted ids, in stream order) to the windows of ``rows``.

    ``seq``/``length`` are the ``B`` current windows; ``rows[k]`` says which of them the
    k-th new click belongs to. Per-row order is the order of appearance.
    """
    window = seq.shape[1]
    rank = occurrence(rows)
    new_counts = np.bincount(rows, minlength=len(seq))
    total = length + new_counts
    full = np.zeros((len(seq), window + (int(new_counts.max()) if len(rows) else 0)),
                    dtype=np.int32)
    full[:, :window] = seq
    full[rows, length[rows] + rank] = items
    # window before click k of row r: positions [max(0, end - L), end), end = len_r + rank_k
    end = length[rows] + rank
    start = np.maximum(end - window, 0)
    offsets = np.arange(window)
    index = start[:, None] + offsets[None, :]
    valid = index < end[:, None]
    windows = np.where(valid, full[rows[:, None], np.minimum(index, full.shape[1] - 1)], 0)
    new_start = np.maximum(total - window, 0)
    new_index = new_start[:, None] + offsets[None, :]
    new_valid = new_index < total[:, None]
    new_seq = np.where(new_valid,
                       full[np.arange(len(seq))[:, None], np.minimum(new_index, full.shape[1] - 1)],
                       0)
    return Advanced(windows.astype(np.int32), (end - start).astype(np.int32),
                    new_seq.astype(np.int32), np.minimum(total, window).astype(np.int32))


def earlier_counts(rows: np.ndarray, ts: np.ndarray, query_rows: np.ndarray,
                   query_ts: np.ndarray) -> np.ndarray:
    """For each query ``(row, time)``, how many of the entries ``(rows, ts)`` have that
    row and a strictly earlier time (e.g. the exposures of a device's earlier slates
    before each of its clicks; a slate's events share one timestamp)."""
    span = np.int64(max(ts.max(initial=0), query_ts.max(initial=0))) + 1
    keys = np.sort(rows.astype(np.int64) * span + ts)
    query = query_rows.astype(np.int64) * span
    return (np.searchsorted(keys, query + query_ts, side="left")
            - np.searchsorted(keys, query, side="left"))


def tail(windows: np.ndarray, lengths: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``size`` clicks of left-aligned ``windows`` (still left-aligned)."""
    kept = np.minimum(lengths, size)
    index = (lengths - kept)[:, None] + np.arange(size)[None, :]
    valid = np.arange(size)[None, :] < kept[:, None]
    rows = np.arange(len(windows))[:, None]
    return (np.where(valid, windows[rows, np.minimum(index, windows.shape[1] - 1)], 0)
            .astype(windows.dtype), kept.astype(lengths.dtype))
