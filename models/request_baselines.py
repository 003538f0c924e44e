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

``lof`` and ``ocsvm`` — novelty of the newest click among the device's click window
(the authors' LOF and OC-SVM baselines, §4.1.3, fit one detector per device on its
window and ask when the newest click is an outlier). dcrec keeps their continuous
scores, so the cloud can set the cut from the budget as for every other agent; low
score = ask:

- LOF (Breunig et al., 2000) with k neighbours, N_k(p) the k nearest clicks of p in the
  window, k-dist(o) the distance to o's k-th nearest:
  reach_k(p, o) = max(k-dist(o), d(p, o)),
  lrd(p) = 1 / (mean_{o ∈ N_k(p)} reach_k(p, o) + 1e-10),
  LOF(p) = mean_{o ∈ N_k(p)} lrd(o) / lrd(p); the score is −LOF(newest).
- OC-SVM (Schölkopf et al., 2001; Tax, 2002): the ν one-class SVM with an RBF kernel
  (γ = 1/d) fitted on the window; the score is its decision value at the newest click,
  Σᵢ αᵢ K(xᵢ, x) − ρ (negative outside the learnt support).

>>> flock = np.array([[[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [3.0, 3.0]]])
>>> bool(newest_click_lof(flock, np.array([5]))[0] < -5)      # far from its window
True
>>> bool(newest_click_lof(flock, np.array([4]))[0] > -1.5)    # one of the flock
True
>>> bool(newest_click_ocsvm(flock, np.array([5]))[0] < newest_click_ocsvm(flock,
...                                                                    np.array([4]))[0])
True
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


def drift_since(now: np.ndarray, now_len: np.ndarray, since: np.ndarray,
                then: np.ndarray, then_len: np.ndarray) -> np.ndarray:
    """D of the ``since`` newest clicks of each left-aligned window ``now [N, L, d]``
    (``now_len`` clicks; all of them when ``since`` is more) against the whole of the
    window ``then [N, L′, d]`` its parameters came from (``then_len`` clicks; 0: the
    generic parameters, compared against the origin).

    >>> now = np.array([[[1.0, 0.0], [3.0, 0.0]]])
    >>> then = np.array([[[1.0, 0.0], [0.0, 0.0]]])
    >>> float(drift_since(now, np.array([2]), np.array([1]), then, np.array([1]))[0])
    1.4142135623730951
    """
    recent = np.minimum(since, now_len)
    return window_drift(mean_of_last(now, now_len, recent), recent,
                        mean_of_last(then, then_len, then_len), then_len)


LOF_NEIGHBOURS = 2      # the authors' n_neighbors
OCSVM_NU = 0.5          # scikit-learn's default, as the authors used it


def newest_click_lof(embedded: np.ndarray, lengths: np.ndarray,
                     k: int = LOF_NEIGHBOURS) -> np.ndarray:
    """−LOF of the newest click (position ``lengths − 1``) of each left-aligned window
    ``embedded [N, L, d]`` among that window's clicks, k = min(``k``, length − 1)
    neighbours as scikit-learn takes them (ties to the earlier click); −1 (an inlier)
    for a window of one click. Each row is computed on its own (batch invariant)."""
    scores = np.full(len(embedded), -1.0)
    neighbours = np.minimum(k, lengths - 1)
    for k_row in np.unique(neighbours[neighbours > 0]):
        rows = np.flatnonzero(neighbours == k_row)
        for chunk in np.array_split(rows, max(1, len(rows) // 64)):
            scores[chunk] = -_lof_of_newest(embedded[chunk].astype(np.float64),
                                            lengths[chunk], int(k_row))
    return scores


def _lof_of_newest(x: np.ndarray, lengths: np.ndarray, k: int) -> np.ndarray:
    """LOF of each window's newest click. It reads the distance rows of the newest
    click, of its k neighbours and of theirs (1 + k + k² of the window's L rows), each
    computed as the whole L × L matrix would hold it."""
    n, width = x.shape[:2]
    row = np.arange(n)
    valid = np.arange(width)[None] < lengths[:, None]                  # [n, L]

    def neighbours(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest clicks of ``points [n, m]`` and their distances ``[n, m, k]``."""
        m = points.shape[1]
        distance = np.sqrt(((x[row[:, None], points][:, :, None, :]
                             - x[:, None, :, :]) ** 2).sum(-1))       # [n, m, L]
        distance[~np.broadcast_to(valid[:, None, :], distance.shape)] = np.inf
        distance[row[:, None], np.arange(m)[None], points] = np.inf    # not its own
        nearest = np.argsort(distance, axis=-1, kind="stable")[..., :k]
        return nearest, np.take_along_axis(distance, nearest, -1)

    near, near_distance = neighbours((lengths - 1)[:, None])           # the newest click
    near, near_distance = near[:, 0], near_distance[:, 0]              # [n, k]
    second, second_distance = neighbours(near)                         # [n, k, k]
    _, third_distance = neighbours(second.reshape(n, k * k))           # [n, k·k, k]
    k_distance_near = second_distance[..., -1]                         # [n, k]
    k_distance_second = third_distance[..., -1].reshape(n, k, k)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lrd_newest = 1.0 / (np.maximum(k_distance_near, near_distance).mean(-1) + 1e-10)
        lrd_near = 1.0 / (np.maximum(k_distance_second, second_distance).mean(-1) + 1e-10)
        return lrd_near.mean(-1) / lrd_newest


ONE_CLASS = 2            # libsvm's svm_type of the ν one-class SVM


def newest_click_ocsvm(embedded: np.ndarray, lengths: np.ndarray,
                       nu: float = OCSVM_NU) -> np.ndarray:
    """The decision value at the newest click of each window ``embedded [N, L, d]`` of a
    one-class SVM (RBF, γ = 1/d, ``nu``) fitted on that window's clicks, one fit per
    device and click, as on the device (0 for one click).

    scikit-learn's libsvm, called with the arguments ``OneClassSVM(kernel="rbf",
    gamma=γ, nu=ν).fit`` and ``decision_function`` pass it, without the estimator's
    per-call checks, which on a 50-click window cost 10× the fit itself; a test holds
    the values to ``OneClassSVM``'s, bit for bit."""
    from sklearn.svm import _libsvm as libsvm

    libsvm.set_verbosity_wrap(0)
    gamma = 1.0 / embedded.shape[2]
    kernel = {"kernel": "rbf", "degree": 3, "gamma": gamma, "coef0": 0.0, "cache_size": 200}
    scores = np.zeros(len(embedded))
    for row, length in enumerate(lengths):
        if length < 2:
            continue
        window = np.ascontiguousarray(embedded[row, :length], dtype=np.float64)
        support, vectors, n_support, dual_coef, intercept, prob_a, prob_b, *_ = libsvm.fit(
            window, np.ones(length), svm_type=ONE_CLASS, sample_weight=np.empty(0),
            class_weight=np.empty(0), C=0.0, nu=nu, probability=0, shrinking=1, tol=1e-3,
            epsilon=0.0, max_iter=-1, random_seed=0, **kernel)
        scores[row] = libsvm.decision_function(
            window[-1:], support, vectors, n_support, dual_coef, intercept, prob_a, prob_b,
            svm_type=ONE_CLASS, **kernel).ravel()[0]
    return scores


# the novelty scores of the newest click, by preset
NOVELTY = {"lof": newest_click_lof, "ocsvm": newest_click_ocsvm}
