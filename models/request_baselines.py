"""Request baselines IntellectReq is compared with (Lv et al., WWW 2024, §4.1.3): rules
that decide when a device asks for new parameters without a learnt mis-recommendation
score.

``drift`` — a two-sample drift test on the click-embedding stream, anchored where the
device's parameters were generated. ADWIN (Bifet & Gavaldà, 2007) cuts a window into an
older part W₀ and a newer part W₁ and signals drift when their means differ by more than
ε_cut ∝ √(1/(2m) · ln(4/δ′)), m the harmonic mean of |W₀| and |W₁|. Here the cut is the
request itself: W₀ the clicks the parameters were generated from, W₁ the clicks since,
and the statistic is ADWIN's normalised gap

    D = ‖μ₁ − μ₀‖ · √(n₀ n₁ / (n₀ + n₁))

over item embeddings (μ the mean embedding, n the number of clicks). A fixed window
needs no per-device bucket lists, so a device's state stays fixed-size binary; the
cloud sets the cut level from the request budget (the device asks when D is high), in
place of ADWIN's δ. A device holding no parameters compares against the origin with
n₀ → ∞: D = ‖μ₁‖ √n₁.

>>> import numpy as np
>>> clicks = np.array([[[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]]])
>>> mean_of_last(clicks, np.array([4]), np.array([2]))      # the last two clicks
array([[-1., -1.]])
>>> float(window_drift(np.ones((1, 2)), np.array([4]), np.ones((1, 2)), np.array([4]))[0])
0.0
>>> round(float(window_drift(-np.ones((1, 2)), np.array([4]), np.ones((1, 2)),
...                          np.array([4]))[0]), 6)
4.0
"""

from __future__ import annotations

import numpy as np


def mean_of_last(embedded: np.ndarray, lengths: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Mean of the ``last`` entries before ``lengths`` of left-aligned rows
    ``embedded [N, L, d]`` (0 where ``last`` is 0)."""
    position = np.arange(embedded.shape[1])[None]
    mask = (position < lengths[:, None]) & (position >= (lengths - last)[:, None])
    total = (embedded * mask[..., None]).sum(1)
    return total / np.maximum(mask.sum(1), 1)[:, None]


def window_drift(recent: np.ndarray, n_recent: np.ndarray, anchor: np.ndarray,
                 n_anchor: np.ndarray) -> np.ndarray:
    """D for each row: ``recent [N, d]`` the mean embedding of the ``n_recent`` clicks
    since the anchor, ``anchor [N, d]`` that of the anchor's ``n_anchor`` clicks (0: no
    anchor)."""
    mu1 = recent
    n1 = n_recent.astype(np.float64)
    n0 = n_anchor.astype(np.float64)
    weight = np.where(n0 > 0, np.sqrt(n0 * n1 / np.maximum(n0 + n1, 1.0)), np.sqrt(n1))
    return np.linalg.norm(mu1 - anchor, axis=1) * weight
