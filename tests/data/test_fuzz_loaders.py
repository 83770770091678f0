"""Fuzzing every loader: valid fixtures mutated at random either load to a dataset that passes its invariants or
raise DataFormatError naming a file of the case (``thinkrec.testing.fuzz``; the large campaign is
``benchmarks/fuzz.py``), plus one regression test per bug the fuzzing found."""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinkrec.data import DataFormatError, Dataset, load_dataset
from thinkrec.data.loaders.amazon import load_amazon_reviews
from thinkrec.data.loaders.lcrec import load_lcrec_path
from thinkrec.data.loaders.mind import load_mind
from thinkrec.data.loaders.movielens import load_movielens
from thinkrec.data.loaders.recbole import load_recbole
from thinkrec.data.loaders.s3rec import load_s3rec, load_s3rec_path
from thinkrec.data.loaders.tabular import load_table
from thinkrec.testing.fuzz import LOADED, LOADER_TARGETS, REJECTED, run_loader_case

from .conftest import Writer

# run_loader_case empties its work folder itself, so one tmp_path serves every example of a test
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.parametrize("target", LOADER_TARGETS)
@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_mutated_fixtures_load_valid_or_raise_data_format_error(target: str, rnd: random.Random, tmp_path: Path) -> None:
    assert run_loader_case(target, rnd, tmp_path / "case").status in (LOADED, REJECTED)


@pytest.mark.parametrize("target", LOADER_TARGETS)
def test_unmutated_fixtures_load_and_validate(target: str, tmp_path: Path) -> None:
    for seed in range(15):
        assert run_loader_case(target, random.Random(seed), tmp_path / "case", n_mutations=0).status == LOADED


def _raises(fn, path: Path, line: int | None, field: str | None, match: str | None = None) -> DataFormatError:
    with pytest.raises(DataFormatError, match=match) as exc:
        fn()
    err = exc.value
    assert (err.path, err.line, err.field) == (str(path), line, field), str(err)
    assert str(err).startswith(str(path))
    return err


# ------------------------------------------------------------------------------------------------- validate()
def test_validate_catches_broken_invariants(writer: Writer) -> None:
    ds = load_recbole(writer("v.inter", "user_id:token\titem_id:token\nu1\ti1\nu2\ti2\n"))
    assert ds.validate() is ds
    bad = Dataset(ds.name, ds.interactions.with_columns(pl.lit(7, dtype=pl.Int32).alias("item")), ds.items, ds.users,
                  meta=ds.meta)
    with pytest.raises(DataFormatError, match="ids outside") as exc:
        bad.validate()
    assert exc.value.field == "interactions.item"
    empty = Dataset(ds.name, ds.interactions.clear(), ds.items, ds.users, meta=ds.meta)
    with pytest.raises(DataFormatError, match="no interactions"):
        empty.validate()


# ------------------------------------------------------------------------------------------------- RecBole
RB_HEAD = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


