"""A synthetic world: click/exposure streams with ground-truth interests.

Real logs cannot show some effects the collaborative methods are about: whether a user
*dislikes* what was shown (negative feedback), when their interests *drift*, how rare
users fare next to very active ones, and how bursts of activity load the cloud. The
world generates streams where all of that is known, so an evaluation can check a
method against the truth. Its design was fixed before any method existed and must not
be tuned to favour one; ``WORLD_VERSION`` changes whenever the same config would give
a different stream. See ``docs/world.md``.

>>> world = World(WorldConfig(n_users=50, n_items=60, n_clusters=6, n_events=1_000))
>>> log = world.to_log()
>>> log.n_events, log.n_users, log.n_items
(1000, 50, 60)
>>> sum(len(b) for b in world.batches(300))
1000
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Final

import numpy as np
from dcrec.replay.log import EventBatch, InteractionLog
from dcrec.streams.schema import CLICK, EXPOSURE

WORLD_VERSION: Final = 1
EPOCH: Final = 1_704_067_200  # 2024-01-01T00:00:00Z, the world's first possible second
DAY: Final = 86_400
BLOCK_SLATES: Final = 4096  # slates generated per internal block (part of the stream's definition)
AGE_BUCKETS: Final = ("<18", "18-24", "25-34", "35-44", "45-54", "55+")
REGIONS: Final = ("north", "south", "east", "west", "centre", "coast", "mountains", "islands")
ACTIVITY_LAWS: Final = ("lognormal", "zipf")

# RNG stream keys: every random draw comes from default_rng([seed, KIND, index]).
_ITEMS, _USERS, _DRIFT, _FEATURES, _ACTIVITY, _BLOCK = range(6)


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of a synthetic world (defaults in brackets; see ``docs/world.md``).

    Size and time:
        n_users [2000]: users (devices). n_items [1000]: items. n_clusters [20]: item
        clusters, which are also the item categories. n_events [200_000]: exact number
        of events (clicks + exposures) in the stream; the last slate is truncated.
        slate_size [5]: items shown per slate; every slate yields exactly this many
        events. days [60.0]: simulated time span, starting at 2024-01-01 UTC.
        seed [0]: the one seed; same config gives a bit-identical stream.
    Items:
        dim [16]: latent dimension of item vectors and user tastes.
        item_noise [0.5]: spread of item vectors around their cluster centroid,
            relative to the centroid scale.
        item_pop_sigma [1.5]: lognormal sigma of item popularity (long tail).
        item_bias_weight [0.5]: weight of log popularity in the utility
            (the item's popularity/quality bias).
    Users:
        interest_alpha [0.1]: Dirichlet concentration of interest mixtures (small =
            sparse, a few clusters per user).
        interest_floor [0.05]: epsilon in ``log(theta + eps)``; how clickable clusters
            outside a user's mixture remain.
        interest_weight [1.0]: weight of ``log(theta + eps)`` in the utility.
        taste_weight [0.5]: weight of the user-taste / item-vector dot product.
        dislikes [(1, 2)]: inclusive range of disliked clusters per user.
        dislike_penalty [5.0]: utility subtracted for items of a disliked cluster.
        feature_noise [0.3]: probability that a user feature is drawn uniformly
            instead of from the user's dominant cluster.
    Activity and sessions:
        activity ["lognormal"]: law of user activity weights, "lognormal" or "zipf".
        activity_sigma [1.5]: sigma of the lognormal law.
        zipf_exponent [1.0]: exponent of the Zipf law (weight = rank ** -exponent).
        session_slates [3.0]: mean slates per session (geometric, >= 1).
        session_gap_seconds [30.0]: mean gap between slates of a session (exponential).
        diurnal_amplitude [0.5]: relative amplitude of the daily activity cycle, in [0, 1).
        peak_hour [20.0]: UTC hour of peak activity.
    Drift:
        drift_fraction [0.2]: fraction of users whose interest mixture switches.
        drift_at [(0.5,)]: switch times, as fractions of the time span, increasing in
            (0, 1); a drifting user switches at every one of them.
    Logging policy and choice:
        policy_mix [(0.6, 0.2, 0.2)]: probability that a slot is filled from the user's
            (lagged) interest clusters, by popularity, or uniformly at random.
        policy_lag_days [7.0]: the interest part of the policy sees the user's interest
            mixture as it was this many days earlier (a recommender that lags drift).
        temperature [1.0]: temperature of the multinomial-logit choice.
        no_click_utility [1.5]: utility of the no-click option.
    """

    n_users: int = 2000
    n_items: int = 1000
    n_clusters: int = 20
    n_events: int = 200_000
    slate_size: int = 5
    days: float = 60.0
    seed: int = 0
    dim: int = 16
    item_noise: float = 0.5
    item_pop_sigma: float = 1.5
    item_bias_weight: float = 0.5
    interest_alpha: float = 0.1
    interest_floor: float = 0.05
    interest_weight: float = 1.0
    taste_weight: float = 0.5
    dislikes: tuple[int, int] = (1, 2)
    dislike_penalty: float = 5.0
    feature_noise: float = 0.3
    activity: str = "lognormal"
    activity_sigma: float = 1.5
    zipf_exponent: float = 1.0
    session_slates: float = 3.0
    session_gap_seconds: float = 30.0
    diurnal_amplitude: float = 0.5
    peak_hour: float = 20.0
    drift_fraction: float = 0.2
    drift_at: tuple[float, ...] = (0.5,)
    policy_mix: tuple[float, float, float] = (0.6, 0.2, 0.2)
    policy_lag_days: float = 7.0
    temperature: float = 1.0
    no_click_utility: float = 1.5

    def __post_init__(self) -> None:
        self._check_types()
        self._check_sizes()
        self._check_ranges()

    def _check_types(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{f.name} must be an int, got {value!r}")
            if f.type == "float":
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{f.name} must be a number, got {value!r}")
                if not math.isfinite(value):
                    raise ValueError(f"{f.name} must be finite, got {value!r}")

    def _check_sizes(self) -> None:
        _require(self.n_users >= 1, f"n_users must be >= 1, got {self.n_users}")
        _require(self.slate_size >= 1, f"slate_size must be >= 1, got {self.slate_size}")
        _require(self.n_events >= 1, f"n_events must be >= 1, got {self.n_events}")
        _require(self.dim >= 1, f"dim must be >= 1, got {self.dim}")
        _require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        lo, hi = _int_pair(self.dislikes, "dislikes")
        _require(0 <= lo <= hi,
                 f"dislikes must be (min, max) with 0 <= min <= max, got {self.dislikes}")
        _require(
            self.n_clusters >= hi + 2,
            f"n_clusters must be >= max dislikes + 2 (liked clusters must remain), "
            f"got n_clusters={self.n_clusters}, dislikes={self.dislikes}",
        )
        _require(
            self.n_items >= max(self.n_clusters, self.slate_size),
            f"n_items must be >= n_clusters and >= slate_size, got n_items={self.n_items}",
        )

    def _check_ranges(self) -> None:
        _require(self.days > 0, f"days must be > 0, got {self.days}")
        for name in ("item_noise", "item_pop_sigma", "activity_sigma", "zipf_exponent",
                     "dislike_penalty", "policy_lag_days"):
            _require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("interest_alpha", "interest_floor", "temperature"):
            _require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        _require(0 <= self.feature_noise <= 1,
                 f"feature_noise must be in [0, 1], got {self.feature_noise}")
        _require(self.activity in ACTIVITY_LAWS,
                 f"activity must be one of {ACTIVITY_LAWS}, got {self.activity!r}")
        _require(self.session_slates >= 1,
                 f"session_slates must be >= 1, got {self.session_slates}")
        _require(self.session_gap_seconds >= 0,
                 f"session_gap_seconds must be >= 0, got {self.session_gap_seconds}")
        _require(0 <= self.diurnal_amplitude < 1,
                 f"diurnal_amplitude must be in [0, 1), got {self.diurnal_amplitude}")
        _require(0 <= self.peak_hour < 24, f"peak_hour must be in [0, 24), got {self.peak_hour}")
        _require(0 <= self.drift_fraction <= 1,
                 f"drift_fraction must be in [0, 1], got {self.drift_fraction}")
        at = _float_tuple(self.drift_at, "drift_at")
        _require(all(0 < t < 1 for t in at) and all(a < b for a, b in pairwise(at)),
                 f"drift_at must be strictly increasing fractions in (0, 1), got {self.drift_at}")
        mix = _float_tuple(self.policy_mix, "policy_mix")
        _require(len(mix) == 3 and all(p >= 0 for p in mix) and abs(sum(mix) - 1) < 1e-9,
                 f"policy_mix must be 3 non-negative weights (interest, popular, uniform) "
                 f"summing to 1, got {self.policy_mix}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _int_pair(value: object, name: str) -> tuple[int, int]:
    ok = isinstance(value, tuple) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)
    _require(ok, f"{name} must be a tuple of two ints, got {value!r}")
    return value  # type: ignore[return-value]


def _float_tuple(value: object, name: str) -> tuple[float, ...]:
    ok = isinstance(value, tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    _require(ok, f"{name} must be a tuple of finite numbers, got {value!r}")
    return value  # type: ignore[return-value]


def _rng(seed: int, kind: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, kind, index])


def _dirichlet(rng: np.random.Generator, alpha: float, allowed: np.ndarray) -> np.ndarray:
    """Rows of Dirichlet(alpha) restricted to ``allowed`` columns (float32, rows sum to 1)."""
    g = rng.standard_gamma(alpha, size=allowed.shape, dtype=np.float32)
    g *= allowed
    total = g.sum(axis=1)
    empty = total <= 0  # every allowed draw underflowed: put all mass on one allowed column
    if np.any(empty):
        pick = np.argmax(allowed[empty] * rng.random((int(empty.sum()), allowed.shape[1])), axis=1)
        g[empty] = 0
        g[np.flatnonzero(empty), pick] = 1
        total = g.sum(axis=1)
    g /= total[:, None]
    return g


def _sample_cdf(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Indices drawn from a normalised cumulative distribution with uniforms ``u``."""
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _first_duplicates(items: np.ndarray) -> np.ndarray:
    """Mask of slots repeating an item seen earlier in the same row."""
    order = np.argsort(items, axis=1, kind="stable")
    sorted_items = np.take_along_axis(items, order, axis=1)
    dup_sorted = np.zeros_like(items, dtype=bool)
    dup_sorted[:, 1:] = sorted_items[:, 1:] == sorted_items[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return dup


class _Clock:
    """Session-start time law: a daily cycle, intensity ``1 + a cos(2 pi (t - peak) / day)``.

    ``at(u)`` maps a quantile ``u`` in [0, 1] of the cumulative intensity to seconds
    since the start; it is monotone, so stratifying quantiles stratifies time.
    """

    def __init__(self, days: float, amplitude: float, peak_hour: float) -> None:
        self.span = days * DAY
        n_grid = int(min(max(math.ceil(days * 96), 2), 2**20)) + 1  # 15-minute resolution
        t = np.linspace(0.0, self.span, n_grid)
        phase = 2 * np.pi * (t - peak_hour * 3600) / DAY
        start = 2 * np.pi * (-peak_hour * 3600) / DAY
        cum = t + amplitude * DAY / (2 * np.pi) * (np.sin(phase) - np.sin(start))
        self._t = t
        self._q = cum / cum[-1]

    def at(self, u: np.ndarray | float) -> np.ndarray:
        return np.interp(u, self._q, self._t)


@dataclass(frozen=True)
class _Block:
    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    event: np.ndarray


class World:
    r"""A synthetic world generating a click/exposure stream with known ground truth.

    Generative model (``c(i)`` is item ``i``'s cluster, ``t`` a unix time):

    * items: centroid ``mu_c ~ N(0, I/d)``; item vector ``v_i = mu_c(i) + s_v z_i`` with
      ``z_i ~ N(0, I/d)``; popularity ``p_i = exp(s_p n_i)``, ``n_i ~ N(0, 1)`` (long tail);
      bias ``b_i = w_b log p_i``. Cluster sizes are uneven (lognormal weights, >= 1 item).
    * users: disliked clusters ``D_u`` (``dislikes`` of them, uniform); interest mixture
      ``theta_u ~ Dirichlet(alpha)`` over clusters not in ``D_u``; taste
      ``s_u ~ N(0, I)``; activity weight ``a_u`` (lognormal or Zipf).
    * drift: a ``drift_fraction`` of users draw a new mixture at every ``drift_at`` time,
      excluding ``D_u`` and the previous mixture's dominant cluster.
      ``theta_u(t)`` is the mixture in force at ``t``.
    * utility: ``U(u, i, t) = w_i log(theta_u(t)[c(i)] + eps) + w_s <s_u, v_i> + b_i
      - delta 1[c(i) in D_u]``.
    * time: sessions start at times drawn from a daily cycle; a session's user is drawn
      with probability ``a_u / sum a``; it has ``Geometric(1/session_slates)`` slates
      ``Exp(session_gap_seconds)`` apart.
    * slates: each of ``slate_size`` slots is filled, independently with probabilities
      ``policy_mix``, by (1) a cluster drawn from ``theta_u(t - lag)`` and an item of it
      drawn by popularity, (2) an item drawn by popularity, or (3) a uniform item;
      repeated items are redrawn uniformly.
    * choice: the user clicks slot ``j`` with probability
      ``exp(U_j / T) / (exp(U_0 / T) + sum_k exp(U_k / T))`` and nothing with the rest
      (``U_0`` = ``no_click_utility``). A slate becomes ``slate_size`` events at its
      timestamp: one exposure per shown-not-clicked item, in slate order, then the click.
      Event ``e`` belongs to slate ``e // slate_size``.

    The stream is generated lazily in blocks of ``BLOCK_SLATES`` slates, each from its
    own RNG ``(seed, block)``, so it never depends on how it is read.

    >>> world = World(WorldConfig(n_users=100, n_items=80, n_clusters=8, n_events=2_000))
    >>> batch = next(world.batches(500))
    >>> len(batch), int(batch.index[0]), bool(np.all(np.diff(batch.ts) >= 0))
    (500, 0, True)
    >>> world.interest(np.array([0]), batch.ts[:1]).shape
    (1, 8)
    """

    name = "world"

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config = config or WorldConfig()
        self._clock = _Clock(config.days, config.diurnal_amplitude, config.peak_hour)
        self.start_ts = EPOCH
        self.end_ts = EPOCH + math.ceil(self._clock.span)
        self.n_slates = -(-config.n_events // config.slate_size)
        self._init_items()
        self._init_users()
        self._init_drift()
        self._init_features()
        self._init_activity()

    # --- parameters ---------------------------------------------------------------------

    def _init_items(self) -> None:
        cfg = self.config
        rng = _rng(cfg.seed, _ITEMS)
        size_w = rng.lognormal(0.0, 0.5, cfg.n_clusters)
        sizes = 1 + rng.multinomial(cfg.n_items - cfg.n_clusters, size_w / size_w.sum())
        category = rng.permutation(np.repeat(np.arange(cfg.n_clusters), sizes))
        self.item_category = category.astype(np.int32)
        scale = 1.0 / math.sqrt(cfg.dim)
        centroids = rng.standard_normal((cfg.n_clusters, cfg.dim), dtype=np.float32) * scale
        noise = rng.standard_normal((cfg.n_items, cfg.dim), dtype=np.float32) * scale
        self.item_vectors = centroids[self.item_category] + np.float32(cfg.item_noise) * noise
        log_pop = cfg.item_pop_sigma * rng.standard_normal(cfg.n_items)
        popularity = np.exp(log_pop - log_pop.max())
        self.item_popularity = popularity / popularity.sum()
        self.item_bias = (cfg.item_bias_weight * (log_pop - log_pop.mean())).astype(np.float32)
        self._pop_cdf = np.cumsum(self.item_popularity)
        self._pop_cdf /= self._pop_cdf[-1]
        # items sorted by cluster; cluster c's cumulative popularity spans (c, c + 1]
        by_cluster = np.argsort(self.item_category, kind="stable")
        cats = self.item_category[by_cluster]
        pop = self.item_popularity[by_cluster]
        cum = np.cumsum(pop)
        starts = np.searchsorted(cats, np.arange(cfg.n_clusters))
        ends = np.append(starts[1:], cfg.n_items)
        before = np.where(starts > 0, cum[starts - 1], 0.0)
        within = (cum - before[cats]) / (cum[ends - 1] - before)[cats]
        within[ends - 1] = 1.0
        self._items_by_cluster = by_cluster.astype(np.int32)
        self._cluster_cdf = cats + within
        self.category_names = [f"c{c}" for c in range(cfg.n_clusters)]

    def _init_users(self) -> None:
        cfg = self.config
        rng = _rng(cfg.seed, _USERS)
        n, k = cfg.n_users, cfg.n_clusters
        counts = rng.integers(cfg.dislikes[0], cfg.dislikes[1] + 1, n)
        rank = np.argsort(rng.random((n, k), dtype=np.float32), axis=1)
        self.disliked = np.zeros((n, k), dtype=bool)
        np.put_along_axis(self.disliked, rank, np.arange(k)[None, :] < counts[:, None], axis=1)
        del rank
        self._theta = _dirichlet(rng, cfg.interest_alpha, ~self.disliked)
        self.taste = rng.standard_normal((n, cfg.dim), dtype=np.float32)

    def _init_drift(self) -> None:
        cfg = self.config
        rng = _rng(cfg.seed, _DRIFT)
        n_phases = len(cfg.drift_at)
        n_drift = round(cfg.drift_fraction * cfg.n_users) if n_phases else 0
        users = np.sort(rng.permutation(cfg.n_users)[:n_drift])
        self.drifting = np.zeros(cfg.n_users, dtype=bool)
        self.drifting[users] = True
        self._drift_row = np.full(cfg.n_users, -1, dtype=np.int32)
        self._drift_row[users] = np.arange(n_drift, dtype=np.int32)
        self.drift_ts = np.array(
            [EPOCH + int(f * self._clock.span) for f in cfg.drift_at], dtype=np.int64)
        self._theta_drift = np.zeros((n_drift, n_phases, cfg.n_clusters), dtype=np.float32)
        previous = self._theta[users]
        for phase in range(n_phases):
            allowed = ~self.disliked[users]
            allowed[np.arange(n_drift), np.argmax(previous, axis=1)] = False
            previous = _dirichlet(rng, cfg.interest_alpha, allowed)
            self._theta_drift[:, phase] = previous

    def _init_features(self) -> None:
        cfg = self.config
        rng = _rng(cfg.seed, _FEATURES)
        dominant = np.argmax(self._theta, axis=1)
        self.user_features: dict[str, np.ndarray] = {}
        for name, vocab in (("age", AGE_BUCKETS), ("region", REGIONS)):
            of_cluster = rng.integers(len(vocab), size=cfg.n_clusters)
            noisy = rng.random(cfg.n_users) < cfg.feature_noise
            uniform = rng.integers(len(vocab), size=cfg.n_users)
            value = np.where(noisy, uniform, of_cluster[dominant])
            self.user_features[name] = value.astype(np.int32)
        self.user_feature_names = {"age": list(AGE_BUCKETS), "region": list(REGIONS)}

    def _init_activity(self) -> None:
        cfg = self.config
        rng = _rng(cfg.seed, _ACTIVITY)
        if cfg.activity == "lognormal":
            weight = np.exp(cfg.activity_sigma * rng.standard_normal(cfg.n_users))
        else:
            rank = rng.permutation(cfg.n_users) + 1.0
            weight = rank ** -cfg.zipf_exponent
        self.activity = weight / weight.sum()
        self._activity_cdf = np.cumsum(self.activity)
        self._activity_cdf /= self._activity_cdf[-1]

    # --- public --------------------------------------------------------------------------

    @property
    def n_users(self) -> int:
        return self.config.n_users

    @property
    def n_items(self) -> int:
        return self.config.n_items

    @property
    def n_clusters(self) -> int:
        return self.config.n_clusters

    @property
    def n_events(self) -> int:
        return self.config.n_events

    def slate_of(self, index: np.ndarray) -> np.ndarray:
        """The slate each global event index belongs to."""
        return np.asarray(index) // self.config.slate_size

    def interest(self, users: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Ground-truth interest mixtures ``theta_u(t)`` over clusters, shape (n, n_clusters)."""
        users, ts = np.broadcast_arrays(np.asarray(users), np.asarray(ts))
        users, ts = users.ravel(), ts.ravel()
        theta = self._theta[users]
        row, phase = self._drift_state(users, ts)
        sel = np.flatnonzero(phase > 0)
        if len(sel):
            theta[sel] = self._theta_drift[row[sel], phase[sel] - 1]
        return theta

    def utility(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Ground-truth utility ``U(u, i, t)`` (float32), broadcast over the arguments."""
        users, items, ts = np.broadcast_arrays(np.asarray(users), np.asarray(items), np.asarray(ts))
        shape = users.shape
        u, i, t = users.ravel(), items.ravel(), ts.ravel()
        cfg = self.config
        cluster = self.item_category[i]
        theta = self._interest_at(u, cluster, t)
        taste = np.einsum("nd,nd->n", self.taste[u], self.item_vectors[i])
        value = (
            np.float32(cfg.interest_weight) * np.log(theta + np.float32(cfg.interest_floor))
            + np.float32(cfg.taste_weight) * taste
            + self.item_bias[i]
            - np.float32(cfg.dislike_penalty) * self.disliked[u, cluster]
        )
        return value.astype(np.float32).reshape(shape)

    def batches(self, size: int) -> Iterator[EventBatch]:
        """The stream as consecutive batches of ``size`` events (the last may be shorter).

        Lazy: one block is generated at a time. The events do not depend on ``size``.
        """
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"batch size must be a positive int, got {size!r}")
        pieces: list[_Block] = []
        buffered = 0
        start = 0
        for block in self._blocks():
            pieces.append(block)
            buffered += len(block.user)
            while buffered >= size:
                head, pieces = _split(pieces, size)
                buffered -= size
                yield _batch(head, start)
                start += size
        if buffered:
            yield _batch(_concat(pieces), start)

    def to_log(self) -> InteractionLog:
        """The whole stream materialised as an :class:`InteractionLog` (for small worlds)."""
        block = _concat(list(self._blocks()))
        return InteractionLog(
            name=self.name,
            user=block.user,
            item=block.item,
            ts=block.ts,
            event=block.event,
            user_ids=np.array([f"u{u}" for u in range(self.n_users)]),
            item_ids=np.array([f"i{i}" for i in range(self.n_items)]),
            item_category=self.item_category.copy(),
            category_names=list(self.category_names),
            user_features={k: v.copy() for k, v in self.user_features.items()},
            user_feature_names={k: list(v) for k, v in self.user_feature_names.items()},
        )

    # --- generation ----------------------------------------------------------------------

    def _drift_state(self, users: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        row = self._drift_row[users]
        phase = np.searchsorted(self.drift_ts, ts, side="right").astype(np.int32)
        phase[row < 0] = 0
        return row, phase

    def _interest_at(self, users: np.ndarray, clusters: np.ndarray, ts: np.ndarray) -> np.ndarray:
        theta = self._theta[users, clusters]
        row, phase = self._drift_state(users, ts)
        sel = np.flatnonzero(phase > 0)
        if len(sel):
            theta[sel] = self._theta_drift[row[sel], phase[sel] - 1, clusters[sel]]
        return theta

    def _blocks(self) -> Iterator[_Block]:
        n_blocks = -(-self.n_slates // BLOCK_SLATES)
        for b in range(n_blocks):
            yield self._block(b)

    def _block(self, b: int) -> _Block:
        cfg = self.config
        rng = _rng(cfg.seed, _BLOCK, b)
        first = b * BLOCK_SLATES
        m = min(BLOCK_SLATES, self.n_slates - first)
        users, ts = self._sessions(rng, first, m)
        items = self._slates(rng, users, ts)
        utility = self.utility(users[:, None], items, ts[:, None]).astype(np.float64)
        logits = np.concatenate([utility, np.full((m, 1), cfg.no_click_utility)], axis=1)
        choice = np.argmax(logits / cfg.temperature + rng.gumbel(size=logits.shape), axis=1)
        return self._events(users, ts, items, choice, first)

    def _sessions(
        self, rng: np.random.Generator, first: int, m: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Users and timestamps of slates ``first .. first + m``, in time order."""
        cfg = self.config
        q_lo, q_hi = first / self.n_slates, (first + m) / self.n_slates
        t_hi = float(self._clock.at(q_hi))
        lengths = rng.geometric(1.0 / cfg.session_slates, size=m)
        n_sessions = int(np.searchsorted(np.cumsum(lengths), m)) + 1
        lengths = lengths[:n_sessions]
        lengths[-1] -= lengths.sum() - m
        session_user = _sample_cdf(self._activity_cdf, rng.random(n_sessions))
        session_start = self._clock.at(rng.uniform(q_lo, q_hi, n_sessions))
        gaps = rng.exponential(cfg.session_gap_seconds, m)
        heads = np.cumsum(lengths) - lengths
        gaps[heads] = 0.0
        elapsed = np.cumsum(gaps)
        elapsed -= np.repeat(elapsed[heads], lengths)
        t = np.minimum(np.repeat(session_start, lengths) + elapsed, t_hi)
        order = np.argsort(t, kind="stable")
        users = np.repeat(session_user, lengths)[order].astype(np.int32)
        ts = (EPOCH + np.floor(t[order])).astype(np.int64)
        return users, ts

    def _slates(self, rng: np.random.Generator, users: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """The logging policy: ``slate_size`` distinct items per slate, (m, slate_size) int32."""
        cfg = self.config
        m, k = len(users), cfg.slate_size
        lag = round(cfg.policy_lag_days * DAY)
        cdf = np.cumsum(self.interest(users, ts - lag), axis=1)
        cluster = (cdf[:, None, :] < rng.random((m, k, 1)) * cdf[:, -1:, None]).sum(axis=2)
        cluster = np.minimum(cluster, cfg.n_clusters - 1)
        by_interest = self._items_by_cluster[
            _sample_cdf(self._cluster_cdf, cluster + rng.random((m, k)))]
        by_popularity = _sample_cdf(self._pop_cdf, rng.random((m, k)))
        uniform = rng.integers(cfg.n_items, size=(m, k))
        source = _sample_cdf(np.cumsum(cfg.policy_mix), rng.random((m, k)))
        items = np.choose(source, [by_interest, by_popularity, uniform]).astype(np.int32)
        dup = _first_duplicates(items)
        while np.any(dup):
            items[dup] = rng.integers(cfg.n_items, size=int(dup.sum()))
            dup = _first_duplicates(items)
        return items

    def _events(self, users: np.ndarray, ts: np.ndarray, items: np.ndarray,
                choice: np.ndarray, first: int) -> _Block:
        """Flatten slates into events: exposures in slate order, then the click."""
        m, k = items.shape
        clicked = choice[:, None] == np.arange(k)[None, :]
        order = np.argsort(clicked, axis=1, kind="stable")
        event = np.full((m, k), EXPOSURE, dtype=np.int8)
        event[:, -1] = np.where(choice < k, CLICK, EXPOSURE)
        n = min(m * k, self.config.n_events - first * k)
        return _Block(
            user=np.repeat(users, k)[:n],
            item=np.take_along_axis(items, order, axis=1).ravel()[:n],
            ts=np.repeat(ts, k)[:n],
            event=event.ravel()[:n],
        )


def _concat(pieces: list[_Block]) -> _Block:
    if len(pieces) == 1:
        return pieces[0]
    return _Block(*(np.concatenate([getattr(p, f) for p in pieces])
                    for f in ("user", "item", "ts", "event")))


def _split(pieces: list[_Block], size: int) -> tuple[_Block, list[_Block]]:
    """The first ``size`` events of ``pieces``, and what remains."""
    whole = _concat(pieces)
    head = _Block(whole.user[:size], whole.item[:size], whole.ts[:size], whole.event[:size])
    rest = _Block(whole.user[size:], whole.item[size:], whole.ts[size:], whole.event[size:])
    return head, [rest] if len(rest.user) else []


def _batch(block: _Block, start: int) -> EventBatch:
    n = len(block.user)
    return EventBatch(
        index=np.arange(start, start + n, dtype=np.int64),
        user=block.user, item=block.item, ts=block.ts, event=block.event,
    )
