"""Name → scorer class of the non-neural baselines, and their selection grids."""

from __future__ import annotations

from typing import Any

from sdpo_lightning.baselines.base import Scorer
from sdpo_lightning.baselines.item_knn import DEFAULT_GRID as ITEM_KNN_GRID
from sdpo_lightning.baselines.item_knn import ItemKNNScorer
from sdpo_lightning.baselines.most_popular import MostPopularScorer
from sdpo_lightning.baselines.random_scores import RandomScorer

__all__ = ["SCORERS", "make_scorer", "selection_grid"]

SCORERS: dict[str, type[Scorer]] = {
    "random": RandomScorer,
    "most_popular": MostPopularScorer,
    "item_knn": ItemKNNScorer,
}
_GRIDS: dict[str, dict[str, list]] = {"item_knn": ITEM_KNN_GRID}


def make_scorer(name: str, **params: Any) -> Scorer:
    """Build the scorer registered as ``name`` (``ValueError`` naming the choices)."""
    if name not in SCORERS:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(SCORERS)}")
    return SCORERS[name](**params)


def selection_grid(name: str) -> dict[str, list]:
    """Hyperparameter grid searched on the selection split (empty: nothing to select)."""
    if name not in SCORERS:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(SCORERS)}")
    return dict(_GRIDS.get(name, {}))
