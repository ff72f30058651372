"""Each raw-file reader on small fixture files, and the errors for bad input."""

from __future__ import annotations

import gzip
import json

import pytest

from sdpo_lightning.data.prepare import PrepareError, ReaderOptions, prepare
from sdpo_lightning.data.prepare.goodreads import parse_goodreads_time, read_goodreads
from sdpo_lightning.data.prepare.lastfm import read_lastfm
from sdpo_lightning.data.prepare.movielens import read_movielens_1m, read_movielens_100k
from sdpo_lightning.data.prepare.samples import (
    sample_interactions,
    write_goodreads,
    write_lastfm,
    write_movielens_1m,
    write_movielens_100k,
)

N_ROWS = len(sample_interactions())


def test_movielens_100k_reader_decodes_latin1_and_accepts_parent_folder(tmp_path):
    write_movielens_100k(tmp_path / "ml-100k")
    raw = read_movielens_100k(tmp_path)  # the archive's parent folder works too
    assert len(raw.interactions) == N_ROWS and len(raw.titles) == 40
    assert raw.titles["1"] == "Café Society (1995)"
    user, item, time, rating = raw.interactions[0]
    assert isinstance(user, str) and isinstance(time, float) and 1 <= rating <= 5


def test_movielens_1m_reader(tmp_path):
    raw = read_movielens_1m(write_movielens_1m(tmp_path))
    assert len(raw.interactions) == N_ROWS and raw.titles["1"] == "Café Society (1995)"
    assert raw.name == "movielens-1m"


def test_movielens_formats_give_identical_examples(tmp_path):
    a = prepare("movielens-100k", write_movielens_100k(tmp_path / "a"), tmp_path / "oa")
    b = prepare("ml-1m", write_movielens_1m(tmp_path / "b"), tmp_path / "ob")
    test_a, test_b = tmp_path / "oa" / "test.json", tmp_path / "ob" / "test.json"
    assert test_a.read_bytes() == test_b.read_bytes()
    assert a["examples"] == b["examples"] and a["disambiguated_titles"] == 1
    rows = json.loads((tmp_path / "oa" / "train.json").read_text(encoding="utf-8"))
    titles = {t for r in rows for t in r["itemList"]}
    assert "Spaced Out (1990)" in titles and "Café Society (1995)" in titles


def test_lastfm_orders_by_first_tag_and_drops_untagged_pairs(tmp_path):
    folder = write_lastfm(tmp_path)
    raw = read_lastfm(folder)
    assert raw.dropped["untagged_pair"] == 12  # each user's last pair is untagged
    assert raw.dropped["tag_without_listen"] == 1
    assert len(raw.interactions) == N_ROWS - 12
    times = {(u, i): t for u, i, t, _ in raw.interactions}
    firsts = {}
    for line in (folder / "user_taggedartists-timestamps.dat").read_text().splitlines()[1:]:
        u, i, _, ms = line.split("\t")
        firsts[(u, i)] = min(firsts.get((u, i), float("inf")), float(ms))
    assert all(times[key] == firsts[key] for key in times)
    stats = prepare("lastfm", folder, tmp_path / "out")
    assert stats["dropped"]["untagged_pair"] == 12 and stats["users"] == 12


def test_goodreads_by_genre_explicit_files_and_auto_detection(tmp_path):
    folder = write_goodreads(tmp_path, genre="poetry")
    by_genre = read_goodreads(folder, ReaderOptions(genre="poetry"))
    auto = read_goodreads(folder)
    explicit = read_goodreads(
        None,
        ReaderOptions(
            interactions=folder / "goodreads_interactions_poetry.json.gz",
            books=folder / "goodreads_books_poetry.json.gz",
        ),
    )
    assert by_genre.interactions == auto.interactions == explicit.interactions
    assert len(by_genre.interactions) == N_ROWS and by_genre.titles["2"] == "Twin Title (1997)"
    only_read = read_goodreads(folder, ReaderOptions(only_read=True))
    assert only_read.dropped["not_read"] == len(range(0, N_ROWS, 4))
    stats = prepare("goodreads", folder, tmp_path / "out", options=ReaderOptions(genre="poetry"))
    assert stats["users"] == 12
    write_goodreads(folder, genre="children")
    with pytest.raises(PrepareError, match="pass --genre"):
        read_goodreads(folder)
    with pytest.raises(PrepareError, match="missing file"):
        read_goodreads(folder, ReaderOptions(genre="romance"))


