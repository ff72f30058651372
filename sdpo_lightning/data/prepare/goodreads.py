"""Reader for the UCSD Goodreads dataset (Wan & McAuley, RecSys 2018).

Expected files (JSON Lines, UTF-8, optionally gzip-compressed), per genre:

* ``goodreads_interactions_<genre>.json.gz`` — one shelf entry per line with
  ``user_id``, ``book_id``, ``is_read``, ``rating`` (0 = not rated), ``date_added``,
  ``date_updated``, ``read_at``, ``started_at`` (dates like
  ``"Fri Sep 08 10:44:24 -0700 2017"``; ISO 8601 is accepted too).
* ``goodreads_books_<genre>.json.gz`` — one book per line with ``book_id`` and ``title``
  (and ``title_without_series``).

Select them with ``--genre poetry`` inside ``--raw DIR``, with explicit
``--interactions FILE --books FILE`` (any names, e.g. the all-genre
``goodreads_interactions_dedup.json.gz``), or let the reader pick the single
``goodreads_interactions_*.json[.gz]`` in ``--raw``.

Order: by ``--time-field`` (default ``date_added``: when the book was shelved). Entries
with an empty date are dropped (``dropped.no_timestamp``). ``--only-read`` keeps
``is_read`` entries; ``--min-rating 4`` keeps ratings >= 4 (0 = unrated is below any
positive threshold). Book records are parsed only for books that occur in interactions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from sdpo_lightning.data.prepare.protocol import RawDataset
from sdpo_lightning.data.prepare.rawio import (
    LineReader,
    PrepareError,
    ReaderOptions,
    require_file,
)

__all__ = ["read_goodreads", "parse_goodreads_time", "goodreads_files"]

_MONTHS = {
    m: i for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), start=1)
}
_BOOK_ID_RE = re.compile(r'"book_id"\s*:\s*"([^"]*)"')
TIME_FIELDS = ("date_added", "date_updated", "read_at", "started_at")


def parse_goodreads_time(text: str) -> float:
    """Parse ``"Fri Sep 08 10:44:24 -0700 2017"`` (or ISO 8601) to a POSIX timestamp.

    Raises:
        ValueError: The text is not a date in either format.
    """
    parts = text.split()
    if len(parts) == 6 and parts[1] in _MONTHS:
        hour, minute, second = (int(p) for p in parts[3].split(":"))
        zone = parts[4]
        if len(zone) != 5 or zone[0] not in "+-":
            raise ValueError(f"bad UTC offset {zone!r}")
        offset = (int(zone[1:3]) * 60 + int(zone[3:5])) * (1 if zone[0] == "+" else -1)
        when = datetime(
            int(parts[5]),
            _MONTHS[parts[1]],
            int(parts[2]),
            hour,
            minute,
            second,
            tzinfo=timezone(timedelta(minutes=offset)),
        )
        return when.timestamp()
    when = datetime.fromisoformat(text.strip())
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def goodreads_files(raw: Path | None, options: ReaderOptions) -> tuple[Path, Path]:
    """Resolve the interactions and books files from the options.

    Returns:
        ``(interactions file, books file)``.
    """
    if options.interactions is not None or options.books is not None:
        if options.interactions is None or options.books is None:
            raise PrepareError("goodreads: pass both --interactions and --books")
        return (
            require_file(Path(options.interactions), "Goodreads interactions"),
            require_file(Path(options.books), "Goodreads books"),
        )
    if raw is None or not Path(raw).is_dir():
        raise PrepareError(
            "goodreads: --raw DIR (with --genre) or --interactions/--books are required"
        )
    raw = Path(raw)
    genre = options.genre
    if genre is None:
        found = sorted(p.name for p in raw.glob("goodreads_interactions_*.json*"))
        if len(found) != 1:
            raise PrepareError(
                f"goodreads: pass --genre; found interactions files: "
                f"{', '.join(found) or 'none'} in {raw}"
            )
        genre = re.sub(r"^goodreads_interactions_|\.json(\.gz)?$", "", found[0])
    paths = []
    for kind in ("interactions", "books"):
        stem = f"goodreads_{kind}_{genre}.json"
        path = next((raw / n for n in (stem + ".gz", stem) if (raw / n).is_file()), None)
        if path is None:
            raise PrepareError(f"goodreads: missing file {raw / (stem + '.gz')}")
        paths.append(path)
    return paths[0], paths[1]


def _interactions(
    reader: LineReader,
    options: ReaderOptions,
    dropped: Counter,
) -> list[tuple[str, str, float, float | None]]:
    out: list[tuple[str, str, float, float | None]] = []
    field = options.time_field
    for lineno, obj in reader.json_objects():
        user, book, stamp = obj.get("user_id"), obj.get("book_id"), obj.get(field)
        if (
            not isinstance(user, (str, int))
            or not isinstance(book, (str, int))
            or str(user) == ""
            or str(book) == ""
        ):
            reader.bad(lineno, "missing user_id or book_id")
            continue
        if not stamp:
            dropped["no_timestamp"] += 1
            continue
        if options.only_read and not obj.get("is_read", False):
            dropped["not_read"] += 1
            continue
        try:
            time = parse_goodreads_time(str(stamp))
        except (ValueError, OverflowError):
            reader.bad(lineno, f"cannot parse {field} {stamp!r} as a date")
            continue
        rating = obj.get("rating")
        rating = float(rating) if isinstance(rating, (int, float)) else None
        out.append((str(user), str(book), time, rating))
    return out


def _titles(reader: LineReader, wanted: set[str], field: str) -> dict[str, str]:
    titles: dict[str, str] = {}
    for lineno, text in reader.lines():
        match = _BOOK_ID_RE.search(text)
        if match and match.group(1) not in wanted:
            continue  # fast path: skip full parsing of books nobody interacted with
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            reader.bad(lineno, f"invalid JSON: {err.msg} at column {err.colno}")
            continue
        if not isinstance(obj, dict) or "book_id" not in obj:
            reader.bad(lineno, "expected a JSON object with book_id")
            continue
        book, title = str(obj["book_id"]), obj.get(field)
        if book in wanted and isinstance(title, str) and book not in titles:
            titles[book] = title
    return titles


def read_goodreads(raw: Path | None, options: ReaderOptions = ReaderOptions()) -> RawDataset:
    """Read Goodreads interactions and book titles.

    Args:
        raw: Folder with the by-genre files (optional with explicit file options).
        options: ``genre`` / ``interactions`` / ``books``, ``time_field``, ``only_read``,
            ``title_field``, ``lenient``, ``encoding`` (default UTF-8).
    """
    if options.time_field not in TIME_FIELDS:
        raise PrepareError(f"goodreads: --time-field must be one of {', '.join(TIME_FIELDS)}")
    if options.title_field not in ("title", "title_without_series"):
        raise PrepareError("goodreads: --title-field must be title or title_without_series")
    inter_path, books_path = goodreads_files(raw, options)
    encoding = options.encoding or "utf-8"
    skipped: Counter = Counter()
    dropped: Counter = Counter()
    interactions = _interactions(
        LineReader(inter_path, encoding, lenient=options.lenient, skipped=skipped), options, dropped
    )
    wanted = {book for _, book, _, _ in interactions}
    titles = _titles(
        LineReader(books_path, encoding, lenient=options.lenient, skipped=skipped),
        wanted,
        options.title_field,
    )
    return RawDataset(
        name="goodreads",
        interactions=interactions,
        titles=titles,
        dropped=dropped,
        skipped_lines=skipped,
    )
