"""Small fixture files in every supported source format, written into ``tmp_path`` (never the shared data)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from thinkrec.data.loaders.movielens import ML100K_GENRES

Writer = Callable[..., Path]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def write_gz(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


@pytest.fixture
def writer(tmp_path: Path) -> Writer:
    """``writer("name", "text", encoding=...)`` -> a file under tmp_path."""
    return lambda name, text, encoding="utf-8": write(tmp_path / name, text, encoding)


# ------------------------------------------------------------------------------------------------- LC-Rec
LCREC_INTER = {"0": [2, 0, 1], "1": [1, 3], "2": [3, 2, 0, 1]}
# Keys deliberately out of order: numbering must follow the integer id, not the file order.
LCREC_ITEMS = {
    "3": {"title": "Lipstick", "description": "Red lipstick"},
    "0": {"title": "Shampoo", "description": "['Gentle', 'daily use']", "brand": "Acme"},
    "2": {"title": "Soap", "description": ""},
    "1": {"title": "Brush", "description": "Soft", "categories": "Beauty, Tools", "price": "3.5"},
}
LCREC_INDEX = {str(i): [f"<a_{i}>", f"<b_{i % 2}>"] for i in range(4)}


@pytest.fixture
def lcrec_dir(tmp_path: Path) -> Path:
    d = tmp_path / "lcrec"
    write(d / "Toy.inter.json", json.dumps(LCREC_INTER, indent=2))
    write(d / "Toy.item.json", json.dumps(LCREC_ITEMS, indent=2))
    write(d / "Toy.index.json", json.dumps(LCREC_INDEX))
    return d


# ------------------------------------------------------------------------------------------------- RecBole
RECBOLE_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\ti1\t4\t300\n"
    "u2\ti3\t5\t100\n"
    "u1\ti2\t3\t200\n"
    "u1\ti3\t2.5\t200\n"
)
RECBOLE_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tscore:float_seq\n"
    "i2\tThe Second One\t1999\tDrama\t1 2\n"
    "i1\tFirst\t1995\tAnimation Comedy\t\n"
    "i3\tThird Film\t2001\t\t3\n"
    "i9\tNever Rated\t2005\tWar\t\n"
)


@pytest.fixture
def recbole_dir(tmp_path: Path) -> Path:
    d = tmp_path / "toy"
    write(d / "toy.inter", RECBOLE_INTER)
    write(d / "toy.item", RECBOLE_ITEM)
    return d


# ------------------------------------------------------------------------------------------------- MovieLens
ML100K_DATA = "2\t10\t4\t880000100\n1\t20\t3\t880000300\n1\t10\t5\t880000200\n2\t30\t1\t880000050\n"
_FLAGS = ["0"] * 19


def _flags(*idx: int) -> str:
    f = list(_FLAGS)
    for i in idx:
        f[i] = "1"
    return "|".join(f)


ML100K_ITEM = (
    f"10|Toy Story (1995)|01-Jan-1995||http://imdb/toy|{_flags(3, 4, 5)}\n"
    f"20|Café Society (1997)|01-Jan-1997||http://imdb/cafe|{_flags(8)}\n"
    f"30|Untitled|01-Jan-1990||http://imdb/u|{_flags(1)}\n"
    f"40|Unrated (1980)|01-Jan-1980||http://imdb/x|{_flags(0)}\n"
)
ML100K_GENRE = "".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES))


@pytest.fixture
def ml100k_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ml-100k"
    write(d / "u.data", ML100K_DATA)
    write(d / "u.item", ML100K_ITEM, encoding="latin-1")
    write(d / "u.genre", ML100K_GENRE)
    return d


@pytest.fixture
def ml100k_recbole_dir(tmp_path: Path) -> Path:
    """The same ratings as ``ml100k_dir`` in RecBole's ml-100k layout."""
    d = tmp_path / "rb" / "ml-100k"
    write(d / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + ML100K_DATA)
    write(
        d / "ml-100k.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Children's Comedy\n"
        "20\tCafé Society\t1997\tDrama\n"
        "30\tUntitled\t1990\tAction\n"
        "40\tUnrated\t1980\tunknown\n",
    )
    return d


