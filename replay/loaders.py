"""Parse interaction logs into :class:`~dcrec.replay.log.InteractionLog`.

Formats: MovieLens 100K and 1M in their native layouts, RecBole atomic files,
Amazon reviews (JSON lines, optionally gzipped, 2014/2018 and 2023 formats), and
CSV/TSV/Parquet tables with a column mapping.

Every reader only splits its source into raw columns (:class:`RawEvents`) plus side
information (:class:`SideInfo`); one shared builder, :func:`build_log`, validates the
rows, rejects bad ones with a :class:`~dcrec.streams.schema.Rejected` naming the reason,
the raw row and ``"<file>:<line>"``, drops exact duplicates, sorts by time with a stable
sort (ties keep source order) and numbers users and items densely in order of first
appearance. Nothing is dropped silently: every row that is not in the log is in
``log.rejected`` (rows removed by an explicit ``min_rating`` filter are counted in the
log messages instead, as they are not invalid).
"""

from __future__ import annotations

import ast
import contextlib
import csv
import gzip
import io
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from dcrec.replay.log import InteractionLog
from dcrec.streams.schema import CLICK, EXPOSURE, MAX_TIMESTAMP, Reason, Rejected

logger = logging.getLogger("dcrec.replay.loaders")

UNKNOWN = "unknown"
AGE_BUCKETS = ["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]
_AGE_LOWER_BOUNDS = np.array([18, 25, 35, 45, 50, 56])
#: The MovieLens genres in the order of ML-100K's ``u.genre`` (flag order of ``u.item``).
ML_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
#: Occupation codes of ML-1M ``users.dat`` (its README).
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]
EVENT_CODES = {"click": CLICK, "1": CLICK, "exposure": EXPOSURE, "0": EXPOSURE}
_YEAR_SUFFIX = re.compile(r"\s*\(\d{4}\)\s*$")


# --- the shared builder ----------------------------------------------------------------


@dataclass
class RawEvents:
    """One source's rows as read, before validation (all columns have one entry per row).

    ``user``, ``item``, ``event``, ``rating`` and ``category`` are strings (anything
    else is converted with ``str``; ``None`` counts as empty). ``ts`` is strings or a
    numeric array of unix seconds (NaN = missing). ``line`` is each row's line number in
    the source (for Parquet the 1-based row number) and ``raw(i)`` the bytes of row
    ``i``. ``rejected`` holds rows that could not even be split into fields, with their
    line numbers.
    """

    source: str
    user: Sequence
    item: Sequence
    ts: Sequence | np.ndarray
    line: Sequence[int]
    raw: Callable[[int], bytes]
    event: Sequence | None = None
    rating: Sequence | None = None
    category: Sequence | None = None
    rejected: list[tuple[int, Rejected]] = field(default_factory=list)


@dataclass
class SideInfo:
    """Item and user attributes keyed by original id.

    ``item_categories`` lists each item's categories, primary first; ``category_vocab``
    fixes the order of the category vocabulary (unlisted names follow, sorted).
    ``user_features`` maps a feature name to ``{user id: value}``; ``feature_vocab``
    fixes a feature's vocabulary (else it is the sorted values seen).
    """

    item_categories: dict[str, list[str]] | None = None
    category_vocab: list[str] | None = None
    item_titles: dict[str, str] | None = None
    user_features: dict[str, dict[str, str]] = field(default_factory=dict)
    feature_vocab: dict[str, list[str]] = field(default_factory=dict)


def _text(values: Sequence | pa.Array | pd.Series) -> pd.Series:
    """Values as stripped strings (Arrow-backed), missing ones as ``""``."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        series = pd.Series(pd.array(values, dtype="str"))
    elif isinstance(values, pd.Series):
        series = values.reset_index(drop=True)
    else:
        series = pd.Series(values, dtype=object)
    return series.astype("str").fillna("").str.strip()


def _parse_ts(values: Sequence | np.ndarray, allow_dates: bool
              ) -> tuple[np.ndarray, np.ndarray, pd.Series | None]:
    """Timestamps as float seconds (NaN where unparseable), a mask of empty ones, and
    the stripped text (None for a numeric column)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        seconds = values.astype(np.float64)
        return seconds, np.isnan(seconds), None
    text = _text(values)
    empty = (text == "").to_numpy()
    seconds = _numbers(text)
    if allow_dates:
        todo = np.flatnonzero(np.isnan(seconds) & ~empty)
        if len(todo):
            seconds[todo] = _iso_seconds(text.iloc[todo])
    return seconds, empty, text


_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def _numbers(text: pd.Series) -> np.ndarray:
    """Decimal numbers in stripped text as float64, NaN where the text is not one."""
    strings = pa.array(text, type=pa.large_string())
    is_number = pc.match_substring_regex(strings, _NUMBER)
    out = np.full(len(strings), np.nan)
    out[is_number.to_numpy(zero_copy_only=False)] = pc.cast(
        strings.filter(is_number), pa.float64()).to_numpy()
    return out


