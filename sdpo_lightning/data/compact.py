"""Compact, streaming-loaded example storage.

A prepared MovieLens-100K train split has 77k rows of about 30 titles each: as
:class:`~sdpo_lightning.data.records.Example` objects (one ``str`` per title occurrence)
that is ~2.3M strings and several hundred MB. :class:`CompactExamples` keeps every distinct
title once and each row as int32 indices into that table (≈ 130 bytes a row), and rebuilds an
``Example`` on demand. :func:`load_compact` reads a candidate-list file record by record
(validated by :func:`~sdpo_lightning.data.readers.parse_record`, with the same errors and
lenient skipping as :func:`~sdpo_lightning.data.readers.load_examples`), so the parsed JSON of
the whole file never exists at once.

``item_ids`` are not kept (nothing downstream of the data module reads them).
"""

from __future__ import annotations

import json
import logging
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdpo_lightning.data.readers import parse_record, unreadable
from sdpo_lightning.data.records import DataFormatError, Example

log = logging.getLogger(__name__)


class CompactExamples(Sequence[Example]):
    """Examples as title indices: ``self[i]`` rebuilds the :class:`Example`.

    Args:
        titles: every distinct title (history, candidates, targets) once.
        history: flat title indices of all histories; row ``i`` is
            ``history[h_off[i]:h_off[i + 1]]``.
        h_off: (n + 1,) offsets into ``history``.
        candidates: flat title indices of all candidate lists.
        c_off: (n + 1,) offsets into ``candidates``.
        target_index: (n,) index of the target within each row's candidates.
        user_ids: per-row user id (``None`` when absent); repeated ids share one string.
    """

    def __init__(
        self,
        titles: list[str],
        history: np.ndarray,
        h_off: np.ndarray,
        candidates: np.ndarray,
        c_off: np.ndarray,
        target_index: np.ndarray,
        user_ids: list[str | None],
    ) -> None:
        self.titles = titles
        self.history, self.h_off = history, h_off
        self.candidates, self.c_off = candidates, c_off
        self.target_index = target_index
        self.user_ids = user_ids

    def __len__(self) -> int:
        return len(self.target_index)

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"example {index} out of range for {len(self)} examples")
        index %= len(self)
        t = self.titles
        cands = tuple(t[j] for j in self.candidates[self.c_off[index] : self.c_off[index + 1]])
        return Example(
            history=tuple(t[j] for j in self.history[self.h_off[index] : self.h_off[index + 1]]),
            candidates=cands,
            target=cands[ti] if (ti := int(self.target_index[index])) >= 0 else None,
            user_id=self.user_ids[index],
        )

    def n_candidates(self, index: int) -> int:
        """Size of row ``index``'s candidate list (no title lookup)."""
        return int(self.c_off[index + 1] - self.c_off[index])

    @property
    def max_candidates(self) -> int:
        """The longest candidate list of the split."""
        return int(np.diff(self.c_off).max()) if len(self) else 0

    def target_counts(self) -> Counter:
        """How often each title is a target (the ``popularity`` strategy's counts)."""
        starts = self.c_off[:-1] + self.target_index
        ids, counts = np.unique(self.candidates[starts], return_counts=True)
        return Counter({self.titles[int(i)]: int(c) for i, c in zip(ids, counts, strict=False)})

    def head(self, n: int) -> CompactExamples:
        """The first ``n`` rows (e.g. ``limit_val_examples``)."""
        n = min(n, len(self))
        return CompactExamples(
            self.titles,
            self.history[: self.h_off[n]],
            self.h_off[: n + 1],
            self.candidates[: self.c_off[n]],
            self.c_off[: n + 1],
            self.target_index[:n],
            self.user_ids[:n],
        )