def test_goodreads_dates_and_missing_timestamps(tmp_path):
    assert parse_goodreads_time("Fri Sep 08 10:44:24 -0700 2017") == 1504892664.0
    assert parse_goodreads_time("2017-09-08T17:44:24+00:00") == 1504892664.0
    rows = [
        {"user_id": "a", "book_id": "1", "date_added": ""},
        {"user_id": "a", "book_id": "2", "date_added": "Fri Sep 08 10:44:24 -0700 2017"},
        {"user_id": "a", "book_id": "3", "date_added": "yesterday"},
    ]
    inter = tmp_path / "i.json"
    inter.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    books = tmp_path / "b.json.gz"
    with gzip.open(books, "wt") as handle:
        handle.write(json.dumps({"book_id": "2", "title": "B"}) + "\n")
    opts = dict(interactions=inter, books=books)
    with pytest.raises(PrepareError, match=r"i\.json:3: cannot parse date_added 'yesterday'"):
        read_goodreads(None, ReaderOptions(**opts))
    raw = read_goodreads(None, ReaderOptions(lenient=True, **opts))
    assert raw.dropped["no_timestamp"] == 1 and raw.skipped_lines["i.json"] == 1
    assert raw.titles == {"2": "B"}


@pytest.mark.parametrize(
    "content, message",
    [
        (
            b"1\t2\t3\t881250949\n1\t3\t4\n",
            r"u\.data:2: expected 4 '\\t'-separated columns, found 3",
        ),
        (b"1\t2\t3\t881250949\n1\t3\tfour\t881250950\n", r"u\.data:2: rating 'four'"),
        (b"1\t2\t3\t881250949\n\t3\t4\t881250950\n", r"u\.data:2: empty user or item id"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, content, message):
    folder = write_movielens_100k(tmp_path)
    (folder / "u.data").write_bytes(content + (folder / "u.data").read_bytes())
    with pytest.raises(PrepareError, match=message):
        read_movielens_100k(folder)
    raw = read_movielens_100k(folder, ReaderOptions(lenient=True))
    assert raw.skipped_lines == {"u.data": 1} and len(raw.interactions) == N_ROWS + 1


def test_wrong_columns_in_metadata_duplicate_ids_and_decode_errors(tmp_path):
    folder = write_movielens_100k(tmp_path)
    (folder / "u.item").write_bytes(b"99|Short|row\n" + (folder / "u.item").read_bytes())
    message = r"u\.item:1: expected 24 '\|'-separated columns, found 3"
    with pytest.raises(PrepareError, match=message):
        read_movielens_100k(folder)
    folder = write_lastfm(tmp_path / "lastfm")
    artists = folder / "artists.dat"
    artists.write_bytes(artists.read_bytes() + b"7\tDup\turl\t\n" + b"77\tBad \xff byte\turl\t\n")
    with pytest.raises(PrepareError, match=r"artists\.dat:42: duplicate artist id '7'"):
        read_lastfm(folder)
    raw = read_lastfm(folder, ReaderOptions(lenient=True))
    assert raw.skipped_lines["artists.dat"] == 2


def test_decode_errors_name_the_line_and_encoding_can_be_overridden(tmp_path):
    folder = write_lastfm(tmp_path)
    artists = folder / "artists.dat"
    artists.write_bytes(artists.read_bytes() + "77\tMotörhead\turl\t\n".encode("latin-1"))
    with pytest.raises(PrepareError, match=r"artists\.dat:42: cannot decode as utf-8"):
        read_lastfm(folder)
    raw = read_lastfm(folder, ReaderOptions(encoding="latin-1"))
    assert raw.titles["77"] == "Motörhead"


def test_missing_files_unknown_encoding_and_bad_gzip(tmp_path):
    with pytest.raises(PrepareError, match=r"missing file\(s\) in .*: u\.item"):
        (tmp_path / "u.data").write_text("1\t2\t3\t4\n")
        read_movielens_100k(tmp_path)
    with pytest.raises(PrepareError, match="raw path does not exist"):
        read_movielens_1m(tmp_path / "nope")
    folder = write_movielens_100k(tmp_path / "ml")
    with pytest.raises(PrepareError, match="unknown encoding 'klingon'"):
        read_movielens_100k(folder, ReaderOptions(encoding="klingon"))
    folder = write_goodreads(tmp_path / "gr")
    (folder / "goodreads_books_poetry.json.gz").write_bytes(b"not gzip at all")
    with pytest.raises(PrepareError, match="cannot read .*goodreads_books_poetry"):
        read_goodreads(folder)
    with pytest.raises(PrepareError, match="unknown dataset 'netflix'"):
        prepare("netflix", folder, tmp_path / "out")
