"""Readers for the public S-DPO / LLaRA candidate-list format (JSON and JSON Lines).

A record is an object with ``historyList`` (a ``"::"``-joined string or a list of titles),
``itemList`` (the candidate titles) and ``trueSelection`` (the target title); optional
``user_id`` and ``item_ids`` are carried along. A ``.jsonl`` file holds one such object per
line; any other file holds a JSON list of them. A record to ``predict`` may leave out
``trueSelection`` (or set it to ``null``).

A ``"::"``-joined ``historyList`` cannot hold a title that contains ``"::"`` or begins or ends
with ``":"``: give such histories as JSON lists. A string history is refused (naming the file
and record) when a candidate or the target contains ``"::"``, or when a piece of it begins or
ends with ``":"`` (``"A:::B"`` is ``"A:" + "B"`` or ``"A" + ":B"``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdpo_lightning.data.records import DataFormatError, Example, validate_example

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("historyList", "itemList", "trueSelection")


@dataclass
class LoadResult:
    """Examples read from a file, with what lenient loading skipped.

    Attributes:
        examples: the valid examples, in file order.
        skipped: ``(record label, reason)`` for every record skipped in lenient mode.
    """

    examples: list[Example]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _iter_raw(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(record label, raw object)`` pairs; malformed JSON raises DataFormatError."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(str(path), None, f"not UTF-8 text ({err.reason})") from None
    except OSError as err:
        raise unreadable(path, err) from None
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(
                    str(path), f"line {lineno}", f"malformed JSON ({err.msg} at column {err.colno})"
                ) from None
            yield f"line {lineno}", obj
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(
            str(path), None, f"malformed JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
    if not isinstance(data, list):
        raise DataFormatError(
            str(path), None, f"expected a JSON list of records, got {type(data).__name__}"
        )
    for i, obj in enumerate(data):
        yield f"record {i}", obj


def split_history(history: str, titles: Any) -> list[str]:
    """The titles of a ``"::"``-joined history string (module docstring).

    Args:
        history: the string.
        titles: the record's other titles (candidates and target): none may contain ``"::"``.

    Raises:
        ValueError: the string cannot be split unambiguously.
    """
    if not history.strip():
        return []
    clash = next((t for t in titles if isinstance(t, str) and "::" in t), None)
    if clash is not None:
        raise ValueError(
            f"title {clash!r} contains '::', which also joins the titles of the "
            "historyList string; give historyList as a JSON list of titles"
        )
    pieces = history.split("::")
    odd = next((p for p in pieces if p.startswith(":") or p.endswith(":")), None)
    if odd is not None:
        raise ValueError(
            f"historyList string is ambiguous at {odd!r}: a title next to '::' "
            "begins or ends with ':'; give historyList as a JSON list of titles"
        )
    return pieces


def unreadable(path: Path, err: OSError) -> DataFormatError:
    """The error for a data file that cannot be opened (missing, a directory, no permission)."""
    if isinstance(err, FileNotFoundError):
        return DataFormatError(str(path), None, "file not found")
    if isinstance(err, IsADirectoryError) or path.is_dir():
        return DataFormatError(str(path), None, "is a directory, not a .json / .jsonl data file")
    return DataFormatError(str(path), None, f"cannot read it ({err.strerror or err})")


def parse_record(obj: Any, min_candidates: int = 2, require_target: bool = True) -> Example:
    """Turn one raw candidate-list object into an :class:`Example` (``ValueError`` if bad).

    With ``require_target=False`` (``predict`` files) ``trueSelection`` may be absent or null.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object, got {type(obj).__name__}")
    needed = REQUIRED_KEYS if require_target else REQUIRED_KEYS[:2]
    missing = [k for k in needed if k not in obj]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    history, target = obj["historyList"], obj.get("trueSelection")
    if isinstance(history, str):
        cands = obj["itemList"] if isinstance(obj["itemList"], list) else []
        history = split_history(history, [*cands, target])
    return validate_example(
        history=history,
        candidates=obj["itemList"],
        target=target,
        min_candidates=min_candidates,
        user_id=obj.get("user_id", obj.get("uid")),
        item_ids=obj.get("item_ids"),
        require_target=require_target,
    )


def load_examples(path: str | Path, min_candidates: int = 2, lenient: bool = False) -> LoadResult:
    """Read and validate every record of a candidate-list file.

    Args:
        path: a ``.json`` (list) or ``.jsonl`` (one object per line) file.
        min_candidates: the least number of candidates a record needs (K+1).
        lenient: skip bad records (counted and logged) instead of failing on the first.

    Returns:
        The examples and the skipped records.

    Raises:
        DataFormatError: naming the file, record and reason (malformed JSON always raises).
    """
    path = Path(path)
    result = LoadResult(examples=[])
    for label, obj in _iter_raw(path):
        try:
            result.examples.append(parse_record(obj, min_candidates=min_candidates))
        except ValueError as err:
            if not lenient:
                raise DataFormatError(str(path), label, str(err)) from None
            result.skipped.append((label, str(err)))
    if result.skipped:
        log.warning(
            "%s: skipped %d bad record(s) (lenient loading); first: %s: %s",
            path,
            len(result.skipped),
            *result.skipped[0],
        )
    if not result.examples:
        raise DataFormatError(str(path), None, "no valid records")
    return result
