"""Loaders for every source format: ids, ordering, catalogue fields, impressions, and malformed-input errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from thinkrec.data import DataFormatError, Dataset, load_dataset
from thinkrec.data.dataset import CATALOG_COLUMNS, IMPRESSION_SCHEMA, INTERACTION_SCHEMA
from thinkrec.data.loaders.amazon import load_amazon_path, load_amazon_reviews, read_amazon_reviews
from thinkrec.data.loaders.lcrec import load_lcrec, load_lcrec_path, read_inter_json, read_item_json
from thinkrec.data.loaders.mind import load_mind, read_behaviors, read_news
from thinkrec.data.loaders.movielens import load_ml1m, load_ml100k, load_movielens, load_movielens_csv
from thinkrec.data.loaders.recbole import load_recbole, read_atomic
from thinkrec.data.loaders.s3rec import load_s3rec, load_s3rec_path, read_s3rec_sequences
from thinkrec.data.loaders.tabular import load_table
from thinkrec.data.registry import DATASETS, FORMATS, NAMED_DATASETS, Format, detect_format

from .conftest import LCREC_INTER, Writer


def seqs(ds: Dataset) -> dict[str, list[str]]:
    """Each user's item sequence in original ids, keyed by original user id."""
    inter = ds.interactions.join(ds.users, on="user", maintain_order="left").join(
        ds.items.select("item", "item_id"), on="item", maintain_order="left"
    )
    out: dict[str, list[str]] = {}
    for u, i in inter.sort(["user", "ts"], maintain_order=True).select("user_id", "item_id").iter_rows():
        out.setdefault(u, []).append(i)
    return out


def check_schema(ds: Dataset) -> None:
    assert dict(ds.interactions.schema) == INTERACTION_SCHEMA
    for col, dtype in CATALOG_COLUMNS.items():
        assert ds.items.schema[col] == dtype, col
    assert ds.items["item"].to_list() == list(range(ds.n_items))
    assert ds.users["user"].to_list() == list(range(ds.n_users))
    # interactions are sorted by (user, ts)
    assert ds.interactions.equals(ds.interactions.sort(["user", "ts"], maintain_order=True))


def assert_error(
    exc: pytest.ExceptionInfo[DataFormatError], path: Path, line: int | None, field: str | None
) -> None:
    err = exc.value
    assert err.path == str(path)
    assert err.line == line
    assert err.field == field
    assert str(path) in str(err)
    if line is not None:
        assert f"line {line}" in str(err)
    if field is not None:
        assert f"field '{field}'" in str(err)


# ------------------------------------------------------------------------------------------------- S3-Rec
def test_s3rec_ids_and_metadata(writer: Writer) -> None:
    seq = writer("s3/Toy.txt", "1 3 1\n2 2 3 1\n")
    writer(
        "s3/Toy.items.jsonl",
        "".join(
            json.dumps({"s3rec_id": i, "title": f"t{i}", "categories": ["A", "B"]}) + "\n" for i in (3, 1, 2)
        ),
    )
    ds = load_s3rec(seq, seq.with_name("Toy.items.jsonl"), name="toy")
    check_schema(ds)
    assert ds.items["item_id"].to_list() == ["1", "2", "3"]  # dense id = s3rec id - 1
    assert ds.items["title"].to_list() == ["t1", "t2", "t3"]
    assert seqs(ds) == {"1": ["3", "1"], "2": ["2", "3", "1"]}


def test_s3rec_without_metadata_numbers_by_int_id(writer: Writer) -> None:
    seq = writer("Toy.txt", "1 10 2\n2 2 9\n")
    ds = load_s3rec(seq)
    assert ds.items["item_id"].to_list() == ["2", "9", "10"]


def test_s3rec_item_attributes_fill_categories(writer: Writer) -> None:
    seq = writer("Toy.txt", "1 1 2\n2 2 3\n")
    attrs = writer("Toy_item2attributes.json", json.dumps({"1": [4, 7], "2": [7], "3": []}))
    ds = load_s3rec(seq, attributes=attrs)
    assert ds.items["categories"].to_list() == [["attr4", "attr7"], ["attr7"], []]
    bad = writer("bad_item2attributes.json", json.dumps({"1": [4, "x"]}))
    with pytest.raises(DataFormatError, match="integer attribute ids") as exc:
        load_s3rec(seq, attributes=bad)
    assert exc.value.field == "1"


