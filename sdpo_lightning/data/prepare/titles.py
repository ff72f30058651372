"""Title cleaning and disambiguation.

Every candidate list must name each item by a title that no other item shares: the
model answers with a title, and the evaluation maps the answer back to exactly one
candidate. Two steps get there:

* :func:`clean_title` — Unicode NFC normalization, control / format characters and every
  run of whitespace (tabs, newlines, non-breaking spaces, …) become one space, ends
  stripped. Decoding (e.g. MovieLens' latin-1) happens in the readers, before this.
* :func:`disambiguate_titles` — items whose cleaned titles collide (compared exactly, or
  equal up to letter case: ``"Air"`` and ``"AIR"``) keep the title in natural id order for the
  first item and get ``" [2]"``, ``" [3]"``, … appended for the others (further numbers are
  tried should such a suffixed title already exist, in any letter case). Titles equal up to case
  would be one item spelt twice in the catalogue (:mod:`sdpo_lightning.data.catalogue`
  refuses them).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from sdpo_lightning.data.prepare.rawio import natural_key

__all__ = ["clean_title", "disambiguate_titles"]

_SPACE_RE = re.compile(r"\s+")


def clean_title(raw: str) -> str:
    """Normalize one title.

    Args:
        raw: The decoded title from the metadata file.

    Returns:
        The cleaned title; ``""`` when nothing printable is left.
    """
    text = unicodedata.normalize("NFC", raw)
    if not text.isprintable():
        text = "".join(
            " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text
        )
    return _SPACE_RE.sub(" ", text).strip()


def disambiguate_titles(titles: Mapping[str, str]) -> tuple[dict[str, str], int]:
    """Make titles unique across items.

    Args:
        titles: ``{item id: cleaned title}``.

    Returns:
        ``({item id: unique title}, number of items that received a suffix)``.
    """
    groups: dict[str, list[str]] = {}
    for item in sorted(titles, key=natural_key):
        groups.setdefault(titles[item].casefold(), []).append(item)
    taken = set(groups)  # casefolded titles in use
    unique: dict[str, str] = {}
    renamed = 0
    for items in groups.values():
        unique[items[0]] = titles[items[0]]
        number = 1
        for item in items[1:]:
            number += 1
            while f"{titles[item]} [{number}]".casefold() in taken:
                number += 1
            candidate = f"{titles[item]} [{number}]"
            taken.add(candidate.casefold())
            unique[item] = candidate
            renamed += 1
    return unique, renamed
