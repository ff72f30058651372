"""The random baseline: seeded uniform scores, the chance level of both protocols.

Each candidate gets a draw from ``U[0, 1)`` of :func:`~.base.example_rng` (seeded by
the run seed and the example's content), so runs are reproducible and independent of
example order. Expected HR@1 is ``1 / #candidates`` (0.05 with 20).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sdpo_lightning.baselines.base import Scorer, example_rng, history_rng
from sdpo_lightning.data.records import Example

__all__ = ["RandomScorer"]


class RandomScorer(Scorer):
    """Uniform random candidate scores (fitting only records the training size)."""

    name = "random"
    method = "Random"

    def fit(self, train_examples: Sequence[Example]) -> RandomScorer:
        """Nothing to learn; kept for the common interface."""
        self.n_train = len(train_examples)
        self.fitted = True
        return self

    def _score(self, example: Example) -> list[float]:
        rng = example_rng(self.seed, example, "random-scores")
        return rng.random(len(example.candidates)).tolist()

    def score_titles(self, history: Sequence[str], titles: Sequence[str]) -> np.ndarray:
        """``U[0, 1)`` per title, seeded by the run seed and the history."""
        return history_rng(self.seed, history, "random-all-item").random(len(titles))
