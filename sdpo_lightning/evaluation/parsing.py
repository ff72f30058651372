"""Parse a generated answer into the candidate it names (generation protocol;
README.md, "Metrics").

Definitions (exact):

**Normalization** — ``normalize_title(s)``:

1. Unicode NFKC, then ``str.casefold()``, then NFKC again (so "Beyoncé" typed as
   NFC or NFD, "ＭＵＳＥ" and "muse" compare equal).
2. Typographic quotes and dashes are mapped to ASCII (``‘’‚‛′`` → ``'``,
   ``“”„‟″`` → ``"``, ``‐‑‒–—―−`` → ``-``), and Turkish dotless ``ı`` → ``i``
   (``"BARIŞ".casefold()`` would otherwise differ from ``"Barış".casefold()``).
3. Every run of whitespace becomes one space.
4. Leading/trailing whitespace and *surrounding* quote/sentence punctuation
   (Unicode categories ``Pi``, ``Pf``, ``Po``: ``. , ; : ! ? ' " * …``) are stripped.
   Brackets and dashes are kept, so ``"Muse (band)"`` keeps its ``)``.
   If stripping would leave nothing (a band called ``"!!!"``), the unstripped
   form of step 3 is returned instead.

**Answer scope** — the part of the generated text that is parsed:

* the text is first cut at the earliest occurrence of any ``stop`` string
  (e.g. a literal EOS token such as ``"</s>"`` when special tokens were not skipped);
* with ``first_line=True`` (default) the answer is the first line that is not blank;
  everything after it is continuation junk and is ignored. With ``first_line=False``
  the whole (cut) text is the answer.

**Matching** — with ``A = normalize_title(answer)`` and each candidate normalized:

1. *Exact*: if ``A`` equals a normalized candidate, that candidate is the answer
   (``matches == (candidate,)``), regardless of what step 2 would find.
2. *Search*: otherwise every occurrence of every normalized candidate is collected
   in the answer normalized by steps 1-3 only (surrounding punctuation kept, so
   titles made of punctuation such as ``"#####"`` are found), subject to word
   boundaries: an occurrence may not start right after, or end right before, a word
   character when its own edge character is a word character (word character =
   alphanumeric or ``_``, except wide East-Asian characters, which are written
   without spaces). Occurrences are then chosen greedily longest first (ties: earlier
   start, then candidate order), dropping any occurrence that overlaps an already
   chosen one. Hence "Muse" inside a chosen "Muse (band)" span is not a hit; a
   separate "Muse" elsewhere still is.
3. ``matches`` = the distinct candidates of the chosen occurrences, in order of first
   appearance. Candidates whose normalized forms coincide are indistinguishable; the
   first in candidate order stands for all of them.

**Validity** — ``valid`` iff exactly one distinct candidate is matched; then ``item``
is that candidate (the original string from ``candidates``), else ``item is None``.
So an empty answer, an answer naming two candidates, and an answer that repeats the
prompt (listing many candidates) are all invalid.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ParsedAnswer", "normalize_title", "answer_scope", "parse_answer"]

_TRANSLATE = str.maketrans(
    {
        **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032", "'"),
        **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033", '"'),
        **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
        "\u0131": "i",  # dotless i: "BARIŞ" and "Barış" must fold alike
    }
)
_STRIP_CATEGORIES = frozenset({"Pi", "Pf", "Po"})


@dataclass(frozen=True)
class ParsedAnswer:
    """Result of parsing one generated answer.

    Attributes:
        item: The candidate named (original spelling), or ``None`` when invalid.
        valid: True iff exactly one distinct candidate is named.
        matches: All distinct candidates found, in order of first appearance.
    """

    item: str | None
    valid: bool
    matches: tuple[str, ...]


def _strippable(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in _STRIP_CATEGORIES


def _fold(s: str) -> str:
    """Steps 1-3 of the normalization: Unicode, case, quotes/dashes, whitespace."""
    s = unicodedata.normalize("NFKC", s)
    s = unicodedata.normalize("NFKC", s.casefold()).translate(_TRANSLATE)
    return " ".join(s.split())


def normalize_title(s: str) -> str:
    """Normalize a title or answer for comparison (see module docstring)."""
    s = _fold(s)
    start, end = 0, len(s)
    while start < end and _strippable(s[start]):
        start += 1
    while end > start and _strippable(s[end - 1]):
        end -= 1
    return s[start:end] if end > start else s


def answer_scope(text: str, stop: Sequence[str] = (), first_line: bool = True) -> str:
    """Return the part of ``text`` that is parsed as the answer (module docstring)."""
    cut = len(text)
    for marker in stop:
        pos = text.find(marker) if marker else -1
        if pos != -1:
            cut = min(cut, pos)
    text = text[:cut]
    if not first_line:
        return text
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


def _is_word(ch: str) -> bool:
    if not (ch.isalnum() or ch == "_"):
        return False
    return unicodedata.east_asian_width(ch) not in ("W", "F")


def _boundary_ok(hay: str, start: int, end: int) -> bool:
    if start > 0 and _is_word(hay[start - 1]) and _is_word(hay[start]):
        return False
    if end < len(hay) and _is_word(hay[end - 1]) and _is_word(hay[end]):
        return False
    return True


def _find_occurrences(hay: str, needles: dict[str, int]) -> list[tuple[int, int, int]]:
    """All word-bounded (start, end, candidate_order) occurrences of the needles."""
    found = []
    for needle, order in needles.items():
        pos = hay.find(needle)
        while pos != -1:
            if _boundary_ok(hay, pos, pos + len(needle)):
                found.append((pos, pos + len(needle), order))
            pos = hay.find(needle, pos + 1)
    return found


def parse_answer(
    text: str,
    candidates: Sequence[str],
    *,
    stop: Sequence[str] = (),
    first_line: bool = True,
) -> ParsedAnswer:
    """Find which candidate a generated answer names.

    Args:
        text: Generated text (the completion only, without the prompt).
        candidates: The example's candidate titles.
        stop: Strings at whose first occurrence the text is cut (e.g. ``["</s>"]``).
        first_line: Parse only the first non-blank line (default) or the whole text.

    Returns:
        The parsed answer; ``valid`` iff exactly one distinct candidate is named.
    """
    # normalized title -> index of the first candidate with that normalized form
    needles: dict[str, int] = {}
    for i, cand in enumerate(candidates):
        norm = normalize_title(cand)
        if norm:
            needles.setdefault(norm, i)
    folded = _fold(answer_scope(text, stop, first_line))
    answer = normalize_title(folded)
    if not answer:
        return ParsedAnswer(item=None, valid=False, matches=())
    if answer in needles:
        item = candidates[needles[answer]]
        return ParsedAnswer(item=item, valid=True, matches=(item,))

    # search the unstripped form so punctuation-only titles ("!!!") are still found
    answer = folded
    occurrences = _find_occurrences(answer, needles)
    occurrences.sort(key=lambda o: (-(o[1] - o[0]), o[0], o[2]))
    covered = [False] * len(answer)
    chosen: list[tuple[int, int]] = []  # (start, candidate_order)
    for start, end, order in occurrences:
        if any(covered[start:end]):
            continue
        covered[start:end] = [True] * (end - start)
        chosen.append((start, order))
    chosen.sort()
    matches = tuple(dict.fromkeys(candidates[order] for _, order in chosen))
    if len(matches) == 1:
        return ParsedAnswer(item=matches[0], valid=True, matches=matches)
    return ParsedAnswer(item=None, valid=False, matches=matches)
