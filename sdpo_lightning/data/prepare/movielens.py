"""Readers for the GroupLens MovieLens-100K and MovieLens-1M files.

MovieLens-100K (``ml-100k.zip``), folder given as ``--raw`` (or its parent):

* ``u.data`` — tab-separated ``user id, item id, rating, unix timestamp``; no header.
* ``u.item`` — ``|``-separated, latin-1, 24 columns: ``item id | title | release date |
  video release date | IMDb URL | 19 genre flags``. Only the first two are used.

MovieLens-1M (``ml-1m.zip``):

* ``ratings.dat`` — ``UserID::MovieID::Rating::Timestamp``.
* ``movies.dat`` — ``MovieID::Title::Genres``, latin-1.

Titles keep their year (``"Toy Story (1995)"``), as in the S-DPO / LLaRA data.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sdpo_lightning.data.prepare.protocol import RawDataset
from sdpo_lightning.data.prepare.rawio import LineReader, ReaderOptions, locate

__all__ = ["read_movielens_100k", "read_movielens_1m", "read_ratings", "read_titles"]

ML100K_FILES = ("u.data", "u.item")
ML1M_FILES = ("ratings.dat", "movies.dat")


def read_ratings(reader: LineReader, sep: str) -> list[tuple[str, str, float, float | None]]:
    """Read ``user, item, rating, timestamp`` rows.

    Args:
        reader: The ratings file's reader.
        sep: Column separator.

    Returns:
        ``(user, item, timestamp, rating)`` tuples in file order.
    """
    out: list[tuple[str, str, float, float | None]] = []
    for lineno, fields in reader.rows(sep, 4):
        user, item, rating, stamp = (f.strip() for f in fields)
        if not user or not item:
            reader.bad(lineno, "empty user or item id")
            continue
        try:
            out.append((user, item, float(int(stamp)), float(rating)))
        except ValueError:
            reader.bad(lineno, f"rating {rating!r} / timestamp {stamp!r} is not a number")
    return out


def read_titles(reader: LineReader, sep: str, ncols: int) -> dict[str, str]:
    """Read ``item id, title, ...`` metadata rows into ``{item id: title}``."""
    titles: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, fields in reader.rows(sep, ncols):
        item = fields[0].strip()
        if not item:
            reader.bad(lineno, "empty item id")
        elif item in titles:
            reader.bad(lineno, f"duplicate item id {item!r} (first on line {first_line[item]})")
        else:
            titles[item] = fields[1]
            first_line[item] = lineno
    return titles


def _read(
    name: str,
    folder: Path,
    files: tuple[str, str],
    sep: tuple[str, str],
    item_cols: int,
    options: ReaderOptions,
) -> RawDataset:
    skipped: Counter = Counter()
    ratings = LineReader(
        folder / files[0], options.encoding or "latin-1", lenient=options.lenient, skipped=skipped
    )
    items = LineReader(
        folder / files[1], options.encoding or "latin-1", lenient=options.lenient, skipped=skipped
    )
    return RawDataset(
        name=name,
        interactions=read_ratings(ratings, sep[0]),
        titles=read_titles(items, sep[1], item_cols),
        skipped_lines=skipped,
    )


def read_movielens_100k(raw: Path | None, options: ReaderOptions = ReaderOptions()) -> RawDataset:
    """Read MovieLens-100K from a folder holding ``u.data`` and ``u.item``.

    Args:
        raw: The ``ml-100k`` folder, or a folder containing it.
        options: Reader options (``lenient``, ``encoding``; default latin-1).
    """
    folder = locate(raw, ML100K_FILES, ("ml-100k",), "movielens-100k")
    return _read("movielens-100k", folder, ML100K_FILES, ("\t", "|"), 24, options)


def read_movielens_1m(raw: Path | None, options: ReaderOptions = ReaderOptions()) -> RawDataset:
    """Read MovieLens-1M from a folder holding ``ratings.dat`` and ``movies.dat``.

    Args:
        raw: The ``ml-1m`` folder, or a folder containing it.
        options: Reader options (``lenient``, ``encoding``; default latin-1).
    """
    folder = locate(raw, ML1M_FILES, ("ml-1m",), "movielens-1m")
    return _read("movielens-1m", folder, ML1M_FILES, ("::", "::"), 3, options)
