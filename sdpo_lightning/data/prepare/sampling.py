"""Seeded, order-independent negative sampling for candidate lists.

Each example gets its own ``random.Random`` whose seed is derived (SHA-256) from the
global seed, the user id and the window position. Given the item set, candidates
therefore do not depend on the other users, the split ratios or the processing order, and
a re-run produces byte-identical files.

Only ``Random.random()`` is used to draw (index = ``int(random() * n)``): CPython
guarantees that the sequence of ``random()`` for a given seed never changes across
versions, while helpers such as ``sample``/``shuffle`` carry no such promise. Sampling
and shuffling are implemented on top of it here for that reason.
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["example_rng", "sample_negatives", "shuffle_in_place"]


def example_rng(seed: int, user: str, position: int) -> random.Random:
    """Return the generator for one example.

    Args:
        seed: The protocol seed.
        user: The raw user id.
        position: Index of the target in the user's ordered sequence.
    """
    digest = hashlib.sha256(f"{seed}\x1f{user}\x1f{position}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _below(rng: random.Random, n: int) -> int:
    """Uniform integer in ``[0, n)`` from ``rng.random()`` only."""
    value = int(rng.random() * n)
    return value if value < n else n - 1


def sample_negatives(rng: random.Random, n_items: int, excluded: set[int], k: int) -> list[int]:
    """Draw ``k`` distinct item indices uniformly from ``range(n_items)`` minus ``excluded``.

    Rejection sampling when the allowed pool is at least half of all items (the common
    case: users have seen few of all items); otherwise a partial Fisher-Yates shuffle of
    the explicit pool.

    Args:
        rng: The example's generator.
        n_items: Number of items; indices are ``0 .. n_items - 1``.
        excluded: Indices the user has interacted with (a subset of the indices).
        k: Number of negatives.

    Returns:
        ``k`` item indices in draw order.

    Raises:
        ValueError: If fewer than ``k`` items are allowed.
    """
    allowed = n_items - len(excluded)
    if allowed < k:
        raise ValueError(f"only {allowed} items available, {k} negatives needed")
    draw = rng.random
    if 2 * allowed >= n_items:
        chosen: list[int] = []
        while len(chosen) < k:
            item = int(draw() * n_items)
            if item >= n_items:
                item = n_items - 1
            if item not in excluded and item not in chosen:
                chosen.append(item)
        return chosen
    pool = [item for item in range(n_items) if item not in excluded]
    for i in range(k):
        j = i + _below(rng, len(pool) - i)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]


def shuffle_in_place(rng: random.Random, values: list) -> None:
    """Fisher-Yates shuffle driven by ``rng.random()`` only."""
    draw = rng.random
    for i in range(len(values) - 1, 0, -1):
        j = int(draw() * (i + 1))
        if j > i:
            j = i
        values[i], values[j] = values[j], values[i]