class _Builder:
    """Accumulates examples into the compact arrays, interning titles and user ids."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.titles: list[str] = []
        self.users: dict[str, str] = {}
        self.history, self.candidates = array("i"), array("i")
        self.h_off, self.c_off = array("q", [0]), array("q", [0])
        self.target, self.user_ids = array("h"), []

    def _ids(self, titles: Sequence[str]) -> list[int]:
        out = []
        for title in titles:
            j = self.index.get(title)
            if j is None:
                j = self.index[title] = len(self.titles)
                self.titles.append(title)
            out.append(j)
        return out

    def add(self, ex: Example) -> None:
        self.history.extend(self._ids(ex.history))
        self.candidates.extend(self._ids(ex.candidates))
        self.h_off.append(len(self.history))
        self.c_off.append(len(self.candidates))
        self.target.append(ex.target_index)
        self.user_ids.append(
            None if ex.user_id is None else self.users.setdefault(ex.user_id, ex.user_id)
        )

    def build(self) -> CompactExamples:
        def arr(a: array, dtype: Any) -> np.ndarray:
            return np.frombuffer(a, dtype=dtype).copy() if len(a) else np.zeros(0, dtype=dtype)

        return CompactExamples(
            self.titles,
            arr(self.history, np.int32),
            arr(self.h_off, np.int64),
            arr(self.candidates, np.int32),
            arr(self.c_off, np.int64),
            arr(self.target, np.int16),
            self.user_ids,
        )


def _position(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def iter_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(label, raw object)`` one record at a time (labels as ``load_examples``'s)."""
    try:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataFormatError(
                            str(path),
                            f"line {lineno}",
                            f"malformed JSON ({err.msg} at column {err.colno})",
                        ) from None
                    yield f"line {lineno}", obj
            return
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(str(path), None, f"not UTF-8 text ({err.reason})") from None
    except OSError as err:
        raise unreadable(path, err) from None
    decoder = json.JSONDecoder()
    ws = " \t\n\r"
    n, pos = len(text), 0

    def fail(msg: str, at: int) -> DataFormatError:
        line, col = _position(text, at)
        return DataFormatError(
            str(path), None, f"malformed JSON ({msg} at line {line}, column {col})"
        )

    def skip(p: int) -> int:
        while p < n and text[p] in ws:
            p += 1
        return p

    pos = skip(pos)
    if pos >= n or text[pos] != "[":
        try:  # not a list: say what it is, as load_examples does
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise fail(err.msg, err.pos) from None
        raise DataFormatError(
            str(path), None, f"expected a JSON list of records, got {type(data).__name__}"
        )
    pos, i = skip(pos + 1), 0
    if pos < n and text[pos] == "]":
        pos = n + 1  # an empty list
    while pos < n:
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise fail(err.msg, err.pos) from None
        yield f"record {i}", obj
        i += 1
        pos = skip(pos)
        if pos < n and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < n and text[pos] == "]":
            if skip(pos + 1) < n:
                raise fail("Extra data", skip(pos + 1))
            break
        else:
            raise fail("Expecting ',' delimiter", pos)
    else:
        if pos == n:
            raise fail("Expecting value", pos)


def load_compact(
    path: str | Path, min_candidates: int = 2, lenient: bool = False, require_target: bool = True
) -> tuple[CompactExamples, list[tuple[str, str]]]:
    """Read and validate a candidate-list file into :class:`CompactExamples`.

    Args:
        path: a ``.json`` (list) or ``.jsonl`` file.
        min_candidates: the least number of candidates a record needs (K+1).
        lenient: skip bad records (returned with their reasons) instead of failing.
        require_target: ``False`` (``predict``) accepts records without ``trueSelection``.

    Returns:
        The examples and the ``(record label, reason)`` of every skipped record.

    Raises:
        DataFormatError: naming the file, record and reason.
    """
    path = Path(path)
    builder, skipped = _Builder(), []
    for label, obj in iter_records(path):
        try:
            ex = parse_record(obj, min_candidates=min_candidates, require_target=require_target)
        except ValueError as err:
            if not lenient:
                raise DataFormatError(str(path), label, str(err)) from None
            skipped.append((label, str(err)))
            continue
        builder.add(ex)
    if skipped:
        log.warning(
            "%s: skipped %d bad record(s) (lenient loading); first: %s: %s",
            path,
            len(skipped),
            *skipped[0],
        )
    if not len(builder.target):
        raise DataFormatError(str(path), None, "no valid records")
    return builder.build(), skipped
