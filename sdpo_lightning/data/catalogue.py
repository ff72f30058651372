"""The item catalogue of a data set: every item title once, with its training popularity.

The all-item protocol (``docs/all_item.md``) ranks the whole catalogue, not a candidate list,
so it needs the list of every item. ``catalogue.json`` is a JSON list, one object per item::

    [{"item_id": "1", "title": "Toy Story (1995)", "popularity": 452}, ...]

* ``title`` (required): a non-blank string, the item's name exactly as the data files spell it.
* ``item_id`` (optional, a string or null): the raw id (``sdpo-prepare`` writes it).
* ``popularity`` (optional, an integer >= 0, on every item or on none): the number of rows of the
  **training** file whose target is the item (the count the ``popularity`` negatives use). It
  feeds the popularity-bias and novelty metrics; without it they are left out.

A bare list of title strings is read as well (no ids, no popularity).

Where it comes from:

* ``sdpo-prepare <dataset> --out DIR`` writes ``DIR/catalogue.json`` next to the splits (items
  in raw-id order, popularity from ``DIR/train.json``).
* For candidate-list files (e.g. the public S-DPO / LLaRA LastFM JSON):
  ``sdpo-prepare catalogue train.json valid.json test.json --out catalogue.json`` takes the union
  of every ``historyList``, ``itemList`` and ``trueSelection`` title over the files (sorted by
  code point), popularity from the file named ``train.*`` (or ``--train FILE``)
  (:func:`catalogue_from_candidate_lists`).

Rules (each violation is one error naming the file, the record and the reason):

* a title is a non-blank string; ``item_id`` values are unique when given;
* **exact duplicates** (the same string twice) are refused: two items the model cannot tell
  apart;
* **case-only duplicates** (``"Heroes"`` and ``"heroes"``: equal after ``str.casefold``) are
  refused too: in practice they are one item spelt twice, which would split its popularity and
  count a recommendation of one spelling as a miss of the other; ``sdpo-prepare`` gives such
  items distinct titles (``" [2]"``, as for exact duplicates). Rename one of them to keep both.
* titles that differ in blanks or punctuation (``"IRA"`` and ``"Ira!"``, one pair in the
  public LastFM data) are distinct items: beam search tells them apart by their tokens; reading
  a free-generation answer takes the exact spelling first (:meth:`Catalogue.match`);
* a test row whose target is not in the catalogue is refused (:meth:`Catalogue.check_targets`).
"""

from __future__ import annotations

import argparse
import json
import numbers
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdpo_lightning.data.records import DataFormatError

__all__ = [
    "Catalogue",
    "catalogue_from_candidate_lists",
    "load_catalogue",
    "write_catalogue",
    "catalogue_main",
]


