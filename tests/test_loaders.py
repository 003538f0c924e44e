"""Loaders: every format parses into a valid, time-ordered InteractionLog with dense ids,
and every bad row is rejected with its reason and line number."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dcrec.replay.datasets import load_dataset
from dcrec.replay.loaders import ML_GENRES, kcore, load_table
from dcrec.streams.schema import CLICK, EXPOSURE, MAX_TIMESTAMP, Reason

# --- MovieLens and RecBole --------------------------------------------------------------

U_DATA = [  # user item rating ts, as in ML-100K (not in time order)
    (196, 242, 3, 881250949), (186, 302, 3, 891717742), (22, 377, 1, 878887116),
    (244, 51, 2, 880606923), (166, 346, 1, 886397596), (298, 474, 4, 884182806),
    (115, 265, 2, 881171488), (253, 465, 5, 891628467), (305, 451, 3, 886324817),
    (6, 86, 3, 883603013),
]
USERS = {196: (49, "M", "writer"), 186: (39, "F", "executive"), 22: (25, "M", "writer"),
         244: (28, "M", "technician"), 166: (47, "M", "educator"), 298: (44, "M", "executive"),
         115: (31, "M", "engineer"), 253: (26, "F", "librarian"), 305: (23, "M", "programmer"),
         6: (42, "M", "executive"), 999: (70, "F", "retired")}  # 999 never rates
TITLES = {242: ("Kolya (1996)", ["Comedy"]), 302: ("L.A. Confidential (1997)",
                                                   ["Crime", "Film-Noir", "Mystery"]),
          377: ("Heavyweights (1994)", ["Children's", "Comedy"]),
          51: ("Legends of the Fall (1994)", ["Drama", "Romance", "War", "Western"]),
          346: ("Jackie Brown (1997)", ["Crime", "Drama"]),
          474: ("Dr. Strangelove (1963)", ["Sci-Fi", "War"]),
          265: ("Hunt for Red October, The (1990)", ["Action", "Thriller"]),
          465: ("Jungle Book, The (1994)", ["Adventure", "Children's", "Romance"]),
          451: ("Grease (1978)", ["Comedy", "Musical", "Romance"]),
          86: ("Remains of the Day, The (1993)", ["Drama"]),
          1: ("Café au lait (1994)", ["Comedy"])}  # item 1 never rated; latin-1 title


def write_ml100k(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in U_DATA))
    (directory / "u.user").write_text("".join(
        f"{u}|{a}|{g}|{o}|00000\n" for u, (a, g, o) in USERS.items()))
    (directory / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(ML_GENRES))
                                       + "\n")
    lines = []
    for item, (title, genres) in TITLES.items():
        flags = "|".join("1" if g in genres else "0" for g in ML_GENRES)
        lines.append(f"{item}|{title}|01-Jan-1994||http://x|{flags}\n")
    (directory / "u.item").write_bytes("".join(lines).encode("latin-1"))
    return directory


def write_atomic(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in U_DATA]
    (directory / "toy.inter").write_text("\n".join(inter) + "\n")
    users = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    users += [f"{u}\t{a}\t{g}\t{o}\t00000" for u, (a, g, o) in USERS.items()]
    (directory / "toy.user").write_text("\n".join(users) + "\n")
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"{i}\t{t[:-7]}\t{t[-5:-1]}\t{' '.join(g)}" for i, (t, g) in TITLES.items()]
    (directory / "toy.item").write_text("\n".join(items) + "\n")
    return directory


def test_ml100k_native_layout(tmp_path):
    log = load_dataset(str(write_ml100k(tmp_path / "ml-mini")))
    assert log.name == "ml-mini"
    assert (log.n_events, log.n_clicks, log.n_exposures) == (10, 10, 0)
    assert (log.n_users, log.n_items) == (10, 10)
    assert np.all(np.diff(log.ts) >= 0)
    first = min(U_DATA, key=lambda r: r[3])  # (22, 377, 1, 878887116)
    assert (log.user_ids[0], log.item_ids[0], log.ts[0]) == ("22", "377", first[3])
    assert log.user.dtype == np.int32 and log.ts.dtype == np.int64 and log.event.dtype == np.int8
    assert log.category_names == ML_GENRES
    item = list(log.item_ids).index("302")
    assert log.category_names[log.item_category[item]] == "Crime"  # the first listed genre
    assert log.item_titles[item] == "L.A. Confidential"
    user = list(log.user_ids).index("196")
    names = log.user_feature_names
    assert names["age"][log.user_features["age"][user]] == "45-49"
    assert names["gender"][log.user_features["gender"][user]] == "M"
    assert names["occupation"][log.user_features["occupation"][user]] == "writer"
    assert "retired" not in names["occupation"]  # user 999 never rated
    assert all(len(v) == log.n_users for v in log.user_features.values())
    assert log.rejected == []


def test_ml100k_latin1_titles(tmp_path):
    directory = write_ml100k(tmp_path / "ml")
    with open(directory / "u.data", "a") as out:
        out.write("196\t1\t4\t881250950\n")
    log = load_dataset(str(directory))
    assert log.item_titles[list(log.item_ids).index("1")] == "Café au lait"


def test_recbole_atomic_matches_native(tmp_path):
    native = load_dataset(str(write_ml100k(tmp_path / "native")))
    atomic_dir = write_atomic(tmp_path / "toy")
    for spec in (atomic_dir, atomic_dir / "toy.inter"):
        atomic = load_dataset(str(spec))
        assert atomic.name == "toy"
        for col in ("user", "item", "ts", "event", "user_ids", "item_ids", "item_category"):
            np.testing.assert_array_equal(getattr(atomic, col), getattr(native, col))
        assert atomic.category_names == native.category_names
        assert atomic.item_titles == native.item_titles
        assert atomic.user_feature_names == native.user_feature_names
        for name, values in native.user_features.items():
            np.testing.assert_array_equal(atomic.user_features[name], values)


def test_ml1m_layout(tmp_path):
    directory = tmp_path / "ml-1m"
    directory.mkdir()
    (directory / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
        "2::3408::1::978299000\nbroken line\n")
    (directory / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (directory / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "3408::Erin Brockovich (2000)::Drama\n".encode("latin-1"))
    log = load_dataset(str(directory / "ratings.dat"))
    assert (log.n_clicks, log.n_users, log.n_items) == (4, 2, 3)
    assert list(log.user_ids) == ["2", "1"]  # user 2 rated first
    assert [r.reason for r in log.rejected] == ["malformed"]
    assert log.rejected[0].source == "ratings.dat:5"
    assert log.rejected[0].raw == b"broken line"
    item = list(log.item_ids).index("661")
    assert log.category_names[log.item_category[item]] == "Animation"
    assert log.item_titles[item] == "James and the Giant Peach"
    ages = [log.user_feature_names["age"][a] for a in log.user_features["age"]]
    occupations = [log.user_feature_names["occupation"][o]
                   for o in log.user_features["occupation"]]
    assert ages == ["56+", "<18"] and occupations == ["self-employed", "K-12 student"]
    assert load_dataset(str(directory), min_rating=4).n_clicks == 2


# --- Amazon reviews ----------------------------------------------------------------------

AMAZON = [
    {"reviewerID": "A1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1400000000},
    {"reviewerID": "A2", "asin": "B02", "overall": 3.0, "unixReviewTime": 1300000000,
     "category": ["Books", "Fiction"]},
    {"user_id": "A3", "asin": "B03X", "parent_asin": "B03", "rating": 4.0,
     "timestamp": 1588687728923},
    {"reviewerID": "A1", "asin": "B02", "overall": 1.0},
]


def _amazon_text() -> str:
    lines = [json.dumps(r) for r in AMAZON]
    lines.insert(2, '{"reviewerID": "A9", "asin": ')  # truncated JSON, line 3
    lines.insert(3, "")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", ["reviews.json", "reviews.jsonl", "reviews.json.gz"])
def test_amazon_reviews(tmp_path, name):
    path = tmp_path / name
    data = _amazon_text().encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    log = load_dataset(str(path))
    assert log.name == "reviews"
    assert list(log.user_ids) == ["A2", "A1", "A3"]
    assert list(log.item_ids) == ["B02", "B01", "B03"]  # 2023 format: parent_asin
    assert list(log.ts) == [1300000000, 1400000000, 1588687728]  # ms -> s
    assert [(r.reason, r.source) for r in log.rejected] == [
        ("malformed", f"{name}:3"), ("missing_field", f"{name}:6")]
    assert log.rejected[0].raw == b'{"reviewerID": "A9", "asin": '
    assert log.category_names[log.item_category[0]] == "Books"
    assert log.category_names[log.item_category[1]] == "unknown"
    assert load_dataset(str(path), min_rating=4).n_clicks == 2


# --- tables ------------------------------------------------------------------------------


def test_csv_with_mapping_flags(tmp_path):
    path = tmp_path / "custom.csv"
    path.write_text("uid,iid,when,score,genre\n"
                    "alice,x,100,5,rock\nbob,y,50,2,jazz\nalice,y,100.9,4,jazz\n")
    log = load_dataset(str(path), user="uid", item="iid", timestamp="when", rating="score",
                       category="genre")
    assert list(log.user_ids) == ["bob", "alice"]
    assert list(log.ts) == [50, 100, 100]  # float seconds are truncated
    assert log.category_names[log.item_category[list(log.item_ids).index("x")]] == "rock"
    assert load_dataset(str(path), user="uid", item="iid", timestamp="when", rating="score",
                        min_rating=4).n_clicks == 2
    with pytest.raises(ValueError, match="no column 'user'"):
        load_dataset(str(path))
    with pytest.raises(ValueError, match="no column 'nope'"):
        load_dataset(str(path), user="uid", item="iid", timestamp="when", event="nope")


def test_tsv_gz_and_iso_dates(tmp_path):
    path = tmp_path / "events.tsv.gz"
    text = ("user\titem\ttimestamp\n"
            "a\tx\t2020-01-01T00:00:10Z\nb\ty\t2020-01-01\nc\tz\t1577836805\n"
            "d\tw\tyesterday\n")
    path.write_bytes(gzip.compress(text.encode()))
    log = load_dataset(str(path))
    assert list(log.user_ids) == ["b", "c", "a"]
    assert list(log.ts) == [1577836800, 1577836805, 1577836810]
    assert [(r.reason, r.source) for r in log.rejected] == [("bad_type", "events.tsv.gz:5")]


def test_csv_with_exposures(tmp_path):
    path = tmp_path / "logged.csv"
    path.write_text("user,item,timestamp,event\n"
                    "u1,a,10,exposure\nu1,b,10,EXPOSURE\nu1,a,11,click\nu2,b,12,0\n"
                    "u2,a,13,1\nu2,c,14,Click\n")
    log = load_dataset(str(path))
    assert (log.n_clicks, log.n_exposures) == (3, 3)
    assert list(log.event) == [EXPOSURE, EXPOSURE, CLICK, EXPOSURE, CLICK, CLICK]
    assert log.has_exposures and log.rejected == []


def test_parquet(tmp_path):
    path = tmp_path / "events.parquet"
    frame = pd.DataFrame({
        "user": [7, 8, 7, 9],
        "item": [100, 100, 101, 102],
        "timestamp": pd.to_datetime([1_600_000_020, 1_600_000_010, 1_600_000_030, None],
                                    unit="s"),
        "event": [1, 0, 1, 1],
        "category": ["a", "a", None, "b"],
    })
    frame.to_parquet(path)
    log = load_dataset(str(path))
    assert list(log.user_ids) == ["8", "7"]
    assert list(log.item_ids) == ["100", "101"]
    assert list(log.ts) == [1_600_000_010, 1_600_000_020, 1_600_000_030]
    assert list(log.event) == [EXPOSURE, CLICK, CLICK]
    assert [(r.reason, r.source) for r in log.rejected] == [("missing_field", "events.parquet:4")]
    assert b'"user":9' in log.rejected[0].raw
    assert log.category_names[log.item_category[1]] == "unknown"


def test_parquet_numeric_timestamps_and_mapping(tmp_path):
    path = tmp_path / "p.parquet"
    pd.DataFrame({"u": ["a", "b"], "i": ["x", "y"], "t": [20.7, 10.0]}).to_parquet(path)
    log = load_dataset(str(path), user="u", item="i", timestamp="t")
    assert list(log.ts) == [10, 20] and list(log.user_ids) == ["b", "a"]


def _thousand_rows_with_ten_bad(path: Path) -> dict[int, str]:
    """1000 data rows, 10 of them bad; returns {line number: expected reason}."""
    bad = {
        51: ("u1,i1,100,click,extra", Reason.MALFORMED),
        102: ("u1,i1", Reason.MALFORMED),
        203: ("u2,i2,yesterday,click", Reason.BAD_TYPE),
        304: (",i3,100,click", Reason.MISSING_FIELD),
        405: ("u4,i4,,click", Reason.MISSING_FIELD),
        506: ("u5,i5,-3,click", Reason.NEGATIVE_TIMESTAMP),
        607: (f"u6,i6,{MAX_TIMESTAMP + 1},click", Reason.ABSURD_TIMESTAMP),
        708: ("u7,i7,100,like", Reason.UNKNOWN_EVENT),
        809: ("u0,i0,1000000000,click", Reason.DUPLICATE),  # repeats line 2
        910: ("u0,i0,1000000000", Reason.MALFORMED),
    }
    lines = ["user,item,timestamp,event"]
    for number in range(2, 1002):
        k = number - 2
        lines.append(bad[number][0] if number in bad else
                     f"u{k % 37},i{k % 101},{1_000_000_000 + k // 3},"
                     f"{'exposure' if k % 5 == 4 else 'click'}")
    path.write_text("\n".join(lines) + "\n")
    return {number: reason for number, (_, reason) in bad.items()}


def test_csv_with_one_percent_malformed_lines(tmp_path):
    path = tmp_path / "dirty.csv"
    expected = _thousand_rows_with_ten_bad(path)
    log = load_dataset(str(path))
    assert log.n_events == 990
    assert log.n_exposures == sum(1 for k in range(1000) if k % 5 == 4
                                  and k + 2 not in expected)
    got = [(r.reason, r.source) for r in log.rejected]
    assert got == [(reason.value, f"dirty.csv:{n}") for n, reason in sorted(expected.items())]
    by_line = {int(r.source.split(":")[1]): r for r in log.rejected}
    assert by_line[809].detail == "repeat of line 2"
    assert by_line[203].raw == b"u2,i2,yesterday,click"
    assert "expected 4 fields, got 5" in by_line[51].detail


def test_quoted_csv_stray_quote_rejects_one_line(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text('user,item,timestamp\n"a, the user",x,10\nb,"y\nz",11\n'
                    'c,"broken,12\nd,w,13\ne,v,14\n')
    log = load_dataset(str(path))
    assert list(log.user_ids) == ["a, the user", "b", "d", "e"]
    assert list(log.item_ids) == ["x", "y\nz", "w", "v"]
    assert [(r.reason, r.source) for r in log.rejected] == [("malformed", "quoted.csv:5")]


def test_stray_quotes_do_not_swallow_valid_rows(tmp_path):
    path = tmp_path / "stray.csv"
    rows = [f"u{k},i{k},{k}" for k in range(20)]
    rows[3] = 'u3,"i3,3'  # the quote closes on row 9, giving a 3-field record
    rows[9] = 'u9,"i9,9'
    rows[15] = 'u15,i15,"15'  # never closed
    path.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    log = load_dataset(str(path))
    assert log.n_events == 17
    assert [r.source for r in log.rejected] == ["stray.csv:5", "stray.csv:11", "stray.csv:17"]
    assert "stray quote" in log.rejected[0].detail
    assert log.rejected[0].raw == b'u3,"i3,3'


def test_stable_time_order_with_ties(tmp_path):
    path = tmp_path / "ties.csv"
    rows = [("u3", "c", 5), ("u1", "a", 7), ("u2", "b", 5), ("u1", "b", 5), ("u2", "a", 7)]
    path.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    log = load_dataset(str(path))
    got = [(log.user_ids[u], log.item_ids[i], t) for u, i, t in zip(log.user, log.item, log.ts,
                                                                   strict=True)]
    assert got == [rows[0], rows[2], rows[3], rows[1], rows[4]]


def test_dense_ids_in_order_of_first_appearance(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("user,item,timestamp\n9,x,30\n5,y,10\n9,y,20\n7,x,40\n5,z,50\n")
    log = load_dataset(str(path))
    assert list(log.user_ids) == ["5", "9", "7"] and list(log.item_ids) == ["y", "x", "z"]
    assert list(log.user) == [0, 1, 1, 2, 0] and list(log.item) == [0, 0, 1, 1, 2]


def test_kcore(tmp_path):
    path = tmp_path / "k.csv"
    rows = ["a,1,1", "a,2,2", "b,1,3", "b,2,4", "c,1,5", "c,3,6", "d,3,7",
            "a,3,8,exposure", "d,1,9,exposure", "b,1,10,exposure"]
    path.write_text("user,item,timestamp,event\n" + "".join(
        r + ("\n" if r.endswith("exposure") else ",click\n") for r in rows))
    log = load_dataset(str(path))
    core = kcore(log, 2)
    # item 3 has 2 clicks but d (1 click) goes, so 3 goes, so c goes: a and b remain
    assert sorted(core.user_ids) == ["a", "b"] and sorted(core.item_ids) == ["1", "2"]
    assert core.n_clicks == 4 and core.n_exposures == 1  # b's exposure of item 1 stays
    assert core.user.max() == core.n_users - 1 and core.item.max() == core.n_items - 1
    assert np.all(np.diff(core.ts) >= 0)
    assert kcore(log, 0) is log
    assert load_dataset(str(path), kcore=2).n_events == core.n_events


def test_kcore_keeps_side_information_aligned(tmp_path):
    directory = write_ml100k(tmp_path / "ml")
    with open(directory / "u.data", "a") as out:
        out.write("196\t302\t4\t891717743\n22\t242\t4\t891717744\n186\t242\t4\t891717745\n")
    log = load_dataset(str(directory))
    core = kcore(log, 2)  # 22 goes with item 377 (one click), leaving 242 with two
    assert set(core.item_ids) == {"242", "302"} and set(core.user_ids) == {"196", "186"}
    for dense, original in enumerate(core.item_ids):
        old = list(log.item_ids).index(original)
        assert core.item_category[dense] == log.item_category[old]
        assert core.item_titles[dense] == log.item_titles[old]
    for dense, original in enumerate(core.user_ids):
        old = list(log.user_ids).index(original)
        for name, values in core.user_features.items():
            assert values[dense] == log.user_features[name][old]


def test_unknown_spec_is_a_helpful_value_error(tmp_path):
    with pytest.raises(ValueError, match="ml-100k"):
        load_dataset("no-such-dataset")
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(ValueError, match="CSV"):
        load_dataset(str(odd))
    with pytest.raises(ValueError, match="no dataset"):
        load_dataset(str(tmp_path))


def test_min_rating_needs_a_rating_column(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("user,item,timestamp\na,x,1\n")
    with pytest.raises(ValueError, match="rating"):
        load_table(path, min_rating=3)


def test_amazon_loose_json_of_the_2014_dumps(tmp_path):
    path = tmp_path / "loose.json"
    path.write_text("{'reviewerID': 'A1', 'asin': 'B1', 'unixReviewTime': 1400000000}\n"
                    "{'reviewerID': 'A2', 'asin': __import__('os')}\n")
    log = load_dataset(str(path))
    assert list(log.user_ids) == ["A1"]
    assert [r.reason for r in log.rejected] == ["malformed"]


def test_csv_with_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfuser,item,timestamp\r\na,b,1\r\n\r\nc,d,2\r\n")
    log = load_dataset(str(path))
    assert list(log.user_ids) == ["a", "c"] and list(log.item_ids) == ["b", "d"]
    assert log.rejected == []


def test_header_only_csv_is_an_empty_log(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("user,item,timestamp\n")
    log = load_dataset(str(path))
    assert (log.n_events, log.n_users, log.n_items) == (0, 0, 0)


def test_movielens_bad_values_are_rejected_not_fatal(tmp_path):
    directory = write_ml100k(tmp_path / "ml")
    with open(directory / "u.data", "a") as out:
        out.write("196\t242\t3\tnot-a-time\n196\t242\t3\t881250949\n\t242\t3\t881250950\n")
    log = load_dataset(str(directory))
    assert log.n_clicks == 10
    assert [(r.reason, r.source) for r in log.rejected] == [
        ("bad_type", "u.data:11"), ("duplicate", "u.data:12"), ("missing_field", "u.data:13")]