@pytest.fixture
def ml1m_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ml-1m"
    write(
        d / "ratings.dat",
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n1::914::3::978300000\n",
    )
    write(
        d / "movies.dat",
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "914::My Fair Lady (1964)::Musical|Romance\n"
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "2000::Lethal Weapon (1987)::Action|Comedy|Crime|Drama\n",
        encoding="latin-1",
    )
    return d


@pytest.fixture
def ml1m_seq_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ml-1m-seq"
    write(d / "ml-1m_sequences.txt", "1 914 1193 661\n2 1193\n")
    write(
        d / "movies.dat",
        "661::Peach (1996)::Animation\n914::Lady (1964)::Musical\n1193::Nest (1975)::Drama\n",
        "latin-1",
    )
    return d


@pytest.fixture
def ml_small_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ml-latest-small"
    write(
        d / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,3,4.0,964981247\n1,1,4.5,964982703\n2,3,0.5,1445714994\n",
    )
    write(
        d / "movies.csv",
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children\n"
        '3,"American President, The (1995)",Comedy|Drama|Romance\n'
        "5,Nothing (2000),(no genres listed)\n",
    )
    return d


# ------------------------------------------------------------------------------------------------- MIND
MIND_BEHAVIORS = (
    "7\tU2\t11/9/2019 6:42:51 PM\tN1 N2\tN5-0 N6-1 N7-0\n"
    "3\tU1\t11/10/2019 8:00:00 AM\tN3\tN6-0 N4-1 N8-1\n"
    "9\tU2\t11/11/2019 1:00:00 PM\tN1 N2\tN9-1 N5-0\n"
    "4\tU3\t11/11/2019 2:00:00 PM\t\tN9-0 N5-0\n"
)
MIND_NEWS = (
    "N6\tsports\tfootball_nfl\tBig game tonight\tTeams meet again.\thttps://x/6\t[]\t[]\n"
    "N1\tnews\tnewspolitics\tElection news\t\thttps://x/1\t[]\t[]\n"
    "N99\tlifestyle\tlifestylebuzz\tNobody saw this\tUnseen.\thttps://x/99\t[]\t[]\n"
)


@pytest.fixture
def mind_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mind"
    write(d / "behaviors.tsv", MIND_BEHAVIORS)
    write(d / "news.tsv", MIND_NEWS)
    return d


# ------------------------------------------------------------------------------------------------- Amazon
AMAZON_REVIEWS = [
    {"reviewerID": "A2", "asin": "B001", "overall": 5.0, "unixReviewTime": 1300000000, "reviewText": "ok"},
    {"reviewerID": "A1", "asin": "B002", "overall": 4.0, "unixReviewTime": 1200000000},
    {"reviewerID": "A1", "asin": "B001", "overall": 3.0, "unixReviewTime": 1100000000},
    {"reviewerID": "A2", "asin": "B003", "overall": 2.0, "unixReviewTime": 1250000000},
]
AMAZON_META = [
    # 2014 meta files are Python dict literals, not JSON.
    "{'asin': 'B002', 'title': \"Nail Polish 'Red'\", 'price': 5.5, 'brand': 'OPI', "
    "'categories': [['Beauty', 'Makeup', 'Nails'], ['Beauty', 'Gifts']], 'salesRank': {'Beauty': 123}}",
    "{'asin': 'B999', 'title': 'Never reviewed', 'categories': [['Beauty']]}",
    json.dumps(
        {
            "asin": "B001",
            "title": "Shampoo",
            "description": "Cleans hair.",
            "categories": [["Beauty", "Hair Care"]],
        }
    ),
]


@pytest.fixture
def amazon_dir(tmp_path: Path) -> Path:
    d = tmp_path / "amazon"
    write_gz(d / "reviews_Toy_5.json.gz", [json.dumps(r) for r in AMAZON_REVIEWS])
    write_gz(d / "meta_Toy.json.gz", AMAZON_META)
    return d