@pytest.mark.parametrize("typ", ["float", "token"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300"])
def test_recbole_non_finite_timestamp_names_file_line_and_field(writer: Writer, typ: str, value: str) -> None:
    """Was: polars' InvalidOperationError from ``col("ts").round().strict_cast(Int64)``."""
    path = writer("nan.inter", f"user_id:token\titem_id:token\ttimestamp:{typ}\nu1\ti1\t100\nu1\ti2\t{value}\n")
    _raises(lambda: load_recbole(path), path, 3, "timestamp")
    _raises(lambda: load_dataset(str(path), format="recbole"), path, 3, "timestamp")


def test_recbole_rating_empty_body_duplicate_header_empty_id(writer: Writer) -> None:
    nan = writer("r.inter", RB_HEAD + "u1\ti1\t4\t1\nu1\ti2\tnan\t2\n")
    _raises(lambda: load_recbole(nan), nan, 3, "rating", "finite")
    huge = writer("h.inter", RB_HEAD + "u1\ti1\t1e39\t1\n")
    _raises(lambda: load_recbole(huge), huge, 2, "rating")  # beyond float32: inf in the dataset
    header_only = writer("e.inter", RB_HEAD)
    _raises(lambda: load_recbole(header_only), header_only, None, None, "no interactions")
    twice = writer("d.inter", "user_id:token\titem_id:token\tuser_id:token\nu1\ti1\tu2\n")
    _raises(lambda: load_recbole(twice), twice, 1, "user_id", "twice")
    empty_id = writer("i.inter", RB_HEAD + "u1\ti1\t4\t1\n \ti2\t4\t2\n")
    _raises(lambda: load_recbole(empty_id), empty_id, 3, "user_id", "empty id")


def test_recbole_item_fields_of_float_type_and_non_finite_price(writer: Writer) -> None:
    """Was: TypeError (``v[0][0]`` on a float) for a float / float_seq category field; NaN prices."""
    inter = writer("t/t.inter", "user_id:token\titem_id:token\nu1\ti1\nu1\ti2\n")
    writer("t/t.item", "item_id:token\tclass:float_seq\ttitle:float\tprice:token\ni1\t1 2\t3\tnan\ni2\t\t\t2.5\n")
    ds = load_recbole(inter).validate()
    assert ds.items["categories"].to_list() == [["1.0", "2.0"], []]
    assert ds.items["price"].to_list() == [None, 2.5]


# ------------------------------------------------------------------------------------------------- S3-Rec, LC-Rec
def test_s3rec_ids_beyond_64_bits_sort_numerically(writer: Writer) -> None:
    """Was: polars' InvalidOperationError casting the ids to Int64."""
    big = "310833675064509723898"
    ds = load_s3rec(writer("Toy.txt", f"1 {big} 2\n2 10\n")).validate()
    assert ds.items["item_id"].to_list() == ["2", "10", big]


def test_s3rec_metadata_encoding_nesting_and_shape(writer: Writer) -> None:
    seq = writer("s3/Toy.txt", "1 1 2\n")
    dm = writer("s3/datamaps.json", "")
    dm.write_bytes(b'{"id2item": {"1": "B\xff"}}')  # was: UnicodeDecodeError
    _raises(lambda: load_s3rec_path(seq.parent), dm, 1, None, "utf-8")
    dm.write_text('{"id2item": ["B001"]}')  # was: AttributeError
    _raises(lambda: load_s3rec_path(seq.parent), dm, None, "id2item")
    dm.write_text('{"id2item": ' + "[" * 100_000 + "]" * 100_000 + "}")  # was: RecursionError
    _raises(lambda: load_s3rec_path(seq.parent), dm, None, None, "nested too deeply")
    dm.unlink()
    items = writer("s3/Toy.items.jsonl", json.dumps({"s3rec_id": 1, "price": float("nan")}) + "\n")
    _raises(lambda: load_s3rec_path(seq.parent), items, 1, "price", "finite")
    items.write_text(json.dumps({"s3rec_id": 1, "title": ["a", "b"], "brand": 3}) + "\n")  # was: polars TypeError
    ds = load_s3rec_path(seq.parent).validate()
    assert ds.items["title"].to_list()[0] == "a b" and ds.items["brand"].to_list()[0] == "3"


def test_lcrec_encoding_nesting_ids_and_descriptions(writer: Writer) -> None:
    inter = writer("lc/Toy.inter.json", "")
    inter.write_bytes(b'{"0": [1, 2]}\xff')
    _raises(lambda: load_lcrec_path(inter.parent), inter, 1, None, "utf-8")
    inter.write_text('{"0": ' + "[" * 50_000 + "]" * 50_000 + "}")
    _raises(lambda: load_lcrec_path(inter.parent), inter, None, None, "nested too deeply")
    inter.write_text('{"0": [1, -2]}')
    _raises(lambda: load_lcrec_path(inter.parent), inter, 1, "user 0 item #2", "integer item id")
    big = "1" + "0" * 30
    inter.write_text(json.dumps({"0": [int(big), 2]}))
    writer("lc/Toy.item.json", json.dumps({"2": {"description": "[" * 500 + "]" * 500, "price": "inf"}}))
    _raises(lambda: load_lcrec_path(inter.parent), inter.with_name("Toy.item.json"), 1, "item 2 price", "finite")
    writer("lc/Toy.item.json", json.dumps({"2": {"description": "[" * 500 + "]" * 500}}))
    ds = load_lcrec_path(inter.parent).validate()
    assert ds.items["item_id"].to_list() == ["2", big]


# ------------------------------------------------------------------------------------------------- MovieLens
def test_movielens_ranges_encodings_and_empty_files(writer: Writer, tmp_path: Path) -> None:
    data = writer("a/u.data", "1\t10\t4\t880000100\n1\t20\t3\t99999999999999999999\n")
    _raises(lambda: load_movielens(data.parent), data, 2, "timestamp", "64-bit")  # was: polars OverflowError
    data.write_text("1\t10\t1e39\t880000100\n")
    _raises(lambda: load_movielens(data.parent), data, 1, "rating")
    data.write_text("1\t10\t4\t880000100\n")
    item = writer("a/u.item", "10|Toy|01-Jan-²²²²||http://x|" + "|".join(["0"] * 19) + "\n")  # was: ValueError
    assert load_movielens(data.parent).validate().items["title"].to_list() == ["Toy"]
    item.unlink()
    ratings = writer("b/ratings.csv", "userId,movieId,rating,timestamp\n")
    _raises(lambda: load_movielens(ratings.parent), ratings, None, None, "no ratings")  # was: an empty dataset
    ratings.write_bytes(b"userId,movieId,rating,timestamp\n1,2,3,4\n1,\xe9,3,4\n")  # was: UnicodeDecodeError
    _raises(lambda: load_movielens(ratings.parent), ratings, 3, None, "utf-8")
    rb = writer("c/ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\tx\t4\t5\n")
    _raises(lambda: load_movielens(rb.parent), rb, 2, "item_id", "integer id")  # was: polars cast error
    rb.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t010\t4\t5\n")
    writer("c/ml-100k.item", "item_id:token\trelease_year:token_seq\n10\t1995 x\n")  # was: polars cast error
    ds = load_movielens(rb.parent).validate()
    assert ds.items["item_id"].to_list() == ["10"] and ds.items["year"].to_list() == [1995]


# ------------------------------------------------------------------------------------------------- MIND
def test_mind_without_interactions_or_with_huge_impression_id(writer: Writer) -> None:
    beh = writer("m/behaviors.tsv", "1\tU1\t11/9/2019 6:42:51 PM\t\tN1-0 N2-0\n")
    _raises(lambda: load_mind(beh), beh, None, None, "no interactions")  # was: a dataset without interactions
    beh.write_text("99999999999999999999\tU1\t11/9/2019 6:42:51 PM\tN3\tN1-1\n")
    _raises(lambda: load_mind(beh), beh, 1, "ImpressionID", "64-bit")  # was: polars OverflowError


# ------------------------------------------------------------------------------------------------- CSV / Parquet
def test_csv_empty_bad_encoding_and_non_finite_values(writer: Writer) -> None:
    empty = writer("e.csv", "u,i,t\n")
    _raises(lambda: load_table(empty, user_col="u", item_col="i", ts_col="t"), empty, None, None,
            "no interactions")  # was: IndexError
    latin = writer("l.csv", "")
    latin.write_bytes(b"u,i\n1,2\n1,caf\xe9\n")
    _raises(lambda: load_table(latin, user_col="u", item_col="i"), latin, 3, None, "utf-8")  # was: UnicodeDecodeError
    for ts in ("nan", "inf", "1e26"):  # was: polars InvalidOperationError
        path = writer("t.csv", f"u,i,t\n1,2,5\n1,3,{ts}\n")
        _raises(lambda p=path: load_table(p, user_col="u", item_col="i", ts_col="t"), path, 3, "t", "finite")
    for r in ("nan", "1e39"):
        path = writer("r.csv", f"u,i,r\n1,2,{r}\n")
        _raises(lambda p=path: load_table(p, user_col="u", item_col="i", rating_col="r"), path, 2, "r", "finite")


def test_table_with_a_column_named_like_a_helper_column(writer: Writer) -> None:
    """Was: polars' DuplicateError from ``with_row_index("_i")`` when the file has a column ``_i``."""
    path = writer("h.csv", "u,i,_i,t\n1,2,3,5\n1,3,4,x\n")
    _raises(lambda: load_table(path, user_col="u", item_col="i", ts_col="t"), path, 3, "t", "numeric timestamp")
    assert load_table(path, user_col="u", item_col="i").validate().n_interactions == 2


def _parquet(path: Path, frame: pl.DataFrame) -> Path:
    frame.write_parquet(path)
    return path


def test_parquet_corrupt_file_is_an_error_not_a_panic(tmp_path: Path) -> None:
    """Was: polars' reader panicked (``PanicException``, a BaseException) on a NUL byte inserted into a page."""
    buf = io.BytesIO()
    pl.DataFrame({"user_id": ["u1", "u2", "u1"], "item_id": ["a", "b", "c"]}).write_parquet(buf)
    data = buf.getvalue()
    path = tmp_path / "x.parquet"
    for pos in (77, 100, len(data) // 2, len(data) - 9):
        path.write_bytes(data[:pos] + b"\x00" + data[pos:])
        try:
            load_table(path).validate()
        except DataFormatError as exc:
            assert exc.path == str(path)


def test_parquet_metadata_that_is_not_utf8_is_ignored(tmp_path: Path) -> None:
    """Was: ``PanicException`` (Utf8Error) from polars' Arrow import of a schema metadata key with a bad byte."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"u": ["a"], "i": ["x"]}).replace_schema_metadata({b"ARROW:sche\xe4a": b"junk"})
    pq.write_table(table, tmp_path / "m.parquet")
    assert load_table(tmp_path / "m.parquet", user_col="u", item_col="i").validate().n_interactions == 1


def test_parquet_column_types(tmp_path: Path) -> None:
    p = tmp_path / "p.parquet"
    base = {"u": ["a", "b"], "i": ["x", "y"]}
    _parquet(p, pl.DataFrame({**base, "u": [["a"], ["b"]]}))  # was: polars cast error for list ids
    _raises(lambda: load_table(p, user_col="u", item_col="i"), p, None, "u", "text or integer ids")
    _parquet(p, pl.DataFrame({**base, "t": [1.0, float("nan")]}))  # was: polars InvalidOperationError
    _raises(lambda: load_table(p, user_col="u", item_col="i", ts_col="t"), p, None, "t", r"finite.*row 1")
    _parquet(p, pl.DataFrame({**base, "t": pl.Series([1, 2]).cast(pl.Duration("ms"))}))
    _raises(lambda: load_table(p, user_col="u", item_col="i", ts_col="t"), p, None, "t", "Duration")
    _parquet(p, pl.DataFrame({**base, "r": [1.0, float("inf")]}))
    _raises(lambda: load_table(p, user_col="u", item_col="i", rating_col="r"), p, None, "r", "finite")
    items = _parquet(tmp_path / "items.parquet", pl.DataFrame(
        {"i": ["x", "y"], "name": [["A", "B"], None], "cost": [float("inf"), 2.0], "tags": [1, 2]}))
    ds = load_table(_parquet(p, pl.DataFrame(base)), user_col="u", item_col="i", items_path=items,
                    item_columns={"title": "name", "price": "cost", "categories": "tags"}).validate()
    assert ds.items["title"].to_list() == ["A B", ""] and ds.items["price"].to_list() == [None, 2.0]
    assert ds.items["categories"].to_list() == [["1"], ["2"]]
    bad_items = _parquet(tmp_path / "bad.parquet", pl.DataFrame({"i": ["x"], "name": [b"\xff"]}))
    _raises(lambda: load_table(p, user_col="u", item_col="i", items_path=bad_items, item_columns={"title": "name"}),
            bad_items, None, "name", "item title")


# ------------------------------------------------------------------------------------------------- Amazon
def test_amazon_records(tmp_path: Path) -> None:
    def reviews(*lines: str, gz: bool = False) -> Path:
        path = tmp_path / ("reviews_T_5.json.gz" if gz else "reviews_T_5.json")
        text = "".join(line + "\n" for line in lines).encode()
        path.write_bytes(gzip.compress(text) if gz else text)
        return path

    ok = json.dumps({"reviewerID": "A", "asin": "B", "unixReviewTime": 1})
    deep = reviews(ok, '{"reviewerID": ' + "[" * 50_000 + "]" * 50_000 + "}")  # was: RecursionError
    _raises(lambda: load_amazon_reviews(deep), deep, 2, None, "invalid record")
    unhashable = reviews("{[1]: 2}")  # was: TypeError from ast.literal_eval
    _raises(lambda: load_amazon_reviews(unhashable), unhashable, 1, None, "invalid record")
    for t in ("99999999999999999999", '"²"'):  # was: polars TypeError / ValueError
        path = reviews(f'{{"reviewerID": "A", "asin": "B", "unixReviewTime": {t}}}')
        _raises(lambda p=path: load_amazon_reviews(p), path, 1, "unixReviewTime", "epoch")
    nan = reviews('{"reviewerID": "A", "asin": "B", "unixReviewTime": 1, "overall": NaN}')
    _raises(lambda: load_amazon_reviews(nan), nan, 1, "overall", "finite")
    corrupt = reviews(ok, ok, gz=True)
    corrupt.write_bytes(corrupt.read_bytes()[:12] + b"\x00" * 8 + corrupt.read_bytes()[20:])  # was: zlib.error
    with pytest.raises(DataFormatError) as exc:
        load_amazon_reviews(corrupt)
    assert exc.value.path == str(corrupt)
    meta = tmp_path / "meta_T.json"
    meta.write_text("{'asin': 'B', 'salesRank': {1: 10**400}, 'price': 'nan'}\n".replace("10**400", "1" + "0" * 400))
    ds = load_amazon_reviews(reviews(ok), meta).validate()  # was: polars TypeError (int key), OverflowError
    assert ds.items.select("sales_type", "sales_rank", "price").row(0) == ("1", None, None)
