"""Baselines in the all-item protocol: every test row ranks the whole catalogue (``docs/all_item.md``).

A baseline gives one score per catalogue item and row (the non-neural scorers'
:meth:`~.base.Scorer.score_titles`, the sequential recommenders' logits); the row's top ``N``
is the argsort of those scores, highest first, with the protocol's **history rule**: every
item of the row's history is excluded (as for the LM's constrained beam search). Equal scores
are ordered by a seeded random key per row and item (never by catalogue position, which is
alphabetical for LastFM): the random baseline has no ties, most popular has many at count 0.

The records carry the LM protocol's ``all_item`` part (``items``, ``scores``, ``target_rank``
or null, ``popularity`` / ``target_popularity`` when the catalogue has them; no free generation,
so no ``valid``) and the summary its ``catalogue`` entry, so :func:`~sdpo_lightning.evaluation.report.build_summary`
computes the same metrics with bootstrap intervals and ``sdpo-report --protocol all_item`` puts
the baselines beside the LM runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sdpo_lightning.baselines.base import Scorer, history_rng
from sdpo_lightning.data.catalogue import Catalogue
from sdpo_lightning.data.records import DataFormatError, Example

__all__ = ["all_item_meta", "all_item_records", "check_targets", "top_n_items"]


def check_targets(examples: Sequence[Example], catalogue: Catalogue, source: str) -> None:
    """Every target must be a catalogue item (``DataFormatError`` naming the file and record)."""
    for index, ex in enumerate(examples):
        if ex.target is not None and ex.target not in catalogue.index:
            raise DataFormatError(
                source,
                f"record {index}",
                f"target {ex.target!r} is not in the "
                f"catalogue {catalogue.source} ({len(catalogue)} items)",
            )


def top_n_items(
    scores: np.ndarray, exclude: Sequence[int], top_n: int, tie_key: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the ``top_n`` highest ``scores`` (best first) outside ``exclude``.

    Args:
        scores: ``(n_items,)`` scores of one row.
        exclude: item indices never returned (the row's history).
        top_n: items returned (fewer when fewer are left).
        tie_key: ``(n_items,)`` order among equal scores (ascending); default item index.
    """
    s = np.asarray(scores, dtype=np.float64).copy()
    s[np.isnan(s)] = -np.inf
    keep = np.ones(len(s), dtype=bool)
    keep[list(exclude)] = False
    key = np.arange(len(s)) if tie_key is None else np.asarray(tie_key)
    order = np.lexsort((key, -s))  # by score descending, then tie key ascending
    order = order[keep[order]]
    return order[:top_n]


def all_item_records(
    examples: Sequence[Example],
    scores: Sequence[np.ndarray] | np.ndarray,
    catalogue: Catalogue,
    top_n: int,
    seed: int,
) -> tuple[list[dict[str, Any]], int]:
    """Prediction records of the all-item protocol from one catalogue score vector per row.

    Returns:
        The records (``index``, ``target``, ``all_item``) and the number of rows whose target
        is in their own history (they cannot be hit).
    """
    if len(scores) != len(examples):
        raise ValueError(f"{len(scores)} score vectors for {len(examples)} examples")
    pop = catalogue.popularity
    records, n_target_in_history = [], 0
    for index, (ex, row) in enumerate(zip(examples, scores, strict=True)):
        row = np.asarray(row, dtype=np.float64)
        if row.shape != (len(catalogue),):
            raise ValueError(f"example {index}: {row.shape} scores for {len(catalogue)} items")
        exclude = sorted({catalogue.index[t] for t in ex.history if t in catalogue.index})
        tie_key = history_rng(seed, ex.history, "all-item-tie-break").random(len(catalogue))
        items = top_n_items(row, exclude, top_n, tie_key).tolist()
        part: dict[str, Any] = {
            "items": [catalogue.titles[i] for i in items],
            "scores": [round(float(row[i]), 6) for i in items],
        }
        if ex.target is not None:
            t = catalogue.index[ex.target]
            part["target_rank"] = items.index(t) + 1 if t in items else None
            n_target_in_history += ex.target in ex.history
        if pop is not None:
            part["popularity"] = [int(pop[i]) for i in items]
            if ex.target is not None:
                part["target_popularity"] = int(pop[catalogue.index[ex.target]])
        records.append({"index": index, "target": ex.target, "all_item": part})
    return records, n_target_in_history


def all_item_meta(catalogue: Catalogue, top_n: int, n_target_in_history: int) -> dict[str, Any]:
    """The summary's ``catalogue`` entry (as :meth:`AllItemProtocol.meta
    <sdpo_lightning.evaluation.all_item.AllItemProtocol.meta>`; no beam: every item is scored)."""
    pop = catalogue.popularity
    return {
        "file": catalogue.source,
        "n_items": len(catalogue),
        "total_popularity": None if pop is None else int(pop.sum()),
        "top_n": top_n,
        "beam_width": None,
        "length_penalty": None,
        "scored": "every item",
        "history_rule": "excluded",
        "n_target_in_history": n_target_in_history,
    }


def scorer_all_item_records(
    scorer: Scorer, examples: Sequence[Example], catalogue: Catalogue, top_n: int
) -> tuple[list[dict[str, Any]], int]:
    """:func:`all_item_records` of a fitted non-neural scorer."""
    scores = [scorer.score_titles(ex.history, catalogue.titles) for ex in examples]
    return all_item_records(examples, scores, catalogue, top_n, scorer.seed)
