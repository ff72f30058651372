"""Reader for the HetRec 2011 Last.fm dataset (``hetrec2011-lastfm-2k.zip``).

Expected files (tab-separated, UTF-8, each with a header line):

* ``user_artists.dat`` — ``userID  artistID  weight``: who listened to which artist
  (``weight`` = play count). These pairs are the interactions.
* ``artists.dat`` — ``id  name  url  pictureURL``: the artist name is the item title.
* ``user_taggedartists-timestamps.dat`` — ``userID  artistID  tagID  timestamp`` (ms):
  the only time information in the dataset.

Order: ``user_artists.dat`` has no timestamps, so each (user, artist) pair is placed at the
**earliest** timestamp at which that user tagged that artist; equal times keep the order
of ``user_artists.dat``. Pairs the user never tagged have no time and are **dropped**
(counted as ``dropped.untagged_pair`` in ``stats.json``). Tags of pairs absent from
``user_artists.dat`` are ignored (counted as ``dropped.tag_without_listen``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sdpo_lightning.data.prepare.protocol import RawDataset
from sdpo_lightning.data.prepare.rawio import LineReader, ReaderOptions, locate

__all__ = ["read_lastfm", "LASTFM_FILES"]

LASTFM_FILES = ("user_artists.dat", "artists.dat", "user_taggedartists-timestamps.dat")


def _first_tag_times(reader: LineReader) -> dict[tuple[str, str], float]:
    """Earliest tag timestamp per (user, artist)."""
    first: dict[tuple[str, str], float] = {}
    for lineno, fields in reader.rows("\t", 4, header=("userID", "artistID")):
        user, artist, _, stamp = (f.strip() for f in fields)
        try:
            time = float(int(stamp))
        except ValueError:
            reader.bad(lineno, f"timestamp {stamp!r} is not an integer")
            continue
        key = (user, artist)
        if key not in first or time < first[key]:
            first[key] = time
    return first


def _artist_names(reader: LineReader) -> dict[str, str]:
    names: dict[str, str] = {}
    for lineno, fields in reader.rows("\t", (2, 4), header=("id", "name")):
        artist = fields[0].strip()
        if not artist:
            reader.bad(lineno, "empty artist id")
        elif artist in names:
            reader.bad(lineno, f"duplicate artist id {artist!r}")
        else:
            names[artist] = fields[1]
    return names


def read_lastfm(raw: Path | None, options: ReaderOptions = ReaderOptions()) -> RawDataset:
    """Read HetRec 2011 Last.fm from the folder holding its ``.dat`` files.

    Args:
        raw: The unpacked archive folder (or a folder containing
            ``hetrec2011-lastfm-2k/``).
        options: Reader options (``lenient``, ``encoding``; default UTF-8).

    Returns:
        Interactions with the first-tag time of each listened (user, artist) pair.
    """
    folder = locate(raw, LASTFM_FILES, ("hetrec2011-lastfm-2k",), "lastfm")
    encoding = options.encoding or "utf-8"
    skipped: Counter = Counter()

    def reader(name: str) -> LineReader:
        return LineReader(folder / name, encoding, lenient=options.lenient, skipped=skipped)

    times = _first_tag_times(reader(LASTFM_FILES[2]))
    titles = _artist_names(reader(LASTFM_FILES[1]))
    dropped: Counter = Counter()
    interactions: list[tuple[str, str, float, float | None]] = []
    listened: set[tuple[str, str]] = set()
    ua = reader(LASTFM_FILES[0])
    for lineno, fields in ua.rows("\t", 3, header=("userID", "artistID")):
        user, artist, weight = (f.strip() for f in fields)
        if not user or not artist or not weight.lstrip("-").isdigit():
            ua.bad(lineno, f"expected userID, artistID, integer weight; got {fields!r}")
            continue
        listened.add((user, artist))
        time = times.get((user, artist))
        if time is None:
            dropped["untagged_pair"] += 1
            continue
        interactions.append((user, artist, time, None))
    dropped["tag_without_listen"] = sum(1 for key in times if key not in listened)
    return RawDataset(
        name="lastfm",
        interactions=interactions,
        titles=titles,
        dropped=+dropped,
        skipped_lines=skipped,
    )