def _iso_seconds(text: pd.Series) -> np.ndarray:
    """ISO-8601 dates as unix seconds (naive dates are UTC), NaN where not a date."""
    dates = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    return (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(
        dtype=np.float64, na_value=np.nan)


class _Verdicts:
    """Per-row verdicts: 0 = valid, else the index of the first failed check."""

    def __init__(self, n: int) -> None:
        self.code = np.zeros(n, dtype=np.int16)
        self.checks: list[tuple[Reason, Callable[[int], str]]] = []

    def reject(self, mask: np.ndarray, reason: Reason, detail: Callable[[int], str]) -> None:
        """Mark rows in ``mask`` that are still valid as failing this check."""
        self.checks.append((reason, detail))
        self.code[(self.code == 0) & mask] = len(self.checks)

    @property
    def ok(self) -> np.ndarray:
        return self.code == 0

    def rejected(self, raw: RawEvents, line: np.ndarray) -> list[tuple[int, Rejected]]:
        out = []
        for i in np.flatnonzero(self.code > 0):
            reason, detail = self.checks[self.code[i] - 1]
            out.append((int(line[i]), Rejected(
                reason.value, detail(i), raw.raw(int(i)), f"{raw.source}:{line[i]}")))
        return out


def build_log(
    name: str,
    raw: RawEvents,
    side: SideInfo | None = None,
    *,
    min_rating: float | None = None,
    allow_dates: bool = False,
) -> InteractionLog:
    """Validate raw rows and turn them into a time-ordered log with dense ids.

    Checks, in order (a row gets the first reason that applies): empty user, item or
    timestamp (``missing_field``); non-numeric timestamp (``bad_type``; ISO-8601 dates
    are accepted when ``allow_dates``); ``negative_timestamp``; ``absurd_timestamp``
    (after ``MAX_TIMESTAMP``); empty event (``missing_field``) or an event other than
    click/exposure/1/0 (``unknown_event``); a non-numeric rating when ``min_rating`` is
    set (``bad_type``); an exact repeat of an earlier (user, item, ts, event)
    (``duplicate``). Float timestamps are truncated to whole seconds.
    """
    user, item = _text(raw.user), _text(raw.item)
    n = len(user)
    line = np.asarray(raw.line, dtype=np.int64)
    seconds, ts_empty, ts_text = _parse_ts(raw.ts, allow_dates)
    verdicts = _Verdicts(n)

    def shown_ts(i: int) -> str:
        return repr(ts_text.iloc[i]) if ts_text is not None else repr(seconds[i])

    user_empty, item_empty = (user == "").to_numpy(), (item == "").to_numpy()
    verdicts.reject(user_empty | item_empty | ts_empty, Reason.MISSING_FIELD, lambda i: (
        "empty " + ", ".join(f for f, e in (("user", user_empty[i]), ("item", item_empty[i]),
                                             ("timestamp", ts_empty[i])) if e)))
    kind = "a number or an ISO-8601 date" if allow_dates else "a number"
    verdicts.reject(np.isnan(seconds), Reason.BAD_TYPE,
                    lambda i: f"timestamp {shown_ts(i)} is not {kind}")
    with np.errstate(invalid="ignore"):
        verdicts.reject(seconds < 0, Reason.NEGATIVE_TIMESTAMP,
                        lambda i: f"timestamp {shown_ts(i)} is negative")
        verdicts.reject(seconds > MAX_TIMESTAMP, Reason.ABSURD_TIMESTAMP,
                        lambda i: f"timestamp {shown_ts(i)} is after 2100-01-01")
    event = _check_events(raw, verdicts)
    keep = _filter_ratings(raw, verdicts, min_rating)
    ts = np.zeros(n, dtype=np.int64)
    ok = verdicts.ok
    ts[ok] = np.trunc(seconds[ok]).astype(np.int64)
    _check_duplicates(user, item, ts, event, verdicts, keep, line)

    rejected = sorted(raw.rejected + verdicts.rejected(raw, line), key=lambda r: r[0])
    valid = verdicts.ok & keep
    log = _assemble(name, user, item, ts, event, valid, [r for _, r in rejected])
    category = _text(raw.category) if raw.category is not None else None
    _attach_side(log, side, category, valid, np.argsort(ts[valid], kind="stable"))
    logger.info(
        "loaded %s: %d events (%d clicks, %d exposures), %d users, %d items, %d rejected%s",
        name, log.n_events, log.n_clicks, log.n_exposures, log.n_users, log.n_items,
        len(log.rejected),
        f", {int(np.count_nonzero(verdicts.ok & ~keep))} below min_rating {min_rating}"
        if min_rating is not None else "")
    return log


def _check_events(raw: RawEvents, verdicts: _Verdicts) -> np.ndarray:
    """Event codes per row (CLICK where the source has no event column)."""
    if raw.event is None:
        return np.full(len(verdicts.code), CLICK, dtype=np.int8)
    text = _text(raw.event)
    lower = text.str.lower()
    codes = np.full(len(text), -1, dtype=np.int8)
    for name, code in EVENT_CODES.items():
        codes[(lower == name).to_numpy()] = code
    verdicts.reject((text == "").to_numpy(), Reason.MISSING_FIELD, lambda i: "empty event")
    verdicts.reject(codes < 0, Reason.UNKNOWN_EVENT,
                    lambda i: f"event {text.iloc[i]!r} is not click/exposure/1/0")
    return np.where(codes < 0, CLICK, codes).astype(np.int8)


def _filter_ratings(raw: RawEvents, verdicts: _Verdicts, min_rating: float | None) -> np.ndarray:
    """Rows to keep under ``min_rating`` (rows without a rating are kept)."""
    n = len(verdicts.code)
    if min_rating is None:
        return np.ones(n, dtype=bool)
    if raw.rating is None:
        raise ValueError("min_rating was given but the data has no rating column")
    text = _text(raw.rating)
    rating = _numbers(text)
    present = (text != "").to_numpy()
    verdicts.reject(present & np.isnan(rating), Reason.BAD_TYPE,
                    lambda i: f"rating {text.iloc[i]!r} is not a number")
    with np.errstate(invalid="ignore"):
        return ~present | (rating >= min_rating)


def _check_duplicates(user: pd.Series, item: pd.Series, ts: np.ndarray, event: np.ndarray,
                      verdicts: _Verdicts, keep: np.ndarray, line: np.ndarray) -> None:
    """Reject exact repeats of an earlier valid (user, item, ts, event)."""
    candidates = np.flatnonzero(verdicts.ok & keep)
    frame = pd.DataFrame({"u": user.take(candidates).reset_index(drop=True),
                          "i": item.take(candidates).reset_index(drop=True),
                          "t": ts[candidates], "e": event[candidates]})
    repeated = frame.duplicated(keep="first").to_numpy()
    if not repeated.any():
        return
    involved = frame.duplicated(keep=False).to_numpy()
    first_line: dict[tuple, int] = {}
    for row, key in zip(candidates[involved], frame[involved].itertuples(index=False),
                        strict=True):
        first_line.setdefault(tuple(key), int(line[row]))
    key_of = dict(zip(candidates[repeated], frame[repeated].itertuples(index=False),
                      strict=True))
    mask = np.zeros(len(ts), dtype=bool)
    mask[candidates[repeated]] = True
    verdicts.reject(mask, Reason.DUPLICATE,
                    lambda i: f"repeat of line {first_line[tuple(key_of[i])]}")


def _assemble(name: str, user: pd.Series, item: pd.Series, ts: np.ndarray, event: np.ndarray,
              valid: np.ndarray, rejected: list[Rejected]) -> InteractionLog:
    """The log of the valid rows: stable time order, dense ids by first appearance."""
    rows = np.flatnonzero(valid)
    order = rows[np.argsort(ts[rows], kind="stable")]
    user_code, user_ids = pd.factorize(user.take(order))
    item_code, item_ids = pd.factorize(item.take(order))
    return InteractionLog(
        name=name,
        user=user_code.astype(np.int32),
        item=item_code.astype(np.int32),
        ts=ts[order],
        event=event[order].astype(np.int8),
        user_ids=np.asarray(user_ids, dtype=str),
        item_ids=np.asarray(item_ids, dtype=str),
        rejected=rejected,
    )


# --- side information -------------------------------------------------------------------


def _vocabulary(used: set[str], preferred: list[str] | None) -> list[str]:
    """``preferred`` (all of it, in order) followed by the other used names, sorted."""
    head = list(preferred or [])
    return head + sorted(used - set(head))


def _encode(values: list[str | None], preferred: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Names as int32 ids into a vocabulary; missing names become ``unknown``."""
    vocab = _vocabulary({v for v in values if v}, preferred)
    if any(not v for v in values) and UNKNOWN not in vocab:
        vocab.append(UNKNOWN)
    index = {name: i for i, name in enumerate(vocab)}
    return np.array([index[v or UNKNOWN] for v in values], dtype=np.int32), vocab


def _row_categories(log: InteractionLog, category: pd.Series, valid: np.ndarray,
                    order: np.ndarray) -> dict[str, list[str]]:
    """Each item's first non-empty per-row category, in time order."""
    names = category.take(np.flatnonzero(valid)[order]).reset_index(drop=True)
    frame = pd.DataFrame({"item": log.item, "name": names})
    frame = frame[frame["name"] != ""].drop_duplicates("item")
    return {log.item_ids[i]: [name] for i, name in zip(frame["item"], frame["name"],
                                                       strict=True)}


def _attach_side(log: InteractionLog, side: SideInfo | None, category: pd.Series | None,
                 valid: np.ndarray, order: np.ndarray) -> None:
    """Fill the log's side information, aligned with its dense ids."""
    side = side or SideInfo()
    categories = side.item_categories
    if category is not None:
        categories = {**(categories or {}), **_row_categories(log, category, valid, order)}
    if categories is not None:
        primary = [(categories.get(i) or [None])[0] for i in log.item_ids]
        used = {name for i in log.item_ids for name in categories.get(i, [])}
        vocab = _vocabulary(used, side.category_vocab)
        log.item_category, log.category_names = _encode(primary, vocab)
    if side.item_titles is not None:
        log.item_titles = [side.item_titles.get(i, "") for i in log.item_ids]
    for feature, by_user in side.user_features.items():
        values = [by_user.get(u) for u in log.user_ids]
        log.user_features[feature], log.user_feature_names[feature] = _encode(
            values, side.feature_vocab.get(feature))


def age_bucket(age: str) -> str | None:
    """The age group of an age in years (``<18`` … ``56+``), None if not an age."""
    try:
        years = float(age)
    except ValueError:
        return None
    if not math.isfinite(years) or years < 0:
        return None
    return AGE_BUCKETS[int(np.searchsorted(_AGE_LOWER_BOUNDS, years, side="right"))]


def _feature_value(feature: str, value: str, occupations: list[str] | None) -> str | None:
    """A user feature's value as its vocabulary name (None when unknown)."""
    if feature == "age":
        return age_bucket(value)
    if feature == "occupation" and occupations and value.isdigit() and int(value) < len(
            occupations):
        return occupations[int(value)]
    return value or None


def _user_side(rows: list[list[str]], columns: dict[str, int],
               occupations: list[str] | None = None
               ) -> tuple[dict[str, dict[str, str | None]], dict[str, list[str]]]:
    """User features from side-file rows, and their fixed vocabularies.

    ``columns`` gives the positions of ``id`` and of each feature: ``age`` (years, made
    a bucket), ``gender``, ``occupation`` (a code into ``occupations`` when given).
    """
    id_col = columns["id"]
    features = {
        feature: {row[id_col].strip(): _feature_value(feature, row[col].strip(), occupations)
                  for row in rows}
        for feature, col in columns.items() if feature != "id"}
    return features, ({"age": AGE_BUCKETS} if "age" in features else {})


# --- reading text ------------------------------------------------------------------------


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """A (possibly gzipped) text file; undecodable utf-8 bytes are kept as surrogates."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode(encoding, errors="surrogateescape" if encoding == "utf-8" else "strict")


def _encoder(encoding: str) -> Callable[[str], bytes]:
    errors = "surrogateescape" if encoding == "utf-8" else "strict"
    return lambda text: text.encode(encoding, errors=errors)


@dataclass
class _Lines:
    """A text file split into lines, for rows of fields and for raw bytes of bad rows."""

    path: Path
    lines: list[str]
    encoding: str = "utf-8"

    @classmethod
    def read(cls, path: Path, encoding: str = "utf-8") -> _Lines:
        lines = _read_text(path, encoding).split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return cls(path, [line.rstrip("\r") for line in lines], encoding)

    def raw(self, number: int) -> bytes:
        return _encoder(self.encoding)(self.lines[number - 1])

    def fields(self, sep: str, n_fields: int | None = None, first: int = 1
               ) -> tuple[list[list[str]], list[int], list[tuple[int, Rejected]]]:
        """Rows split on ``sep`` from line ``first`` on, blank lines skipped; rows whose
        field count differs from ``n_fields`` are rejected as malformed."""
        rows, numbers, rejected = [], [], []
        for number, text in enumerate(self.lines[first - 1:], first):
            if not text.strip():
                continue
            row = text.split(sep)
            if n_fields is not None and len(row) != n_fields:
                rejected.append((number, Rejected(
                    Reason.MALFORMED.value, f"expected {n_fields} fields, got {len(row)}",
                    self.raw(number), f"{self.path.name}:{number}")))
                continue
            rows.append(row)
            numbers.append(number)
        return rows, numbers, rejected

    def events(self, sep: str, n_fields: int, columns: dict[str, int], first: int = 1
               ) -> RawEvents:
        """Raw events from fixed positions (``columns``: user, item, ts, rating, …)."""
        rows, numbers, rejected = self.fields(sep, n_fields, first)
        cols = list(zip(*rows, strict=True)) if rows else [()] * n_fields
        picked = {name: cols[i] for name, i in columns.items()}
        return RawEvents(
            source=self.path.name, line=numbers,
            raw=lambda i: self.raw(numbers[i]), rejected=rejected, **picked)


def _side_rows(path: Path, sep: str, n_fields: int | None, encoding: str = "utf-8",
               first: int = 1) -> list[list[str]]:
    """Rows of a side file (a missing file gives none; bad lines are skipped with a warning)."""
    if not path.exists():
        logger.info("no side file %s", path)
        return []
    rows, _, bad = _Lines.read(path, encoding).fields(sep, n_fields, first)
    if bad:
        logger.warning("%s: skipped %d malformed lines (first: line %d)", path, len(bad), bad[0][0])
    return rows


def _strip_year(title: str) -> str:
    return _YEAR_SUFFIX.sub("", title.strip())


# --- MovieLens ---------------------------------------------------------------------------


def load_movielens_100k(directory: Path, *, min_rating: float | None = None,
                        name: str | None = None) -> InteractionLog:
    """MovieLens 100K in GroupLens' layout: ``u.data`` (+ ``u.user``, ``u.item``, ``u.genre``)."""
    directory = Path(directory)
    raw = _Lines.read(directory / "u.data").events(
        "\t", 4, {"user": 0, "item": 1, "rating": 2, "ts": 3})
    genre_rows = _side_rows(directory / "u.genre", "|", 2, "latin-1")
    genres = [row[0] for row in genre_rows] or ML_GENRES
    side = SideInfo(item_categories={}, category_vocab=genres, item_titles={})
    for row in _side_rows(directory / "u.item", "|", 5 + len(genres), "latin-1"):
        flags = row[5:]
        side.item_categories[row[0]] = [g for g, f in zip(genres, flags, strict=True)
                                        if f.strip() == "1"]
        side.item_titles[row[0]] = _strip_year(row[1])
    user_rows = _side_rows(directory / "u.user", "|", 5)
    side.user_features, side.feature_vocab = _user_side(
        user_rows, {"id": 0, "age": 1, "gender": 2, "occupation": 3})
    return build_log(name or directory.name, raw, side, min_rating=min_rating)


def load_movielens_1m(directory: Path, *, min_rating: float | None = None,
                      name: str | None = None) -> InteractionLog:
    """MovieLens 1M in GroupLens' layout: ``ratings.dat`` (+ ``users.dat``, ``movies.dat``)."""
    directory = Path(directory)
    raw = _Lines.read(directory / "ratings.dat").events(
        "::", 4, {"user": 0, "item": 1, "rating": 2, "ts": 3})
    side = SideInfo(item_categories={}, category_vocab=ML_GENRES[1:], item_titles={})
    for row in _side_rows(directory / "movies.dat", "::", 3, "latin-1"):
        side.item_categories[row[0]] = [g for g in row[2].split("|") if g]
        side.item_titles[row[0]] = _strip_year(row[1])
    user_rows = _side_rows(directory / "users.dat", "::", 5)
    side.user_features, side.feature_vocab = _user_side(
        user_rows, {"id": 0, "gender": 1, "age": 2, "occupation": 3}, ML1M_OCCUPATIONS)
    return build_log(name or directory.name, raw, side, min_rating=min_rating)


# --- RecBole atomic files ----------------------------------------------------------------


def _atomic_header(lines: _Lines) -> dict[str, int]:
    """Field name (type suffix dropped) -> column of an atomic file's header."""
    return {f.split(":")[0].strip(): i for i, f in enumerate(lines.lines[0].split("\t"))}


def _column(header: dict[str, int], wanted: str | None, default: str | None,
            path: Path, *, alternatives: Sequence[str] = ()) -> int | None:
    """The position of a mapped column; an explicitly wanted column must exist."""
    if wanted is not None:
        if wanted not in header:
            raise ValueError(f"{path.name}: no column {wanted!r}; columns: {list(header)}")
        return header[wanted]
    for candidate in (default, *alternatives):
        if candidate in header:
            return header[candidate]
    return None


def _required(position: int | None, role: str, path: Path, header: dict[str, int]) -> int:
    if position is None:
        raise ValueError(f"{path.name}: no {role} column (give its name with a mapping flag); "
                         f"columns: {list(header)}")
    return position


def load_atomic(path: Path, *, user: str | None = None, item: str | None = None,
                timestamp: str | None = None, event: str | None = None,
                category: str | None = None, rating: str | None = None,
                min_rating: float | None = None, name: str | None = None) -> InteractionLog:
    """A RecBole atomic ``.inter`` file (typed tab-separated header), with the ``.user``
    and ``.item`` files next to it when present. Default fields: ``user_id``,
    ``item_id``, ``timestamp``, ``rating``; categories from ``class``/``genre``."""
    path = Path(path)
    lines = _Lines.read(path)
    if not lines.lines:
        raise ValueError(f"{path}: empty file")
    header = _atomic_header(lines)
    columns = {
        "user": _required(_column(header, user, "user_id", path), "user", path, header),
        "item": _required(_column(header, item, "item_id", path), "item", path, header),
        "ts": _required(_column(header, timestamp, "timestamp", path), "timestamp", path, header),
        "rating": _column(header, rating, "rating", path),
        "event": _column(header, event, None, path),
    }
    raw = lines.events("\t", len(header), {k: v for k, v in columns.items() if v is not None},
                       first=2)
    side = _atomic_side(path, category)
    return build_log(name or path.stem, raw, side, min_rating=min_rating)


def _atomic_table(path: Path) -> tuple[dict[str, int], list[list[str]]]:
    """Header and rows of an atomic side file (malformed lines skipped with a warning)."""
    lines = _Lines.read(path)
    header = _atomic_header(lines) if lines.lines else {}
    rows, _, bad = lines.fields("\t", len(header), first=2)
    if bad:
        logger.warning("%s: skipped %d malformed lines (first: line %d)", path, len(bad), bad[0][0])
    return header, rows


def _atomic_side(path: Path, category: str | None) -> SideInfo:
    """Categories and titles from the ``.item`` file, user features from the ``.user`` file."""
    side = SideInfo()
    item_path = path.with_suffix(".item")
    if item_path.exists():
        header, rows = _atomic_table(item_path)
        item_col = header.get("item_id", 0)
        cat_col = _column(header, category, "class", item_path,
                          alternatives=("genre", "genres", "categories", "category"))
        title_col = _column(header, None, "movie_title", item_path, alternatives=("title",))
        if cat_col is not None:
            side.item_categories = {r[item_col].strip(): r[cat_col].split() for r in rows}
            used = {g for names in side.item_categories.values() for g in names}
            side.category_vocab = ML_GENRES if used <= set(ML_GENRES) else None
        if title_col is not None:
            side.item_titles = {r[item_col].strip(): r[title_col].strip() for r in rows}
    user_path = path.with_suffix(".user")
    if user_path.exists():
        header, rows = _atomic_table(user_path)
        wanted = {"id": header.get("user_id", 0)}
        wanted.update({f: header[f] for f in ("age", "gender", "occupation") if f in header})
        side.user_features, side.feature_vocab = _user_side(rows, wanted)
    return side


# --- Amazon reviews ----------------------------------------------------------------------

_json_decoder = msgspec.json.Decoder()


def _first(record: dict, *keys: str) -> object:
    for key in keys:
        if record.get(key) is not None:
            return record[key]
    return None


def _amazon_ts(value: object) -> str:
    """Unix seconds as text; 2023-format milliseconds (> 1e11) are divided by 1000."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    if value > 1e11:
        value = value // 1000 if isinstance(value, int) else value / 1000
    return str(value)


def _first_category(value: object) -> str:
    """The first name of a category field (a string, a list, or a list of lists)."""
    while isinstance(value, list):
        value = value[0] if value else None
    return "" if value is None else str(value)


def _review_record(text: str) -> tuple[dict | None, str]:
    """A JSON object line, or None and why not. The "loose JSON" of the 2014 dumps
    (Python dict literals) is read with ``ast.literal_eval``, which evaluates no code."""
    try:
        record = _json_decoder.decode(text)
    except msgspec.DecodeError as error:
        record, problem = None, f"invalid JSON: {error}"
        if text.lstrip().startswith("{'"):
            with contextlib.suppress(ValueError, SyntaxError, MemoryError, RecursionError):
                record = ast.literal_eval(text)
    else:
        problem = "expected a JSON object"
    return (record, "") if isinstance(record, dict) else (None, problem)


def load_amazon(path: Path, *, min_rating: float | None = None,
                name: str | None = None) -> InteractionLog:
    """Amazon reviews as JSON lines (``.json``/``.jsonl``, optionally ``.gz``).

    Accepts the 2014/2018 fields (``reviewerID``, ``asin``, ``unixReviewTime``,
    ``overall``) and the 2023 ones (``user_id``, ``parent_asin``, ``timestamp`` in ms,
    ``rating``); categories from ``category``/``categories`` if present. Lines that
    are not a JSON object are rejected as malformed.
    """
    path = Path(path)
    lines = _Lines.read(path)
    cols: dict[str, list] = {k: [] for k in ("user", "item", "ts", "rating", "category")}
    numbers: list[int] = []
    rejected: list[tuple[int, Rejected]] = []
    for number, text in enumerate(lines.lines, 1):
        if not text.strip():
            continue
        record, problem = _review_record(text)
        if record is None:
            rejected.append((number, Rejected(Reason.MALFORMED.value, problem,
                                              lines.raw(number), f"{path.name}:{number}")))
            continue
        cols["user"].append(_first(record, "reviewerID", "user_id"))
        cols["item"].append(_first(record, "parent_asin", "asin"))
        cols["ts"].append(_amazon_ts(_first(record, "unixReviewTime", "timestamp")))
        cols["rating"].append(_first(record, "overall", "rating"))
        cols["category"].append(_first_category(_first(record, "category", "categories")))
        numbers.append(number)
    has_category = any(cols["category"])
    raw = RawEvents(
        source=path.name, user=cols["user"], item=cols["item"], ts=cols["ts"],
        rating=cols["rating"], category=cols["category"] if has_category else None,
        line=numbers, raw=lambda i: lines.raw(numbers[i]), rejected=rejected)
    return build_log(name or _stem(path), raw, min_rating=min_rating)


# --- tables ------------------------------------------------------------------------------

TABLE_DEFAULTS = {"user": "user", "item": "item", "ts": "timestamp", "event": "event",
                  "category": "category", "rating": "rating"}
_REQUIRED = ("user", "item", "ts")


def _stem(path: Path) -> str:
    """A file's name without its data suffixes (``a.csv.gz`` -> ``a``)."""
    name = path.name
    for suffix in (".gz", ".json", ".jsonl", ".csv", ".tsv", ".parquet", ".inter"):
        name = name.removesuffix(suffix)
    return name


def _map_columns(header: Sequence[str], mapping: dict[str, str | None], path: Path
                 ) -> dict[str, str]:
    """Role -> column name: given names must exist, absent optional defaults are skipped."""
    roles = {}
    for role, default in TABLE_DEFAULTS.items():
        given = mapping.get(role)
        column = given or default
        if column in header:
            roles[role] = column
        elif given is not None or role in _REQUIRED:
            public = "timestamp" if role == "ts" else role   # the mapping's name of the role
            hint = f" (name it: --columns {public}=COLUMN)" if given is None else ""
            raise ValueError(f"{path.name}: no column {column!r} for {public}{hint}; "
                             f"columns: {list(header)}")
    return roles


@dataclass
class _CsvRecords:
    """CSV records with the lines they came from; bad ones as ``(line, problem, raw)``."""

    rows: list[list[str]] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    bad: list[tuple[int, str, int]] = field(default_factory=list)  # (start, problem, end)


def _next_record(reader: Iterator[list[str]]) -> tuple[list[str] | None, str] | None:
    """The reader's next row (or None and the parse error); None at the end."""
    try:
        return next(reader), ""
    except StopIteration:
        return None
    except csv.Error as error:
        return None, f"unparseable CSV: {error}"


def _swallows_rows(lines: list[str], start: int, end: int, delimiter: str,
                   n_fields: int) -> bool:
    """Whether a record over lines ``start..end`` holds lines that are rows on their own
    (the sign of a stray quote rather than a quoted field with line breaks)."""
    for text in lines[start:end - 1]:  # the lines strictly inside the record
        fields = next(csv.reader([text], delimiter=delimiter), [])
        if len(fields) == n_fields:
            return True
    return False


def _parse_csv(lines: list[str], delimiter: str, n_fields: int, first: int) -> _CsvRecords:
    """Records from line ``first`` on; blank lines are skipped.

    Quoted fields may span lines. A record that cannot be parsed, or spans several lines
    and has the wrong number of fields or swallows lines that are rows on their own, is
    a stray quote: only its first line is rejected and parsing restarts on the next
    line, so one bad quote cannot swallow the valid lines after it.
    """
    out = _CsvRecords()
    position = first
    while position <= len(lines):
        remaining = map(lines.__getitem__, range(position - 1, len(lines)))  # O(1) to start
        reader = csv.reader(remaining, delimiter=delimiter)
        base, previous, position = position - 1, 0, len(lines) + 1
        while (record := _next_record(reader)) is not None:
            row, problem = record
            start, end, previous = base + previous + 1, base + reader.line_num, reader.line_num
            if row is not None and len(row) <= 1 and not "".join(row).strip():
                continue  # blank line
            spans = end > start
            if row is not None and len(row) == n_fields and not (
                    spans and _swallows_rows(lines, start, end, delimiter, n_fields)):
                out.rows.append(row)
                out.starts.append(start)
                out.ends.append(end)
                continue
            if row is None or not spans:
                out.bad.append((start, problem or f"expected {n_fields} fields, got {len(row)}",
                                start if row is None else end))
                if row is None:
                    position = start + 1
                    break
                continue
            out.bad.append((start, f"a quote opened on this line is only closed on line {end}"
                                   " (a stray quote?)", start))
            position = start + 1
            break
    return out


def _read_csv(path: Path, delimiter: str) -> tuple[list[str], dict[str, Sequence], RawEvents]:
    """Header, columns by header name, and a RawEvents shell (source, lines, rejects).

    Files without quote characters (the common case) are split with Arrow kernels;
    others go through the ``csv`` module.
    """
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    data = data.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark, as spreadsheets write
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and '"' not in text:
        return _read_plain_csv(path, text, delimiter)
    return _read_quoted_csv(path, data.decode("utf-8", errors="surrogateescape"), delimiter)


def _read_plain_csv(path: Path, text: str, delimiter: str
                    ) -> tuple[list[str], dict[str, Sequence], RawEvents]:
    """A CSV without quoting: every line is one record, fields split on ``delimiter``."""
    lines = pc.utf8_rtrim(pc.list_flatten(pc.split_pattern(
        pa.array([text], pa.large_string()), "\n")), characters="\r")
    header = [h.strip() for h in lines[0].as_py().split(delimiter)]
    if not any(header):
        raise ValueError(f"{path}: empty file, expected a header line")
    body = lines.slice(1)
    blank = pc.equal(pc.utf8_trim_whitespace(body), "").to_numpy(zero_copy_only=False)
    n_fields = pc.add(pc.count_substring(body, delimiter), 1).to_numpy()
    good = ~blank & (n_fields == len(header))
    rejected = [
        (int(k) + 2, Rejected(Reason.MALFORMED.value,
                              f"expected {len(header)} fields, got {n_fields[k]}",
                              body[int(k)].as_py().encode(), f"{path.name}:{k + 2}"))
        for k in np.flatnonzero(~blank & ~good)]
    flat = pc.list_flatten(pc.split_pattern(body.filter(pa.array(good)), delimiter))
    width = len(header)
    columns = {name: flat.take(pa.array(np.arange(j, len(flat), width)))
               for j, name in enumerate(header)}
    numbers = np.flatnonzero(good) + 2
    shell = RawEvents(source=path.name, user=(), item=(), ts=(), line=numbers,
                      raw=lambda i: body[int(numbers[i]) - 2].as_py().encode(),
                      rejected=rejected)
    return header, columns, shell


def _read_quoted_csv(path: Path, text: str, delimiter: str
                     ) -> tuple[list[str], dict[str, Sequence], RawEvents]:
    """A CSV that may quote fields, parsed record by record with the ``csv`` module."""
    lines = io.StringIO(text, newline="").readlines()
    encode = _encoder("utf-8")
    header = [h.strip() for h in next(csv.reader(lines[:1], delimiter=delimiter), [])]
    if not header:
        raise ValueError(f"{path}: empty file, expected a header line")

    def raw_of(start: int, end: int) -> bytes:
        return encode("".join(lines[start - 1:end]).rstrip("\r\n"))

    records = _parse_csv(lines, delimiter, len(header), 2)
    rejected = [(start, Rejected(Reason.MALFORMED.value, problem, raw_of(start, end),
                                 f"{path.name}:{start}"))
                for start, problem, end in records.bad]
    columns = list(zip(*records.rows, strict=True)) if records.rows else [()] * len(header)
    starts, ends = records.starts, records.ends
    shell = RawEvents(source=path.name, user=(), item=(), ts=(), line=starts,
                      raw=lambda i: raw_of(starts[i], ends[i]), rejected=rejected)
    return header, dict(zip(header, columns, strict=True)), shell


def _parquet_column(series: pd.Series, role: str) -> np.ndarray | pd.Series:
    """A Parquet column in the builder's terms: timestamps numeric, the rest text."""
    if pd.api.types.is_datetime64_any_dtype(series):
        dates = series.dt.tz_localize("UTC") if series.dt.tz is None else series
        return (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(
            dtype=np.float64, na_value=np.nan)
    if role == "ts" and pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(
            series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    if pd.api.types.is_bool_dtype(series):
        return series.map({True: "1", False: "0"})
    if pd.api.types.is_float_dtype(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        text = series.astype("str").to_numpy(dtype=object)
        whole = np.isfinite(values) & (values == np.trunc(values))
        text[whole] = values[whole].astype(np.int64).astype(str)
        text[np.isnan(values)] = ""
        return pd.Series(text, dtype=object)
    return series


def load_table(path: Path, *, user: str | None = None, item: str | None = None,
               timestamp: str | None = None, event: str | None = None,
               category: str | None = None, rating: str | None = None,
               min_rating: float | None = None, name: str | None = None) -> InteractionLog:
    """A CSV/TSV (optionally gzipped) or Parquet table of events.

    Columns default to ``user``, ``item``, ``timestamp`` (required) and ``event``,
    ``category``, ``rating`` (used when present); the keyword arguments map other
    names. Events are ``click``/``exposure``/``1``/``0``; without an event column every
    row is a click. Timestamps are unix seconds or ISO-8601 dates. Lines with the wrong
    number of fields are rejected as malformed, with their line numbers.
    """
    path = Path(path)
    mapping = {"user": user, "item": item, "ts": timestamp, "event": event,
               "category": category, "rating": rating}
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".parquet":
        frame = pd.read_parquet(path)
        roles = _map_columns(list(frame.columns), mapping, path)
        picked = {role: _parquet_column(frame[col], role) for role, col in roles.items()}
        raw = RawEvents(
            source=path.name, line=np.arange(1, len(frame) + 1),
            raw=lambda i: frame.iloc[i:i + 1].to_json(orient="records", lines=True,
                                                      date_format="iso").strip().encode(),
            **picked)
    else:
        delimiter = "\t" if ".tsv" in suffixes else ","
        header, columns, raw = _read_csv(path, delimiter)
        roles = _map_columns(header, mapping, path)
        for role, col in roles.items():
            setattr(raw, role, columns[col])
    return build_log(name or _stem(path), raw, min_rating=min_rating, allow_dates=True)


# --- k-core ------------------------------------------------------------------------------


def kcore(log: InteractionLog, k: int) -> InteractionLog:
    """Keep users and items with at least ``k`` clicks, repeatedly until stable.

    Exposures of removed users and items go too; ids are made dense again (in order of
    first appearance) and side information stays aligned. ``k <= 0`` returns ``log``.
    """
    if k <= 0:
        return log
    click = log.event == CLICK
    keep = np.ones(log.n_events, dtype=bool)
    while True:
        users = np.bincount(log.user[keep & click], minlength=log.n_users)
        items = np.bincount(log.item[keep & click], minlength=log.n_items)
        new = keep & (users[log.user] >= k) & (items[log.item] >= k)
        if np.array_equal(new, keep):
            break
        keep = new
    return _redensify(log, keep)


def _redensify(log: InteractionLog, keep: np.ndarray) -> InteractionLog:
    """Rows in ``keep`` with dense ids renumbered and side information re-indexed."""
    user_code, users = pd.factorize(log.user[keep])
    item_code, items = pd.factorize(log.item[keep])
    return InteractionLog(
        name=log.name,
        user=user_code.astype(np.int32),
        item=item_code.astype(np.int32),
        ts=log.ts[keep],
        event=log.event[keep],
        user_ids=log.user_ids[users],
        item_ids=log.item_ids[items],
        item_category=None if log.item_category is None else log.item_category[items],
        category_names=log.category_names,
        item_titles=None if log.item_titles is None else [log.item_titles[i] for i in items],
        user_features={f: v[users] for f, v in log.user_features.items()},
        user_feature_names=log.user_feature_names,
        rejected=log.rejected,
    )
