"""Line-oriented reading of raw interaction files with precise error reporting.

Every reader in this package goes through :class:`LineReader`, so a malformed line is
always reported the same way: ``<file>:<line>: <reason>``. With ``lenient=True`` the line
is skipped instead and counted per file; the counts end up in ``stats.json`` and on the
console, so nothing is dropped silently.
"""

from __future__ import annotations

import codecs
import gzip
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PrepareError",
    "LineReader",
    "ReaderOptions",
    "natural_key",
    "require_file",
    "locate",
]


class PrepareError(Exception):
    """A user-facing error: bad input, missing file, bad option. Printed without traceback."""


def natural_key(value: str) -> tuple[int, int, str]:
    """Sort key that orders decimal ids numerically and everything else lexically.

    Args:
        value: A raw user or item id.

    Returns:
        A tuple usable as a ``sorted`` key; numeric ids sort before non-numeric ones.
    """
    if value.isascii() and value.isdigit():
        return (0, int(value), "")
    return (1, 0, value)


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is an existing file, else raise a :class:`PrepareError`.

    Args:
        path: The expected file.
        what: A short description used in the message (e.g. ``"MovieLens ratings"``).
    """
    if not path.is_file():
        raise PrepareError(f"missing file: {path} ({what})")
    return path


@dataclass(frozen=True)
class ReaderOptions:
    """Options shared by the readers (each uses the ones that apply to it).

    Attributes:
        lenient: Skip and count malformed lines instead of failing.
        encoding: Override the dataset's default text encoding.
        genre: Goodreads genre, e.g. ``"poetry"`` (selects the UCSD by-genre files).
        interactions: Goodreads: explicit interactions file.
        books: Goodreads: explicit book metadata file.
        time_field: Goodreads: the date field that orders interactions.
        only_read: Goodreads: keep only shelf entries with ``is_read`` true.
        title_field: Goodreads: ``"title"`` or ``"title_without_series"``.
    """

    lenient: bool = False
    encoding: str | None = None
    genre: str | None = None
    interactions: Path | None = None
    books: Path | None = None
    time_field: str = "date_added"
    only_read: bool = False
    title_field: str = "title"


def locate(raw: Path | None, names: Sequence[str], subdirs: Sequence[str], what: str) -> Path:
    """Find the folder holding all ``names``: ``raw`` itself or one of its ``subdirs``.

    Archives unpack into a named folder (``ml-100k/``), so both the folder and its parent
    are accepted as ``--raw``.

    Raises:
        PrepareError: ``raw`` is missing or none of the folders holds every file.
    """
    if raw is None:
        raise PrepareError(f"{what}: --raw DIR is required (expected files: {', '.join(names)})")
    raw = Path(raw)
    if not raw.exists():
        raise PrepareError(f"{what}: raw path does not exist: {raw}")
    if raw.is_file():
        raise PrepareError(
            f"{what}: --raw must be a folder holding {', '.join(names)}; "
            f"got the file {raw} (unpack archives first, or use --download)"
        )
    for folder in [raw, *(raw / sub for sub in subdirs)]:
        if all((folder / name).is_file() for name in names):
            return folder
    missing = [name for name in names if not (raw / name).is_file()]
    raise PrepareError(
        f"{what}: missing file(s) in {raw}: {', '.join(missing)} (expected: {', '.join(names)})"
    )


def check_encoding(encoding: str) -> str:
    """Validate a codec name, raising :class:`PrepareError` for unknown encodings."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise PrepareError(f"unknown encoding {encoding!r} (try utf-8 or latin-1)") from None


class LineReader:
    """Iterate over the lines of one raw file, decoding and validating each one.

    Args:
        path: The file; ``.gz`` files are decompressed transparently.
        encoding: Text encoding applied line by line (decode errors name the line).
        lenient: Skip and count malformed lines instead of raising.
        skipped: Shared counter ``{file name: skipped lines}`` updated in lenient mode.
    """

    def __init__(
        self,
        path: Path,
        encoding: str = "utf-8",
        *,
        lenient: bool = False,
        skipped: Counter | None = None,
    ) -> None:
        self.path = Path(path)
        self.encoding = check_encoding(encoding)
        self.lenient = lenient
        self.skipped = skipped if skipped is not None else Counter()

    def bad(self, lineno: int, reason: str) -> None:
        """Report a malformed line: raise, or count it when lenient."""
        if not self.lenient:
            raise PrepareError(
                f"{self.path}:{lineno}: {reason} (use --lenient to skip malformed lines)"
            )
        self.skipped[self.path.name] += 1

    def lines(self) -> Iterator[tuple[int, str]]:
        """Yield ``(line number, decoded line without newline)``; blank lines are ignored."""
        opener = gzip.open if self.path.suffix == ".gz" else open
        try:
            handle = opener(self.path, "rb")
        except OSError as err:
            raise PrepareError(f"cannot open {self.path}: {err.strerror or err}") from None
        with handle:
            try:
                for lineno, raw in enumerate(handle, start=1):
                    try:
                        text = raw.decode(self.encoding)
                    except UnicodeDecodeError as err:
                        self.bad(lineno, f"cannot decode as {self.encoding}: {err.reason}")
                        continue
                    text = text.rstrip("\r\n")
                    if text.strip():
                        yield lineno, text
            except (OSError, EOFError) as err:  # truncated / corrupt gzip
                raise PrepareError(f"cannot read {self.path}: {err}") from None

    def rows(
        self,
        sep: str,
        ncols: int | tuple[int, int],
        *,
        header: Sequence[str] = (),
    ) -> Iterator[tuple[int, list[str]]]:
        """Yield ``(line number, fields)`` for a delimited file with a checked column count.

        Args:
            sep: Field separator (``"\\t"``, ``"|"``, ``"::"``).
            ncols: Exact column count, or an inclusive ``(min, max)`` range.
            header: If given and the first line starts with these names, that line is skipped.
        """
        low, high = (ncols, ncols) if isinstance(ncols, int) else ncols
        first = True
        for lineno, text in self.lines():
            fields = text.split(sep)
            if first and header:
                first = False
                if [f.strip() for f in fields[: len(header)]] == list(header):
                    continue
            first = False
            if not low <= len(fields) <= high:
                want = str(low) if low == high else f"{low}-{high}"
                self.bad(lineno, f"expected {want} {sep!r}-separated columns, found {len(fields)}")
                continue
            yield lineno, fields

    def json_objects(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield ``(line number, object)`` for a JSON Lines file (one object per line)."""
        for lineno, text in self.lines():
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                self.bad(lineno, f"invalid JSON: {err.msg} at column {err.colno}")
                continue
            if not isinstance(obj, dict):
                self.bad(lineno, f"expected a JSON object, found {type(obj).__name__}")
                continue
            yield lineno, obj