class Catalogue:
    """Every item of a data set: titles (the item's index is its position), optional raw ids and
    training popularity.

    Args:
        titles: the item titles, each once (see the module docstring for the rules).
        item_ids: raw ids (``None`` entries allowed), or ``None``.
        popularity: training popularity of each item, or ``None``.
        source: where the catalogue came from (named in errors).

    Raises:
        DataFormatError: a blank or non-string title, an exact or case-only duplicate, a
            duplicate id, a bad popularity; naming ``source`` and the record.
    """

    def __init__(
        self,
        titles: Sequence[str],
        item_ids: Sequence[str | None] | None = None,
        popularity: Sequence[int] | None = None,
        source: str = "catalogue",
    ) -> None:
        self.source = str(source)
        self.titles: list[str] = list(titles)
        if not self.titles:
            raise DataFormatError(self.source, None, "the catalogue holds no item")
        if item_ids is not None and len(item_ids) != len(self.titles):
            raise ValueError(f"{len(item_ids)} item ids for {len(self.titles)} titles")
        if popularity is not None and len(popularity) != len(self.titles):
            raise ValueError(f"{len(popularity)} popularity counts for {len(self.titles)} titles")
        self.item_ids: list[str | None] = (
            list(item_ids) if item_ids is not None else [None] * len(self.titles)
        )
        self.index: dict[str, int] = {}
        folded: dict[str, int] = {}
        ids: dict[str, int] = {}
        for i, title in enumerate(self.titles):
            where = f"record {i}"
            if not isinstance(title, str):
                raise DataFormatError(self.source, where, f"title must be a string, got {title!r}")
            if not title.strip():
                raise DataFormatError(self.source, where, f"empty title {title!r}")
            if title in self.index:
                raise DataFormatError(
                    self.source,
                    where,
                    f"duplicate title {title!r} (also record "
                    f"{self.index[title]}): every item needs its own title",
                )
            j = folded.setdefault(title.casefold(), i)
            if j != i:
                raise DataFormatError(
                    self.source,
                    where,
                    f"title {title!r} differs from record {j} "
                    f"({self.titles[j]!r}) only in letter case: one item spelt twice? rename one "
                    "(e.g. with a ' [2]' suffix, as sdpo-prepare does) or merge them",
                )
            self.index[title] = i
            item_id = self.item_ids[i]
            if item_id is not None:
                k = ids.setdefault(item_id, i)
                if k != i:
                    raise DataFormatError(
                        self.source, where, f"duplicate item_id {item_id!r} (also record {k})"
                    )
        self.popularity: np.ndarray | None = None
        if popularity is not None:
            counts = np.zeros(len(self.titles), dtype=np.int64)
            for i, p in enumerate(popularity):
                if isinstance(p, bool) or not isinstance(p, numbers.Integral) or p < 0:
                    raise DataFormatError(
                        self.source, f"record {i}", f"popularity must be an integer >= 0, got {p!r}"
                    )
                counts[i] = int(p)
            self.popularity = counts
        self._normalized: dict[str, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.titles)

    def __contains__(self, title: object) -> bool:
        return title in self.index

    def __repr__(self) -> str:
        pop = "with" if self.popularity is not None else "without"
        return f"Catalogue({len(self)} items {pop} popularity, from {self.source})"

    @property
    def has_popularity(self) -> bool:
        """Whether training popularity is known (the popularity and novelty metrics need it)."""
        return self.popularity is not None

    def self_information(self) -> np.ndarray:
        """``-log2 p(i)`` of every item, ``p(i) = (popularity_i + 1) / (sum popularity + n_items)``
        (add-one smoothing, so items never seen in training have a finite value): the novelty
        of recommending it. Needs popularity."""
        if self.popularity is None:
            raise ValueError(f"{self.source}: the catalogue has no popularity")
        p = (self.popularity + 1.0) / (float(self.popularity.sum()) + len(self))
        return -np.log2(p)

    def match(self, answer: str) -> int | None:
        """The item a free-generation answer names, or None (invalid).

        ``answer`` (the parsed scope: first non-blank line) stripped of surrounding blanks is
        looked up exactly; failing that, its normalized form
        (:func:`~sdpo_lightning.evaluation.parsing.normalize_title`: case, quotes, dashes,
        blanks, surrounding punctuation) must equal that of exactly one title.
        """
        text = answer.strip()
        if text in self.index:
            return self.index[text]
        from sdpo_lightning.evaluation.parsing import normalize_title

        if self._normalized is None:
            table: dict[str, list[int]] = {}
            for i, t in enumerate(self.titles):
                table.setdefault(normalize_title(t), []).append(i)
            self._normalized = table
        hits = self._normalized.get(normalize_title(text), [])
        return hits[0] if len(hits) == 1 else None

    def check_targets(self, targets: Iterable[str | None], source: str) -> None:
        """Refuse a data split with a target outside the catalogue.

        Args:
            targets: the split's targets in record order (``None``: a row without a target).
            source: the split's file (named in the error).

        Raises:
            DataFormatError: naming ``source``, the record and the missing title.
        """
        for i, target in enumerate(targets):
            if target is not None and target not in self.index:
                raise DataFormatError(
                    source,
                    f"record {i}",
                    f"target {target!r} is not in the catalogue "
                    f"{self.source} ({len(self)} items): the all-item protocol can never "
                    "recommend it; rebuild the catalogue from every split (sdpo-prepare catalogue)",
                )

    def records(self) -> list[dict[str, Any]]:
        """The catalogue as ``catalogue.json`` holds it."""
        out = []
        for i, title in enumerate(self.titles):
            rec: dict[str, Any] = {"item_id": self.item_ids[i], "title": title}
            if self.popularity is not None:
                rec["popularity"] = int(self.popularity[i])
            out.append(rec)
        return out


