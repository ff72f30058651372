"""The ``Example`` record and its validation.

An example is one recommendation problem: the user's history (oldest → newest item
titles), a candidate list (order as given, target included) and the target title.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sdpo_lightning.errors import UserError


class DataFormatError(UserError, ValueError):
    """A data file or record is malformed.

    The message always names the file, the record (index or line) and the reason.
    """

    def __init__(self, source: str, record: int | str | None, reason: str) -> None:
        self.source = source
        self.record = record
        self.reason = reason
        where = f"{source}" if record is None else f"{source}, {record}"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Example:
    """One recommendation example.

    Attributes:
        history: item titles the user interacted with, oldest first.
        candidates: candidate titles in the order given (target included).
        target: the title of the next item; ``None`` in a ``predict`` file's record without
            an answer.
        user_id: optional user identifier.
        item_ids: optional extra ids carried through untouched.
    """

    history: tuple[str, ...]
    candidates: tuple[str, ...]
    target: str | None
    user_id: str | None = None
    item_ids: Any = field(default=None, compare=False)

    @property
    def target_index(self) -> int:
        """Index of the target within ``candidates`` (-1 without a target)."""
        return -1 if self.target is None else self.candidates.index(self.target)


def _check_title(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise ValueError(f"{what} is an empty title")
    return value


@functools.lru_cache(maxsize=1 << 16)
def _parsed_form(title: str) -> str:
    from sdpo_lightning.evaluation.parsing import normalize_title

    return normalize_title(title)


def check_distinguishable(candidates: Sequence[str]) -> None:
    """Refuse two candidates that answer parsing cannot tell apart.

    Generated answers are matched to candidates after normalisation (case folded, quotes,
    dashes, blanks and surrounding punctuation unified: :func:`~sdpo_lightning.evaluation.
    parsing.normalize_title`), so of two candidates equal in that form a correct answer
    naming the second would be read as the first.

    Raises:
        ValueError: naming both titles and their positions.
    """
    seen: dict[str, int] = {}
    for i, c in enumerate(candidates):
        j = seen.setdefault(_parsed_form(c), i)
        if j != i:
            raise ValueError(
                f"candidates {candidates[j]!r} (position {j}) and {c!r} (position {i}) differ "
                "only in case, blanks or punctuation, which answer parsing ignores: a generated "
                "answer could not tell them apart; rename one or drop it from the list"
            )


def validate_example(
    history: Sequence[Any],
    candidates: Sequence[Any],
    target: Any,
    min_candidates: int = 2,
    user_id: Any = None,
    item_ids: Any = None,
    require_target: bool = True,
) -> Example:
    """Build an :class:`Example`, raising ``ValueError`` with the reason if it is malformed.

    Args:
        history: history titles (oldest first).
        candidates: candidate titles.
        target: the target title.
        min_candidates: the least number of candidates (K+1 for K negatives).
        user_id: optional user id (converted to ``str``).
        item_ids: optional ids carried along.
        require_target: ``False`` accepts ``target=None`` (a record to predict).

    Raises:
        ValueError: empty history, non-string or empty titles, duplicate candidates (also
            candidates equal up to case and punctuation, see :func:`check_distinguishable`),
            target not among candidates, or fewer than ``min_candidates`` candidates.
    """
    if not isinstance(history, (list, tuple)) or len(history) == 0:
        raise ValueError("empty history")
    if not isinstance(candidates, (list, tuple)):
        raise ValueError(f"candidates must be a list, got {type(candidates).__name__}")
    hist = tuple(_check_title(h, f"history item {i}") for i, h in enumerate(history))
    cands = tuple(_check_title(c, f"candidate {i}") for i, c in enumerate(candidates))
    tgt = None if target is None and not require_target else _check_title(target, "target")
    seen: dict[str, int] = {}
    for i, c in enumerate(cands):
        if c in seen:
            raise ValueError(f"duplicate candidate {c!r} at positions {seen[c]} and {i}")
        seen[c] = i
    check_distinguishable(cands)
    if tgt is not None and tgt not in seen:
        raise ValueError(f"target {tgt!r} is not among the {len(cands)} candidates")
    if len(cands) < min_candidates:
        raise ValueError(
            f"{len(cands)} candidates, fewer than the {min_candidates} needed "
            f"(K+1 for K={min_candidates - 1} negatives)"
        )
    return Example(
        history=hist,
        candidates=cands,
        target=tgt,
        user_id=None if user_id is None else str(user_id),
        item_ids=item_ids,
    )
