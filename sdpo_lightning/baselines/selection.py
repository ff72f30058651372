"""Hyperparameter selection on a split carved from the training file, by user.

The test files are split by user, so the selection split is too: the training rows are
grouped into user chains (:func:`~.base.user_chains`), a seeded ``fraction`` of the
chains is held out, the scorer is fitted on the rest and each grid point is scored on
the held-out rows. The winner has the best selection HR@1 (ties against the target),
then the best MRR, then comes first in grid order. The test file is never looked at.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sdpo_lightning.baselines.base import Scorer, user_chains
from sdpo_lightning.data.records import Example

__all__ = ["carve_selection_split", "select_params"]


def carve_selection_split(
    train_examples: Sequence[Example], fraction: float = 0.2, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Split training rows into (fit, selection) by whole user chains.

    Raises:
        ValueError: ``fraction`` outside (0, 1) or fewer than two chains.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"selection fraction must be in (0, 1), got {fraction}")
    chains = user_chains(train_examples)
    if len(chains) < 2:
        raise ValueError("need at least two users (row chains) to carve a selection split")
    order = np.random.default_rng(seed).permutation(len(chains))
    n_sel = min(len(chains) - 1, max(1, round(fraction * len(chains))))
    held = {int(i) for i in order[:n_sel]}
    fit, sel = [], []
    for ci, chain in enumerate(chains):
        (sel if ci in held else fit).extend(train_examples[i] for i in chain)
    return fit, sel


def target_rank(scores: Sequence[float], target_index: int) -> int:
    """1-based rank of the target, ties counted against it."""
    t = scores[target_index]
    return 1 + sum(1 for i, s in enumerate(scores) if i != target_index and s >= t)


def select_params(
    factory: Callable[..., Scorer],
    grid: Mapping[str, Sequence[Any]],
    train_examples: Sequence[Example],
    fraction: float = 0.2,
    seed: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grid search on a by-user selection split of the training rows.

    Args:
        factory: builds a scorer from keyword hyperparameters (and ``seed``).
        grid: hyperparameter name → values tried.
        train_examples: the training rows (the split is carved from them).
        fraction: share of users held out for selection.
        seed: split and scorer seed.

    Returns:
        The best parameters and one row per grid point (params, ``hr@1``, ``mrr``).
    """
    fit, sel = carve_selection_split(train_examples, fraction, seed)
    names = list(grid)
    results = []
    for values in itertools.product(*(grid[n] for n in names)):
        params = dict(zip(names, values, strict=False))
        scorer = factory(seed=seed, **params).fit(fit)
        ranks = np.array([target_rank(scorer.score(ex), ex.target_index) for ex in sel])
        results.append(
            {
                **params,
                "hr@1": float(np.mean(ranks == 1)),
                "mrr": float(np.mean(1.0 / ranks)),
                "n_fit": len(fit),
                "n_sel": len(sel),
            }
        )
    best = max(range(len(results)), key=lambda i: (results[i]["hr@1"], results[i]["mrr"], -i))
    return {n: results[best][n] for n in names}, results
