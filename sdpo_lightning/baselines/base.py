"""Shared pieces of the non-neural baselines: the scorer interface and seeded helpers.

A baseline is a :class:`Scorer`: ``fit(train_examples)`` learns from the training rows
(their histories and targets; candidate lists of training rows are random negatives
and are never counted), ``score(example)`` returns one float per candidate, in the
candidate order, higher is better. A scorer never looks at ``example.target``.

Randomness (the random scorer, tie-breaks) comes from :func:`example_rng`, a
``numpy`` generator seeded by ``(seed, salt, hash of the example's history and
candidates)``: the same example gets the same draws whatever order examples come in.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from sdpo_lightning.data.records import Example

__all__ = ["Scorer", "example_key", "example_rng", "history_rng", "user_chains"]


class Scorer(ABC):
    """A candidate scorer fitted on training examples.

    Attributes:
        name: registry name (``random``, ``most_popular``, ...).
        method: display name used as the ``method`` of the run summary.
    """

    name: str = ""
    method: str = ""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.fitted = False

    @abstractmethod
    def fit(self, train_examples: Sequence[Example]) -> Scorer:
        """Learn from the training rows; returns ``self``."""

    @abstractmethod
    def _score(self, example: Example) -> list[float]:
        """One score per candidate (``fit`` has been called)."""

    def score(self, example: Example) -> list[float]:
        """Score every candidate of ``example`` (one float each, candidate order)."""
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__}.score called before fit")
        scores = [float(s) for s in self._score(example)]
        if len(scores) != len(example.candidates):
            raise RuntimeError(
                f"{type(self).__name__} returned {len(scores)} scores for "
                f"{len(example.candidates)} candidates"
            )
        return scores

    def score_titles(self, history: Sequence[str], titles: Sequence[str]) -> np.ndarray:
        """Scores of arbitrary ``titles`` (e.g. the whole catalogue) for a user with ``history``:
        the all-item protocol's scores (:mod:`.all_item`), ``(len(titles),)`` float64."""
        raise NotImplementedError(f"{type(self).__name__} does not score a catalogue")

    def config(self) -> dict[str, object]:
        """Hyperparameters and fit statistics, copied into the run summary."""
        return {"seed": self.seed}


def example_key(example: Example) -> bytes:
    """A stable digest of an example's history and candidates (not its target)."""
    text = "\x1f".join(example.history) + "\x1e" + "\x1f".join(example.candidates)
    return hashlib.sha256(text.encode("utf-8")).digest()


def example_rng(seed: int, example: Example, salt: str) -> np.random.Generator:
    """A generator that depends only on ``seed``, ``salt`` and the example's content."""
    salt_int = int.from_bytes(hashlib.sha256(salt.encode("utf-8")).digest()[:8], "little")
    words = np.frombuffer(example_key(example)[:16], dtype=np.uint32).tolist()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, salt_int & 0xFFFFFFFF, *words])


def history_rng(seed: int, history: Sequence[str], salt: str) -> np.random.Generator:
    """A generator that depends only on ``seed``, ``salt`` and ``history`` (all-item protocol)."""
    salt_int = int.from_bytes(hashlib.sha256(salt.encode("utf-8")).digest()[:8], "little")
    digest = hashlib.sha256("\x1f".join(history).encode("utf-8")).digest()
    words = np.frombuffer(digest[:16], dtype=np.uint32).tolist()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, salt_int & 0xFFFFFFFF, *words])


def user_chains(examples: Sequence[Example], max_history: int | None = None) -> list[list[int]]:
    """Group consecutive rows of one user's sliding window into chains.

    A candidate-list file lists each user's rows one after another, each row's history
    being the previous row's history plus its target (cut to the ``max_history`` most
    recent, inferred as the longest history when ``None``). Rows with a ``user_id`` are
    grouped by it instead. Used to carve a selection split by user from a training file,
    as the test file is split by user.

    Returns:
        Lists of row indices, in file order.
    """
    if max_history is None:
        max_history = max(len(ex.history) for ex in examples)
    chains: list[list[int]] = []
    for i, ex in enumerate(examples):
        if chains:
            prev = examples[chains[-1][-1]]
            if ex.user_id is not None or prev.user_id is not None:
                same = ex.user_id == prev.user_id
            else:
                same = ex.history == (prev.history + (prev.target,))[-max_history:]
            if same:
                chains[-1].append(i)
                continue
        chains.append([i])
    return chains
