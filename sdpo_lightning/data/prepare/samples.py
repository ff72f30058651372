"""Tiny raw datasets in each supported file layout, for tests and offline demos.

Each ``write_*`` function writes a small, deterministic dataset (a seeded
``random.Random``) with the quirks the readers must handle: a latin-1 / non-ASCII title,
two items with the same title, irregular whitespace, equal timestamps. Example::

    from sdpo_lightning.data.prepare.samples import write_movielens_100k
    write_movielens_100k("raw/ml-100k")
    # sdpo-prepare movielens-100k --raw raw/ml-100k --out prepared
"""

from __future__ import annotations

import gzip
import json
import random
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "sample_interactions",
    "sample_titles",
    "write_movielens_100k",
    "write_movielens_1m",
    "write_lastfm",
    "write_goodreads",
]

BASE_TIME = 880_000_000


def sample_interactions(
    n_users: int = 12,
    n_items: int = 40,
    seed: int = 0,
) -> list[tuple[int, int, int, int]]:
    """``(user, item, unix time, rating 1-5)`` rows, shuffled; each user has 3–25 items.

    Every user's first two interactions share one timestamp (a tie to break stably).
    """
    rng = random.Random(seed)
    rows = []
    for user in range(1, n_users + 1):
        items = rng.sample(range(1, n_items + 1), rng.randint(3, min(25, max(3, n_items - 21))))
        time = BASE_TIME + rng.randrange(10_000)
        for position, item in enumerate(items):
            if position > 1:
                time += rng.randint(1, 5_000)
            rows.append((user, item, time, rng.randint(1, 5)))
    rng.shuffle(rows)
    return rows


def sample_titles(n_items: int = 40) -> dict[int, str]:
    """Titles ``"Movie <i> (19xx)"`` with the quirks listed in the module docstring."""
    titles = {i: f"Movie {i} ({1950 + i % 50})" for i in range(1, n_items + 1)}
    titles[1] = "Café Society (1995)"
    titles[2] = titles[3] = "Twin Title (1997)"
    titles[4] = "  Spaced \u00a0  Out (1990) "
    return titles


def write_movielens_100k(
    folder: str | Path, n_users: int = 12, n_items: int = 40, seed: int = 0
) -> Path:
    """Write ``u.data`` and ``u.item`` (latin-1, 24 columns)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = sample_interactions(n_users, n_items, seed)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, t, r in rows))
    flags = "|".join("0" * 19)
    items = "".join(
        f"{i}|{title}|01-Jan-1995||http://example.invalid/{i}|{flags}\n"
        for i, title in sample_titles(n_items).items()
    )
    (folder / "u.item").write_bytes(items.encode("latin-1"))
    return folder


def write_movielens_1m(
    folder: str | Path, n_users: int = 12, n_items: int = 40, seed: int = 0
) -> Path:
    """Write ``ratings.dat`` and ``movies.dat`` (``::``-separated, latin-1)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = sample_interactions(n_users, n_items, seed)
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, t, r in rows))
    movies = "".join(f"{i}::{title}::Drama|Comedy\n" for i, title in sample_titles(n_items).items())
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    return folder


def write_lastfm(folder: str | Path, n_users: int = 12, n_items: int = 40, seed: int = 0) -> Path:
    """Write the three HetRec Last.fm files (UTF-8, with headers).

    Every listened pair is tagged (1–2 tags, timestamps in ms) except each user's
    last pair in ``user_artists.dat`` order, which stays untagged; one extra tag names a
    pair nobody listened to.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = sorted(sample_interactions(n_users, n_items, seed))
    listens, tags, last_of = [], [], {}
    for user, item, _time, _ in rows:
        last_of[user] = (user, item)
    for user, item, time, _ in rows:
        listens.append(f"{user}\t{item}\t{rng.randint(1, 9999)}\n")
        if last_of[user] == (user, item):
            continue
        for extra in range(rng.randint(1, 2)):
            tags.append(f"{user}\t{item}\t{rng.randint(1, 50)}\t{(time + extra * 999) * 1000}\n")
    unheard = min(set(range(1, n_items + 1)) - {i for u, i, _, _ in rows if u == 1})
    tags.append(f"1\t{unheard}\t7\t{BASE_TIME * 1000}\n")
    (folder / "user_artists.dat").write_text("userID\tartistID\tweight\n" + "".join(listens))
    artists = "".join(
        f"{i}\t{title}\thttp://www.last.fm/music/{i}\t\n"
        for i, title in sample_titles(n_items).items()
    )
    (folder / "artists.dat").write_text("id\tname\turl\tpictureURL\n" + artists, encoding="utf-8")
    (folder / "user_taggedartists-timestamps.dat").write_text(
        "userID\tartistID\ttagID\ttimestamp\n" + "".join(tags)
    )
    return folder


def _goodreads_date(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%a %b %d %H:%M:%S +0000 %Y")


def write_goodreads(
    folder: str | Path, genre: str = "poetry", n_users: int = 12, n_items: int = 40, seed: int = 0
) -> Path:
    """Write ``goodreads_{interactions,books}_<genre>.json.gz`` (JSON Lines, gzip).

    User ids are hex strings as in the real data; ``is_read`` is false for every fourth row.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = sample_interactions(n_users, n_items, seed)
    lines = []
    for n, (user, item, time, rating) in enumerate(rows):
        lines.append(
            json.dumps(
                {
                    "user_id": f"{user:032x}",
                    "book_id": str(item),
                    "review_id": f"r{n}",
                    "is_read": n % 4 != 0,
                    "rating": rating if n % 4 else 0,
                    "date_added": _goodreads_date(time),
                    "date_updated": _goodreads_date(time + 60),
                    "read_at": "",
                    "started_at": "",
                }
            )
        )
    with gzip.open(
        folder / f"goodreads_interactions_{genre}.json.gz", "wt", encoding="utf-8"
    ) as handle:
        handle.write("\n".join(lines) + "\n")
    with gzip.open(folder / f"goodreads_books_{genre}.json.gz", "wt", encoding="utf-8") as handle:
        for i, title in sample_titles(n_items).items():
            handle.write(
                json.dumps(
                    {
                        "isbn": "",
                        "similar_books": ["1", "2"],
                        "book_id": str(i),
                        "title": title,
                        "title_without_series": title,
                    }
                )
                + "\n"
            )
    return folder