def test_s3rec_folder_finds_item_attributes(writer: Writer, tmp_path: Path) -> None:
    """The standard S3-Rec layout (``<Name>.txt`` + ``<Name>_item2attributes.json``, no titles) loaded as a path
    carries its attributes into the catalogue's ``categories``, as the named ``sports`` preset does."""
    seq = writer("s3/Toy.txt", "1 1 2\n2 2 3\n")
    writer("s3/Toy_item2attributes.json", json.dumps({"1": [4, 7], "2": [7], "3": []}))
    writer("s3/readme.txt", "not a sequence file")
    expected = [["attr4", "attr7"], ["attr7"], []]
    for ds in (
        load_s3rec_path(seq.parent),
        load_s3rec_path(seq),
        load_dataset(str(seq.parent), format="s3rec"),
        load_dataset(str(seq.parent)),  # auto-detected
    ):
        check_schema(ds)
        assert ds.items["item_id"].to_list() == ["1", "2", "3"]
        assert ds.items["categories"].to_list() == expected
    assert detect_format(seq.parent) == "s3rec"
    # An explicit attributes file under another name; an explicit path that does not exist is an error.
    other = writer("elsewhere/attrs.json", json.dumps({"1": [9]}))
    ds = load_s3rec_path(seq.parent, attributes=other)
    assert ds.items["categories"].to_list() == [["attr9"], [], []]
    with pytest.raises(FileNotFoundError, match="item attributes file not found"):
        load_s3rec_path(seq.parent, attributes=tmp_path / "missing_item2attributes.json")
    # Item metadata with categories of its own wins over the attribute ids.
    writer("s3/Toy.items.jsonl", json.dumps({"s3rec_id": 1, "title": "t1", "categories": ["A"]}) + "\n")
    assert load_s3rec_path(seq.parent).items["categories"].to_list() == [["A"], [], []]


def test_s3rec_folder_needs_one_sequence_file(writer: Writer, tmp_path: Path) -> None:
    writer("two/A.txt", "1 1\n")
    writer("two/B.txt", "1 1\n")
    with pytest.raises(
        FileNotFoundError, match=r"expected exactly one S3-Rec '\*\.txt' sequence file .* found 2"
    ):
        load_s3rec_path(tmp_path / "two")
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="found 0"):
        load_s3rec_path(tmp_path / "none")


