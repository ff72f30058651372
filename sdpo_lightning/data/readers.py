"""Readers for the public S-DPO / LLaRA candidate-list format (JSON and JSON Lines).

A record is an object with ``historyList`` (a ``"::"``-joined string or a list of titles),
``itemList`` (the candidate titles) and ``trueSelection`` (the target title); optional
``user_id`` and ``item_ids`` are carried along. A ``.jsonl`` file holds one such object per
line; any other file holds a JSON list of them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

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
    except FileNotFoundError:
        raise DataFormatError(str(path), None, "file not found") from None
    except UnicodeDecodeError as err:
        raise DataFormatError(str(path), None, f"not UTF-8 text ({err.reason})") from None
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
        raise DataFormatError(str(path), None, f"expected a JSON list of records, got {type(data).__name__}")
    for i, obj in enumerate(data):
        yield f"record {i}", obj


def parse_record(obj: Any, min_candidates: int = 2) -> Example:
    """Turn one raw candidate-list object into an :class:`Example` (``ValueError`` if bad)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    history = obj["historyList"]
    if isinstance(history, str):
        history = [h for h in history.split("::")] if history.strip() else []
    return validate_example(
        history=history,
        candidates=obj["itemList"],
        target=obj["trueSelection"],
        min_candidates=min_candidates,
        user_id=obj.get("user_id", obj.get("uid")),
        item_ids=obj.get("item_ids"),
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
            path, len(result.skipped), *result.skipped[0],
        )
    if not result.examples:
        raise DataFormatError(str(path), None, "no valid records")
    return result
