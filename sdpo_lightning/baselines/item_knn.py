"""Item co-occurrence (item-kNN) baseline: popularity plus "who listened to X went on to Y".

**Fit.** From every training row (history ``h_1..h_n`` oldest → newest, target ``t``):

* ``pop[t] += 1`` — the target count of :mod:`.most_popular` (each interaction once);
* ``C[h][t] += 1`` for each of the ``window`` most recent history items ``h`` — a
  directed "history item → next item" co-occurrence count. Training candidate lists are
  random negatives and are not used. With ``symmetric=True`` also ``C[t][h] += 1``.

Histories of a sliding-window file repeat, but each row contributes its *target* once, so
``C`` counts each (earlier item, later item) pair once per interaction.

**Score** of candidate ``c`` for a test history ``g_1..g_m``::

    score(c) = sum_{k=0}^{m-1} decay**k * C[g_{m-k}][c]  +  pop_weight * log1p(pop[c])

i.e. recency-weighted co-occurrence with the history (``k = 0`` is the most recent item)
plus a small popularity term that orders candidates no history item co-occurs with.
``window``, ``symmetric``, ``decay`` and ``pop_weight`` are chosen on a selection split
carved from the training file by user (see :mod:`.selection`), never on the test file.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from sdpo_lightning.baselines.base import Scorer
from sdpo_lightning.data.records import Example

__all__ = ["ItemKNNScorer", "DEFAULT_GRID"]

DEFAULT_GRID: dict[str, list] = {
    "window": [1, 3, 10],
    "symmetric": [False, True],
    "decay": [1.0, 0.7, 0.4],
    "pop_weight": [0.01, 0.1, 0.5, 2.0],
}


class ItemKNNScorer(Scorer):
    """Recency-weighted co-occurrence with the history plus a popularity term.

    Args:
        seed: run seed (tie-break only).
        window: how many of a training row's most recent history items pair with its target.
        symmetric: also count target → history-item pairs.
        decay: weight ratio between successive history items at scoring (1.0 = equal).
        pop_weight: weight of ``log1p(pop)``.
    """

    name = "item_knn"
    method = "Item-kNN (co-occurrence)"

    def __init__(
        self,
        seed: int = 0,
        window: int = 3,
        symmetric: bool = False,
        decay: float = 0.7,
        pop_weight: float = 0.1,
    ) -> None:
        super().__init__(seed)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if pop_weight < 0:
            raise ValueError(f"pop_weight must be >= 0, got {pop_weight}")
        self.window, self.symmetric = int(window), bool(symmetric)
        self.decay, self.pop_weight = float(decay), float(pop_weight)
        self.pop: Counter[str] = Counter()
        self.cooc: dict[str, Counter[str]] = defaultdict(Counter)

    def fit(self, train_examples: Sequence[Example]) -> ItemKNNScorer:
        """Count target popularity and history → target co-occurrences."""
        self.pop = Counter()
        self.cooc = defaultdict(Counter)
        for ex in train_examples:
            self.pop[ex.target] += 1
            for h in ex.history[-self.window :]:
                if h == ex.target:
                    continue
                self.cooc[h][ex.target] += 1
                if self.symmetric:
                    self.cooc[ex.target][h] += 1
        self.fitted = True
        return self

    def _score(self, example: Example) -> list[float]:
        return self.score_titles(example.history, example.candidates).tolist()

    def score_titles(self, history: Sequence[str], titles: Sequence[str]) -> np.ndarray:
        """The module docstring's score of each title for ``history``."""
        weights: dict[str, float] = {}
        for k, h in enumerate(reversed(history)):  # k = 0: most recent
            weights[h] = weights.get(h, 0.0) + self.decay**k
        rows = [(self.cooc[h], w) for h, w in weights.items() if h in self.cooc]
        position: dict[str, list[int]] = {}
        for i, c in enumerate(titles):
            position.setdefault(c, []).append(i)
        co = np.zeros(len(titles), dtype=np.float64)
        for row, w in rows:  # same order of additions as a sum over rows per title
            for c, count in row.items():
                for i in position.get(c, ()):
                    co[i] += w * count
        pop = np.array(
            [self.pop_weight * math.log1p(self.pop.get(c, 0)) for c in titles], dtype=np.float64
        )
        return co + pop

    def config(self) -> dict[str, object]:
        """Weights and fit statistics."""
        return {
            "seed": self.seed,
            "window": self.window,
            "symmetric": self.symmetric,
            "decay": self.decay,
            "pop_weight": self.pop_weight,
            "n_items_counted": len(self.pop),
            "n_pairs": sum(len(r) for r in self.cooc.values()),
        }