def test_s3rec_errors(writer: Writer, tmp_path: Path) -> None:
    bad = writer("bad.txt", "1 2 3\n\n2 4 x5\n")
    with pytest.raises(DataFormatError) as exc:
        read_s3rec_sequences(bad)
    assert_error(exc, bad, 3, "item #2")
    lonely = writer("lonely.txt", "1 2\n7\n")
    with pytest.raises(DataFormatError) as exc:
        read_s3rec_sequences(lonely)
    assert exc.value.line == 2
    with pytest.raises(FileNotFoundError, match="S3-Rec sequence file not found"):
        load_s3rec(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------------- LC-Rec
def test_lcrec_dense_ids_equal_file_ids(lcrec_dir: Path) -> None:
    ds = load_lcrec_path(lcrec_dir)
    check_schema(ds)
    assert ds.name == "Toy"
    assert ds.items["item_id"].to_list() == ["0", "1", "2", "3"]
    assert ds.users["user_id"].to_list() == ["0", "1", "2"]
    assert ds.n_interactions == sum(len(v) for v in LCREC_INTER.values())
    # file ids are dense 0-based, so the dense sequences equal the file's lists
    got = {u: [int(i) for i in s] for u, s in seqs(ds).items()}
    assert got == LCREC_INTER
    item = ds.interactions.filter(pl.col("user") == 2)["item"].to_list()
    assert item == LCREC_INTER["2"]
    row = ds.items.row(0, named=True)
    assert row["title"] == "Shampoo" and row["brand"] == "Acme"
    assert row["description"] == "Gentle daily use"  # stringified list joined
    assert ds.items.row(1, named=True)["categories"] == ["Beauty", "Tools"]
    assert ds.items.row(1, named=True)["price"] == 3.5
    assert ds.items["sid"].to_list()[3] == ["<a_3>", "<b_1>"]


def test_lcrec_without_catalogue_sorts_by_int(writer: Writer) -> None:
    path = writer("x.inter.json", json.dumps({"5": [10, 2], "1": [2]}))
    ds = load_lcrec(path)
    assert ds.items["item_id"].to_list() == ["2", "10"]
    assert ds.users["user_id"].to_list() == ["5", "1"]  # users keep file order
    assert "sid" not in ds.items.columns


def test_lcrec_errors(writer: Writer, tmp_path: Path) -> None:
    bad_json = writer("a.inter.json", '{\n  "0": [1, 2],\n  "1": [3,,]\n}')
    with pytest.raises(DataFormatError) as exc:
        read_inter_json(bad_json)
    assert exc.value.line == 3 and "invalid JSON" in str(exc.value)
    bad_id = writer("b.inter.json", '{\n  "0": [1, 2],\n  "1": [3, "x"]\n}')
    with pytest.raises(DataFormatError) as exc:
        read_inter_json(bad_id)
    assert_error(exc, bad_id, 3, "user 1 item #2")
    bad_key = writer("c.inter.json", '{\n  "0": [1],\n  "bob": [3]\n}')
    with pytest.raises(DataFormatError) as exc:
        read_inter_json(bad_key)
    assert_error(exc, bad_key, 3, "user")
    bad_item = writer("d.item.json", '{"0": {"title": "a"},\n "1": "just text"}')
    with pytest.raises(DataFormatError) as exc:
        read_item_json(bad_item)
    assert_error(exc, bad_item, 2, "item 1")
    with pytest.raises(FileNotFoundError, match="inter.json file not found"):
        load_lcrec(tmp_path / "none.inter.json")
    with pytest.raises(FileNotFoundError, match="item.json file not found"):
        load_lcrec(writer("ok.inter.json", '{"0": [0]}'), tmp_path / "no.item.json")


# ------------------------------------------------------------------------------------------------- RecBole
def test_recbole_atomic_types(recbole_dir: Path) -> None:
    frame, types = read_atomic(recbole_dir / "toy.item")
    assert types == {
        "item_id": "token",
        "movie_title": "token_seq",
        "release_year": "token",
        "class": "token_seq",
        "score": "float_seq",
    }
    assert frame["movie_title"].to_list()[0] == ["The", "Second", "One"]
    assert frame["score"].to_list() == [[1.0, 2.0], [], [3.0], []]


def test_recbole_load(recbole_dir: Path) -> None:
    ds = load_recbole(recbole_dir)
    check_schema(ds)
    assert ds.name == "toy"
    # .item order, unrated i9 dropped
    assert ds.items["item_id"].to_list() == ["i2", "i1", "i3"]
    assert ds.items["title"].to_list() == ["The Second One", "First", "Third Film"]
    assert ds.items["categories"].to_list() == [["Drama"], ["Animation", "Comedy"], []]
    assert ds.items["release_year"].to_list() == ["1999", "1995", "2001"]
    assert ds.items["score"].to_list()[0] == [1.0, 2.0]
    # time order, ties keep file order
    assert seqs(ds) == {"u1": ["i2", "i3", "i1"], "u2": ["i3"]}
    assert ds.interactions.filter(pl.col("user") == 0)["ts"].to_list() == [200, 200, 300]
    assert ds.interactions["rating"].to_list() == [3.0, 2.5, 4.0, 5.0]
    assert load_recbole(recbole_dir / "toy.inter", keep_all_items=True).n_items == 4


def test_recbole_configurable_fields_and_quoted_categories(writer: Writer) -> None:
    inter = writer("b/b.inter", "uid:token\tiid:token\n1\t7\n1\t8\n")
    writer(
        "b/b.item",
        "iid:token\tname:token\tcats:token_seq\tbrand:token\tprice:float\n"
        "7\tWAWO palette\t'Beauty', 'Makeup', 'Concealers & Neutralizers'\tCOKA\t5.04\n"
        "8\tOther\tA B\t\t\n",
    )
    ds = load_recbole(inter, user_field="uid", item_field="iid", title_field="name", category_field="cats")
    assert ds.items["title"].to_list() == ["WAWO palette", "Other"]
    assert ds.items["categories"].to_list() == [["Beauty", "Makeup", "Concealers & Neutralizers"], ["A", "B"]]
    assert ds.items["brand"].to_list() == ["COKA", ""]
    assert ds.items["price"].to_list() == [5.04, None]
    assert ds.interactions["ts"].to_list() == [0, 1]  # no timestamp field: file order


def test_recbole_quoted_fields(writer: Writer) -> None:
    # RecBole reads atomic files with pandas: a double-quoted field may hold tabs and newlines.
    item = writer(
        "q.item", 'item_id:token\ttitle:token\tprice:float\n1\t"Cream\n2 oz\twith tab"\t3\n2\tPlain\tcheap\n'
    )
    with pytest.raises(DataFormatError) as exc:
        read_atomic(item)
    assert_error(exc, item, 4, "price")  # the record after the two-line one starts on line 4
    item.write_text('item_id:token\ttitle:token\n1\t"Cream\n2 oz\twith tab"\n2\tPlain\n')
    frame, _ = read_atomic(item)
    assert frame["title"].to_list() == ["Cream\n2 oz\twith tab", "Plain"]


def test_recbole_errors(writer: Writer, tmp_path: Path) -> None:
    head = "user_id:token\titem_id:token\ttimestamp:float\n"
    short = writer("s.inter", head + "1\t2\t3\n1\t2\n")
    with pytest.raises(DataFormatError) as exc:
        load_recbole(short)
    assert_error(exc, short, 3, "timestamp")
    nonnum = writer("n.inter", head + "1\t2\t3\n1\t2\tyesterday\n")
    with pytest.raises(DataFormatError) as exc:
        load_recbole(nonnum)
    assert_error(exc, nonnum, 3, "timestamp")
    badhead = writer("h.inter", "user_id:token\titem_id\n1\t2\n")
    with pytest.raises(DataFormatError) as exc:
        load_recbole(badhead)
    assert_error(exc, badhead, 1, "item_id")
    nouser = writer("u.inter", "uid:token\titem_id:token\n1\t2\n")
    with pytest.raises(DataFormatError) as exc:
        load_recbole(nouser)
    assert_error(exc, nouser, 1, "user_id")
    with pytest.raises(DataFormatError) as exc:
        load_recbole(
            writer("t.inter", head + "1\t2\t3\n"),
            title_field="nope",
            item_path=writer("t.item", "item_id:token\n2\n"),
        )
    assert exc.value.field == "nope"
    with pytest.raises(FileNotFoundError, match="RecBole"):
        load_recbole(tmp_path / "absent.inter")


# ------------------------------------------------------------------------------------------------- MovieLens
def test_ml100k_original(ml100k_dir: Path) -> None:
    ds = load_ml100k(ml100k_dir)
    check_schema(ds)
    assert ds.users["user_id"].to_list() == ["1", "2"]  # numbered by integer id, not file order
    assert ds.items["item_id"].to_list() == ["10", "20", "30"]  # unrated 40 dropped
    assert ds.items["title"].to_list() == [
        "Toy Story (1995)",
        "Café Society (1997)",
        "Untitled",
    ]  # latin-1 decoded
    assert ds.items["categories"].to_list() == [["Animation", "Children's", "Comedy"], ["Drama"], ["Action"]]
    assert ds.items["year"].to_list() == [1995, 1997, 1990]  # last from the release date
    assert seqs(ds) == {"1": ["10", "20"], "2": ["30", "10"]}
    assert ds.interactions["rating"].to_list() == [5.0, 3.0, 1.0, 4.0]
    assert load_ml100k(ml100k_dir, keep_all_items=True).n_items == 4


def test_ml100k_layouts_agree(ml100k_dir: Path, ml100k_recbole_dir: Path) -> None:
    a, b = load_ml100k(ml100k_dir), load_ml100k(ml100k_recbole_dir)
    assert a.meta["layout"] == "original" and b.meta["layout"] == "recbole"
    assert a.interactions.equals(b.interactions)
    assert a.users.equals(b.users)
    assert a.items.select("item", "item_id", "categories", "year").equals(
        b.items.select("item", "item_id", "categories", "year")
    )
    assert b.items["title"].to_list()[1] == "Café Society"


def test_ml1m_ratings_and_sequences(ml1m_dir: Path, ml1m_seq_dir: Path) -> None:
    ds = load_ml1m(ml1m_dir)
    check_schema(ds)
    assert ds.items["item_id"].to_list() == ["661", "914", "1193"]
    assert ds.items["year"].to_list() == [1996, 1964, 1975]
    assert seqs(ds) == {"1": ["914", "1193", "661"], "2": ["1193"]}  # by timestamp
    assert ds.items["categories"].to_list()[0] == ["Animation", "Children's", "Musical"]
    seq = load_ml1m(ml1m_seq_dir)
    assert seq.meta["layout"] == "sequences"
    assert seqs(seq) == {"1": ["914", "1193", "661"], "2": ["1193"]}
    assert seq.interactions["rating"].null_count() == seq.n_interactions
    assert load_movielens(ml1m_seq_dir).name == "ml-1m"


def test_ml_latest_small(ml_small_dir: Path) -> None:
    ds = load_movielens_csv(ml_small_dir)
    check_schema(ds)
    assert ds.name == "ml-latest-small"
    assert ds.items["title"].to_list() == ["Toy Story (1995)", "American President, The (1995)"]
    assert ds.items["categories"].to_list()[1] == ["Comedy", "Drama", "Romance"]
    assert seqs(ds) == {"1": ["3", "1"], "2": ["3"]}
    assert ds.interactions["rating"].to_list() == [4.0, 4.5, 0.5]
    full = load_movielens(ml_small_dir, keep_all_items=True)
    assert full.items.filter(pl.col("item_id") == "5")["categories"].to_list() == [[]]


def test_movielens_errors(writer: Writer, ml100k_dir: Path, ml_small_dir: Path, tmp_path: Path) -> None:
    data = ml100k_dir / "u.data"
    data.write_text("1\t10\t5\t880000200\n1\t10\t5\n")
    with pytest.raises(DataFormatError) as exc:
        load_ml100k(ml100k_dir)
    assert_error(exc, data, 2, "timestamp")
    data.write_text("1\t10\t5\t880000200\nx\t10\t5\t1\n")
    with pytest.raises(DataFormatError) as exc:
        load_ml100k(ml100k_dir)
    assert_error(exc, data, 2, "user")
    data.write_text("1\t10\t5\t880000200\n")
    item = ml100k_dir / "u.item"
    item.write_text("10|Toy Story (1995)|01-Jan-1995||http://imdb/toy|0|1\n", encoding="latin-1")
    with pytest.raises(DataFormatError) as exc:
        load_ml100k(ml100k_dir)
    assert_error(exc, item, 1, "Adventure")
    ratings = ml_small_dir / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n1,3,4.0,964981247\n1,3.5,4.0,964981247\n")
    with pytest.raises(DataFormatError) as exc:
        load_movielens_csv(ml_small_dir)
    assert_error(exc, ratings, 3, "movieId")
    ratings.write_text("userId,movieId,rating\n1,3,4.0\n")
    with pytest.raises(DataFormatError) as exc:
        load_movielens_csv(ml_small_dir)
    assert_error(exc, ratings, 1, "timestamp")
    dat = writer("m1/ratings.dat", "1::2::3::4\n1::2::3::4::5\n")
    with pytest.raises(DataFormatError) as exc:
        load_ml1m(dat.parent)
    assert_error(exc, dat, 2, "column 5")
    with pytest.raises(FileNotFoundError, match="no MovieLens ratings found"):
        load_movielens(tmp_path)
    with pytest.raises(
        FileNotFoundError, match="no ml-100k ratings found \\(expected 'u.data' or RecBole 'ml-100k.inter'\\)"
    ):
        load_ml100k(tmp_path)
    with pytest.raises(
        FileNotFoundError,
        match="no ml-1m ratings found \\(expected 'ratings.dat' or 'ml-1m_sequences.txt'\\)",
    ):
        load_ml1m(tmp_path)
    with pytest.raises(FileNotFoundError, match="ml-1m folder not found"):
        load_ml1m(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------- MIND
def test_mind_impressions_and_interactions(mind_dir: Path) -> None:
    ds = load_mind(mind_dir)
    check_schema(ds)
    assert ds.impressions is not None
    assert dict(ds.impressions.schema) == IMPRESSION_SCHEMA
    imp = ds.impressions
    assert imp["impression"].to_list() == [7, 3, 9, 4]  # file order
    ids = dict(zip(ds.items["item"].to_list(), ds.items["item_id"].to_list(), strict=True))
    users = dict(zip(ds.users["user"].to_list(), ds.users["user_id"].to_list(), strict=True))
    assert [users[u] for u in imp["user"].to_list()] == ["U2", "U1", "U2", "U3"]
    assert [[ids[i] for i in row] for row in imp["items"].to_list()][0] == ["N5", "N6", "N7"]  # display order
    assert imp["clicks"].to_list() == [[0, 1, 0], [0, 1, 1], [1, 0], [0, 0]]
    assert [[ids[i] for i in row] for row in imp["history"].to_list()] == [
        ["N1", "N2"],
        ["N3"],
        ["N1", "N2"],
        [],
    ]
    assert imp["ts"][0] == 1573324971  # 2019-11-09 18:42:51 UTC
    # items numbered by first appearance: history, then candidates, line by line
    assert ds.items["item_id"].to_list() == ["N1", "N2", "N5", "N6", "N7", "N3", "N4", "N8", "N9"]
    # history once (before the first impression), then clicks in display order
    assert seqs(ds) == {"U2": ["N1", "N2", "N6", "N9"], "U1": ["N3", "N4", "N8"]}
    u2 = ds.interactions.filter(pl.col("user") == ds.users.filter(pl.col("user_id") == "U2")["user"][0])
    assert u2["ts"].to_list() == [1573324969, 1573324970, 1573324971, 1573477200]
    assert ds.n_users == 3  # U3 only appears in impressions
    row = ds.items.filter(pl.col("item_id") == "N6").row(0, named=True)
    assert row["title"] == "Big game tonight"
    assert row["categories"] == ["sports", "football_nfl"]
    assert row["description"] == "Teams meet again."
    assert row["url"] == "https://x/6"
    assert ds.items.filter(pl.col("item_id") == "N5")["title"].to_list() == [""]  # no news row
    assert ds.stats()["impression_clicks"] == 4
    assert load_mind(mind_dir / "behaviors.tsv", keep_all_items=True).items["item_id"].to_list()[-1] == "N99"


def test_mind_errors(writer: Writer, tmp_path: Path) -> None:
    good = "1\tU1\t11/9/2019 6:42:51 PM\tN1\tN2-1\n"
    cases = {
        "cols.tsv": (good + "2\tU1\t11/9/2019 6:42:51 PM\tN1\n", 2, "Impressions"),
        "time.tsv": (good + "2\tU1\t2019-11-09 18:42\tN1\tN2-1\n", 2, "Time"),
        "label.tsv": (good + "\n2\tU1\t11/9/2019 6:42:51 PM\tN1\tN2-1 N3\n", 3, "Impressions"),
        "imp.tsv": (good + "x\tU1\t11/9/2019 6:42:51 PM\tN1\tN2-1\n", 2, "ImpressionID"),
    }
    for name, (text, line, field) in cases.items():
        path = writer(name, text)
        with pytest.raises(DataFormatError) as exc:
            read_behaviors(path)
        assert_error(exc, path, line, field)
    news = writer("news.tsv", "N1\tnews\tpolitics\tTitle\tAbstract\n\nN2\tnews\tpolitics\n")
    with pytest.raises(DataFormatError) as exc:
        read_news(news)
    assert_error(exc, news, 3, "Title")
    with pytest.raises(FileNotFoundError, match="behaviors.tsv file not found"):
        load_mind(tmp_path)


# ------------------------------------------------------------------------------------------------- CSV / Parquet
EVENTS = (
    "uid,sku,when,stars\nb,x2,2020-01-02 00:00:00,4\na,x1,2020-01-01 10:00:00,5\nb,x1,2020-01-01 00:00:00,\n"
)
PRODUCTS = (
    "sku;name;tags;cost;colour\nx1;Red shoe;shoes|red;9.5;red\nx2;Blue hat;hats;;blue\nx3;Unsold;;1;green\n"
)


def test_csv_with_item_file(writer: Writer) -> None:
    events = writer("events.csv", EVENTS)
    products = writer("products.csv", PRODUCTS)
    ds = load_table(
        events, user_col="uid", item_col="sku", ts_col="when", rating_col="stars",
        items_path=products, items_sep=";", item_columns={"title": "name", "categories": "tags", "price": "cost"},
    )  # fmt: skip
    check_schema(ds)
    assert ds.name == "events"
    assert ds.items["item_id"].to_list() == ["x1", "x2"]  # item-file order, unsold x3 dropped
    assert ds.items["title"].to_list() == ["Red shoe", "Blue hat"]
    assert ds.items["categories"].to_list() == [["shoes", "red"], ["hats"]]
    assert ds.items["price"].to_list() == [9.5, None]
    assert ds.items["colour"].to_list() == ["red", "blue"]
    assert seqs(ds) == {"b": ["x1", "x2"], "a": ["x1"]}
    assert ds.interactions["ts"].to_list()[:2] == [1577836800, 1577923200]
    assert ds.interactions["rating"].to_list() == [None, 4.0, 5.0]


def test_tsv_and_parquet(writer: Writer, tmp_path: Path) -> None:
    tsv = writer("e.tsv", "u\ti\tt\n1\t5\t20\n1\t6\t10\n")
    ds = load_table(tsv, user_col="u", item_col="i", ts_col="t")
    assert seqs(ds) == {"1": ["6", "5"]}
    pq = tmp_path / "e.parquet"
    pl.DataFrame({"u": [1, 1, 2], "i": [5, 6, 5], "t": [3.0, 1.0, 2.0], "r": [1.0, 2.0, 3.0]}).write_parquet(
        pq
    )
    ds = load_table(pq, user_col="u", item_col="i", ts_col="t", rating_col="r")
    assert seqs(ds) == {"1": ["6", "5"], "2": ["5"]}
    assert ds.meta["format"] == "parquet"
    ds = load_dataset(str(pq), format="parquet", user_col="u", item_col="i")
    assert seqs(ds) == {"1": ["5", "6"], "2": ["5"]}  # no ts column: file order


def test_table_errors(writer: Writer, tmp_path: Path) -> None:
    ragged = writer("r.csv", "u,i,t\n1,2,3\n1,2,3,4\n")
    with pytest.raises(DataFormatError) as exc:
        load_table(ragged, user_col="u", item_col="i")
    assert exc.value.line == 3
    short = writer("s.csv", "u,i,t\n1,2,3\n1,2\n")
    with pytest.raises(DataFormatError) as exc:
        load_table(short, user_col="u", item_col="i")
    assert exc.value.line == 3
    missing = writer("m.csv", "u,i\n1,2\n")
    with pytest.raises(DataFormatError) as exc:
        load_table(missing, user_col="user", item_col="i")
    assert_error(exc, missing, 1, "user")
    badts = writer("t.csv", "u,i,t\n1,2,3\n1,2,soon\n")
    with pytest.raises(DataFormatError) as exc:
        load_table(badts, user_col="u", item_col="i", ts_col="t")
    assert_error(exc, badts, 3, "t")
    baddate = writer("d.csv", "u,i,t\n1,2,2020-01-01 10:00:00\n1,2,soon\n")
    with pytest.raises(DataFormatError) as exc:
        load_table(baddate, user_col="u", item_col="i", ts_col="t")
    assert_error(exc, baddate, 3, "t")
    fmt = writer("f.csv", "u,i,t\n1,2,02/01/2020\n")
    assert (
        load_table(fmt, user_col="u", item_col="i", ts_col="t", ts_format="%d/%m/%Y").interactions["ts"][0]
        == 1577923200
    )
    badr = writer("b.csv", "u,i,r\n1,2,3\n1,2,lots\n")
    with pytest.raises(DataFormatError) as exc:
        load_table(badr, user_col="u", item_col="i", rating_col="r")
    assert_error(exc, badr, 3, "r")
    noid = writer("n.csv", "u,i\n1,2\n,3\n")
    with pytest.raises(DataFormatError) as exc:
        load_table(noid, user_col="u", item_col="i")
    assert_error(exc, noid, 3, "u")
    with pytest.raises(FileNotFoundError, match="interactions table not found"):
        load_table(tmp_path / "nothing.csv")


# ------------------------------------------------------------------------------------------------- Amazon
def test_amazon_reviews_and_meta(amazon_dir: Path) -> None:
    ds = load_amazon_path(amazon_dir)
    check_schema(ds)
    assert ds.name == "reviews_Toy_5"
    assert ds.users["user_id"].to_list() == ["A2", "A1"]
    assert ds.items["item_id"].to_list() == [
        "B001",
        "B002",
        "B003",
    ]  # first appearance in reviews; B999 dropped
    assert seqs(ds) == {"A2": ["B003", "B001"], "A1": ["B001", "B002"]}  # time order
    b2 = ds.items.row(1, named=True)
    assert b2["title"] == "Nail Polish 'Red'"  # Python-literal meta line
    assert b2["brand"] == "OPI" and b2["price"] == 5.5
    assert b2["categories"] == ["Beauty", "Makeup", "Nails", "Gifts"]
    assert (b2["sales_type"], b2["sales_rank"]) == ("Beauty", 123.0)
    assert ds.items.row(0, named=True)["description"] == "Cleans hair."
    assert ds.items.row(2, named=True)["title"] == ""  # no meta row
    assert sorted(ds.interactions["rating"].to_list()) == [2.0, 3.0, 4.0, 5.0]
    full = load_amazon_reviews(
        amazon_dir / "reviews_Toy_5.json.gz", amazon_dir / "meta_Toy.json.gz", keep_all_items=True
    )
    assert full.items["item_id"].to_list()[-1] == "B999"


def test_amazon_errors(tmp_path: Path) -> None:
    from .conftest import write_gz

    bad = write_gz(
        tmp_path / "reviews_X_5.json.gz",
        ['{"reviewerID": "A", "asin": "B", "unixReviewTime": 1}', "{not json"],
    )
    with pytest.raises(DataFormatError) as exc:
        read_amazon_reviews(bad)
    assert_error(exc, bad, 2, None)
    nots = write_gz(tmp_path / "reviews_Y_5.json.gz", ['{"reviewerID": "A", "asin": "B"}'])
    with pytest.raises(DataFormatError) as exc:
        read_amazon_reviews(nots)
    assert_error(exc, nots, 1, "unixReviewTime")
    with pytest.raises(FileNotFoundError, match="download_amazon2014"):
        read_amazon_reviews(tmp_path / "reviews_Z_5.json.gz")


# ------------------------------------------------------------------------------------------------- registry
def test_named_datasets_listed() -> None:
    assert NAMED_DATASETS is DATASETS  # the former name
    assert all(e.description and callable(e.obj) for e in DATASETS.entries())
    for name in (
        "synthetic",
        "beauty",
        "beauty-letter",
        "sports",
        "yelp",
        "ml-100k",
        "ml-1m",
        "ml-latest-small",
        "mind",
    ):
        assert name in DATASETS


def test_formats_registry() -> None:
    """Every accepted ``format=`` name is a registry entry with a description and an importable loader."""
    assert set(FORMATS.names()) == {
        "prepared", "s3rec", "lcrec", "letter", "recbole", "movielens", "mind",
        "csv", "tsv", "parquet", "table", "amazon",
    }  # fmt: skip
    for entry in FORMATS.entries():
        fmt = entry.obj
        assert isinstance(fmt, Format) and entry.description, entry.name
        if isinstance(fmt.loader, str):
            import importlib

            module, _, attr = fmt.loader.partition(":")
            assert callable(getattr(importlib.import_module(module), attr)), entry.name
    # Aliases load but are never what detection answers.
    for alias in ("letter", "csv", "tsv", "parquet"):
        assert not FORMATS.get(alias).detect(Path("x.inter.json"))
        assert not FORMATS.get(alias).detect(Path("x.csv"))
    with pytest.raises(ValueError, match="unknown format 'xml'; known: prepared, "):
        FORMATS.get("xml")


def test_detect_format_files(tmp_path: Path) -> None:
    cases = {
        "a.inter.json": "lcrec",
        "a.inter": "recbole",
        "Behaviors.tsv": "mind",
        "reviews_Toy_5.json.gz": "amazon",
        "x.TSV": "table",
        "x.pq": "table",
        "Beauty.txt": "s3rec",
    }
    for name, fmt in cases.items():
        assert detect_format(tmp_path / name) == fmt, name
    with pytest.raises(ValueError, match="cannot tell the dataset format; pass format= one of prepared"):
        detect_format(tmp_path / "u.data")
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "meta.json").write_text("{}")
    (tmp_path / "prep" / "notes.txt").write_text("")
    assert detect_format(tmp_path / "prep") == "prepared"


def test_registry_resolves_against_data_root(tmp_path: Path, ml100k_dir: Path, mind_dir: Path) -> None:
    root = tmp_path / "root"
    (root / "movielens").mkdir(parents=True)
    ml100k_dir.rename(root / "movielens" / "ml-100k")
    mind_dir.rename(root / "mind_small_subset")
    assert load_dataset("ml-100k", data_root=root).n_interactions == 4
    assert load_dataset("mind", data_root=root).impressions is not None
    with pytest.raises(FileNotFoundError, match="MovieLens ml-1m not found"):
        load_dataset("ml-1m", data_root=root)
    with pytest.raises(FileNotFoundError, match="THINKREC_DATA"):
        load_dataset("beauty", data_root=root)
    with pytest.raises(KeyError, match="unknown dataset"):
        load_dataset("no-such-dataset", data_root=root)


def test_registry_format_hints_and_detection(
    tmp_path: Path, recbole_dir: Path, lcrec_dir: Path, mind_dir: Path, amazon_dir: Path, ml_small_dir: Path
) -> None:
    assert load_dataset(str(recbole_dir), format="recbole").n_items == 3
    assert load_dataset(str(lcrec_dir / "Toy.inter.json"), format="letter").n_items == 4
    assert (
        load_dataset("toy", data_root=recbole_dir.parent, format="recbole").name == "toy"
    )  # relative to root
    assert detect_format(recbole_dir) == "recbole"
    assert detect_format(lcrec_dir) == "lcrec"
    assert detect_format(mind_dir) == "mind"
    assert detect_format(amazon_dir) == "amazon"
    assert detect_format(ml_small_dir) == "movielens"
    assert detect_format(tmp_path / "x.parquet") == "table"
    assert load_dataset(str(mind_dir)).impressions is not None
    ds = load_dataset(str(ml_small_dir))
    saved = ds.save(tmp_path / "prepared")
    again = load_dataset(str(saved))
    assert again.interactions.equals(ds.interactions)
    with pytest.raises(ValueError, match="unknown format"):
        load_dataset(str(recbole_dir), format="xml")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dataset(str(tmp_path / "gone"), format="recbole")


SHARED = Path(
    os.environ.get("THINKREC_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data"
)


@pytest.mark.skipif(
    not (SHARED / "amazon_beauty_2014" / "Beauty.txt").exists(), reason="shared data not available"
)
def test_shared_beauty_counts() -> None:
    ds = load_dataset("beauty", data_root=SHARED)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (22_363, 12_101, 198_502)
    first = ds.items.row(0, named=True)
    assert first["item_id"] == "1" and first["item"] == 0  # dense id = S3-Rec id - 1
    assert (ds.items["item_id"].cast(pl.Int32) - 1).equals(ds.items["item"], check_names=False)