# ---------------------------------------------------------------------------- files
def write_catalogue(catalogue: Catalogue, path: str | Path) -> Path:
    """Write ``catalogue.json`` (UTF-8, one item a line, replaced atomically; byte-identical for
    the same catalogue)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    lines = [json.dumps(r, ensure_ascii=False) for r in catalogue.records()]
    tmp.write_text("[\n" + ",\n".join(lines) + "\n]\n", encoding="utf-8", newline="\n")
    os.replace(tmp, path)
    return path


def load_catalogue(path: str | Path) -> Catalogue:
    """Read and check a ``catalogue.json`` (module docstring).

    Raises:
        DataFormatError: unreadable file, malformed JSON, not a list, a bad record; naming the
            file and the record.
    """
    path = Path(path)
    source = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataFormatError(
            source,
            None,
            "catalogue file not found (sdpo-prepare writes "
            "catalogue.json; `sdpo-prepare catalogue` derives one)",
        ) from None
    except UnicodeDecodeError as err:
        raise DataFormatError(source, None, f"not UTF-8 text ({err.reason})") from None
    except OSError as err:
        raise DataFormatError(source, None, f"cannot read it ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise DataFormatError(
            source, None, f"malformed JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
    if not isinstance(data, list):
        raise DataFormatError(
            source, None, f"expected a JSON list of items, got {type(data).__name__}"
        )
    titles: list[Any] = []
    ids: list[str | None] = []
    pops: list[Any] = []
    for i, rec in enumerate(data):
        where = f"record {i}"
        if isinstance(rec, str):
            rec = {"title": rec}
        if not isinstance(rec, dict):
            raise DataFormatError(
                source, where, f"expected an object or a title, got {type(rec).__name__}"
            )
        unknown = sorted(set(rec) - {"item_id", "title", "popularity"})
        if unknown:
            raise DataFormatError(
                source, where, f"unknown key(s) {unknown}; an item has title, item_id, popularity"
            )
        if "title" not in rec:
            raise DataFormatError(source, where, "missing key title")
        item_id = rec.get("item_id")
        if item_id is not None and (
            isinstance(item_id, bool) or not isinstance(item_id, (str, int))
        ):
            raise DataFormatError(
                source, where, f"item_id must be a string or null, got {item_id!r}"
            )
        titles.append(rec["title"])
        ids.append(None if item_id is None else str(item_id))
        pops.append(rec.get("popularity"))
    given = [p is not None for p in pops]
    if any(given) and not all(given):
        i = given.index(False) if given[0] else given.index(True)
        raise DataFormatError(
            source,
            f"record {i}",
            "popularity is given for some items but not others: give it for every item or for none",
        )
    return Catalogue(titles, ids, pops if all(given) and pops else None, source=source)


def catalogue_from_candidate_lists(
    paths: Sequence[str | Path], train: str | Path | None = None
) -> Catalogue:
    """The catalogue of candidate-list files: every title of every ``historyList``,
    ``itemList`` and ``trueSelection`` over ``paths``, sorted by code point.

    Args:
        paths: candidate-list files (``.json`` / ``.jsonl``; every record is checked as the data
            module checks it).
        train: the training file whose targets give the popularity (it is read as one of the
            files when not in ``paths``); ``None``: no popularity.

    Raises:
        DataFormatError: a bad record, or two spellings of one title that differ only in case;
            naming the file and record of each.
    """
    from sdpo_lightning.data.compact import iter_records
    from sdpo_lightning.data.readers import parse_record

    files = [Path(p) for p in paths]
    if train is not None and Path(train) not in files:
        files.append(Path(train))
    if not files:
        raise ValueError("no candidate-list file given")
    first_seen: dict[str, tuple[str, str]] = {}  # title -> (file, record)
    folded: dict[str, str] = {}
    popularity: Counter = Counter()
    for path in files:
        is_train = train is not None and path == Path(train)
        n = 0
        for label, obj in iter_records(path):
            try:
                ex = parse_record(obj, min_candidates=1, require_target=False)
            except ValueError as err:
                raise DataFormatError(str(path), label, str(err)) from None
            n += 1
            for title in (*ex.history, *ex.candidates, *([ex.target] if ex.target else [])):
                if title in first_seen:
                    continue
                first_seen[title] = (str(path), label)
                other = folded.setdefault(title.casefold(), title)
                if other != title:
                    f, r = first_seen[other]
                    raise DataFormatError(
                        str(path),
                        label,
                        f"title {title!r} differs from {other!r} ({f}, {r}) only "
                        "in letter case: one item spelt twice? a catalogue needs one spelling "
                        "per item (rename one, e.g. with a ' [2]' suffix)",
                    )
            if is_train and ex.target is not None:
                popularity[ex.target] += 1
        if n == 0:
            raise DataFormatError(str(path), None, "no records")
    titles = sorted(first_seen)
    pops = [popularity[t] for t in titles] if train is not None else None
    source = ", ".join(str(p) for p in files)
    return Catalogue(titles, popularity=pops, source=source)


def _guess_train(paths: Sequence[Path]) -> Path | None:
    named = [p for p in paths if p.stem == "train" and p.suffix in (".json", ".jsonl")]
    return named[0] if len(named) == 1 else None


def catalogue_main(argv: Sequence[str] | None = None) -> int:
    """``sdpo-prepare catalogue FILE... --out PATH [--train FILE]`` (module docstring).

    Returns 0, or 2 after bad input (one ``sdpo-prepare catalogue: error:`` line).
    """
    from sdpo_lightning.errors import UserError, report

    parser = argparse.ArgumentParser(
        prog="sdpo-prepare catalogue",
        description="Write catalogue.json: every title of candidate-list files (history, "
        "candidates, targets) once, with the training popularity.",
    )
    parser.add_argument("files", nargs="+", type=Path, help="candidate-list files (.json/.jsonl)")
    parser.add_argument("--out", type=Path, required=True, help="catalogue.json to write")
    parser.add_argument(
        "--train",
        type=Path,
        default=None,
        help="training file for the popularity (default: the file named "
        "train.json / train.jsonl among FILES)",
    )
    parser.add_argument("--no-popularity", action="store_true", help="write no popularity")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    train = None if args.no_popularity else (args.train or _guess_train(args.files))
    try:
        cat = catalogue_from_candidate_lists(args.files, train)
        write_catalogue(cat, args.out)
    except (UserError, ValueError) as err:
        return report("sdpo-prepare catalogue", err)
    pop = (
        f"popularity from {train} ({int(cat.popularity.sum())} targets)"
        if cat.popularity is not None
        else "no popularity (name the training file with --train)"
    )
    print(f"wrote {args.out}: {len(cat)} items from {len(args.files)} file(s); {pop}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(catalogue_main())
