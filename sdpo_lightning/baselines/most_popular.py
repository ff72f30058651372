"""The most-popular baseline: rank candidates by how often they were a training target.

**What is counted.** ``count(item)`` = the number of training rows whose *target* is
``item``. In the candidate-list files each user's rows are a sliding window (every row's
history is the previous row's history plus its target), so an interaction appears once
as a target but up to ``max_history`` times inside later histories; counting targets
counts each interaction once. With ``count_history=True`` the history items of each
user's *first* row (the interactions that are never a target) are counted too, once
each — still one count per interaction. Candidates never seen score 0.

Ties (e.g. several unseen candidates) keep equal scores; the runner counts them
against the target in the ranking protocol and breaks them by a seeded random draw
when choosing the generated answer — never by candidate position.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from sdpo_lightning.baselines.base import Scorer, user_chains
from sdpo_lightning.data.records import Example

__all__ = ["MostPopularScorer", "item_counts"]


def item_counts(train_examples: Sequence[Example], count_history: bool = False) -> Counter[str]:
    """Interaction counts per item title (see the module docstring for what counts)."""
    counts: Counter[str] = Counter(ex.target for ex in train_examples)
    if count_history:
        for chain in user_chains(train_examples):
            counts.update(train_examples[chain[0]].history)
    return counts


class MostPopularScorer(Scorer):
    """Score = training interaction count of the candidate.

    Args:
        seed: run seed (used by the runner's tie-break only).
        count_history: also count the first row's history of each user chain.
    """

    name = "most_popular"
    method = "Most popular"

    def __init__(self, seed: int = 0, count_history: bool = False) -> None:
        super().__init__(seed)
        self.count_history = bool(count_history)
        self.counts: Counter[str] = Counter()

    def fit(self, train_examples: Sequence[Example]) -> MostPopularScorer:
        """Count item interactions in the training rows."""
        self.counts = item_counts(train_examples, self.count_history)
        self.fitted = True
        return self

    def _score(self, example: Example) -> list[float]:
        return [float(self.counts.get(c, 0)) for c in example.candidates]

    def score_titles(self, history: Sequence[str], titles: Sequence[str]) -> np.ndarray:
        """Training count of each title (the same for every history)."""
        return np.array([float(self.counts.get(t, 0)) for t in titles], dtype=np.float64)

    def config(self) -> dict[str, object]:
        """Counting rule and catalogue size."""
        return {
            "seed": self.seed,
            "count": "target+first_history" if self.count_history else "target",
            "n_items_counted": len(self.counts),
        }
