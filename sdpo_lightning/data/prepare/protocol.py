"""The S-DPO / LLaRA protocol: raw interactions → candidate-list examples per split.

Steps (each configurable through :class:`ProtocolConfig`; see ``docs/prepare.md``):

1. Drop interactions whose item has no (non-empty, cleaned) title; optionally drop
   interactions rated below ``min_rating`` (datasets without ratings are unaffected).
2. Order each user's interactions by timestamp; ties keep file order (stable sort).
   A repeated (user, item) pair keeps its earliest interaction only.
3. Iteratively remove users with fewer than ``max(min_user_interactions, 2)`` and items
   with fewer than ``min_item_interactions`` interactions until both hold (k-core).
   A user needs two interactions for one example.
4. Clean titles and disambiguate equal titles (:mod:`.titles`).
5. Split users 8:1:1 (default) by shuffling the naturally sorted user ids with
   ``random.Random(seed)`` (Fisher-Yates on ``random()``, see :mod:`.sampling`).
   Boundaries are ``floor(n * cumulative_ratio + 0.5)``.
6. Every user yields all sliding windows: for the target at position ``t >= 1`` the
   history is the at most ``max_history`` items before it (oldest → newest). This holds
   for valid/test users too (LLaRA's choice), so every split is evaluated on windows.
   ``max_examples_per_user`` optionally keeps only each user's most recent windows.
7. Candidates: the target plus ``num_candidates - 1`` negatives drawn uniformly from
   items the user never interacted with (whole sequence), shuffled, seeded per example
   (:mod:`.sampling`).
8. The catalogue: every item left after step 3 with its title and training popularity (the
   all-item protocol's item list).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from sdpo_lightning.data.prepare.rawio import PrepareError, natural_key
from sdpo_lightning.data.prepare.sampling import example_rng, sample_negatives, shuffle_in_place
from sdpo_lightning.data.prepare.titles import clean_title, disambiguate_titles

__all__ = ["SPLITS", "ProtocolConfig", "RawDataset", "PreparedDataset", "build_examples"]

SPLITS = ("train", "valid", "test")


#: How far the split fractions' sum may be from 1.
SPLIT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ProtocolConfig:
    """Options of the preparation protocol.

    Attributes:
        max_history: Most recent items kept in a history window.
        num_candidates: Candidates per example (target included).
        split: Train/valid/test user fractions, each >= 0, summing to 1 (within 1e-6).
        seed: Seed of the user split and of every example's negatives.
        min_user_interactions: Minimum interactions per user (k-core; at least 2 applies).
        min_item_interactions: Minimum interactions per item (k-core; 0 = off).
        min_rating: Keep only interactions rated at least this (None = keep all).
        include_item_ids: Add raw item ids (``item_ids``) to each example.
        max_examples_per_user: Keep only each user's most recent windows (None = all).
    """

    max_history: int = 10
    num_candidates: int = 20
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 42
    min_user_interactions: int = 0
    min_item_interactions: int = 0
    min_rating: float | None = None
    include_item_ids: bool = True
    max_examples_per_user: int | None = None

    def validate(self) -> None:
        """Raise :class:`PrepareError` for inconsistent values."""
        if self.max_history < 1:
            raise PrepareError(f"max_history must be >= 1, got {self.max_history}")
        if self.num_candidates < 2:
            raise PrepareError(f"num_candidates must be >= 2, got {self.num_candidates}")
        if len(self.split) != 3 or any(r < 0 or not math.isfinite(r) for r in self.split):
            raise PrepareError(f"split needs three non-negative fractions, got {self.split}")
        if sum(self.split) <= 0:
            raise PrepareError("split fractions sum to zero")
        if abs(sum(self.split) - 1.0) > SPLIT_TOLERANCE:
            terms = " + ".join(map(str, self.split))
            raise PrepareError(f"split fractions must sum to 1, got {terms} = {sum(self.split):g}")
        if self.min_user_interactions < 0 or self.min_item_interactions < 0:
            raise PrepareError("minimum interaction counts must be >= 0")
        if self.max_examples_per_user is not None and self.max_examples_per_user < 1:
            raise PrepareError("max_examples_per_user must be >= 1 (or None for all)")


@dataclass
class RawDataset:
    """What a reader returns: interactions in file order plus item titles.

    Attributes:
        name: Dataset name (e.g. ``"movielens-100k"``).
        interactions: ``(user, item, timestamp, rating or None)`` in file order.
        titles: ``{item: decoded, uncleaned title}``.
        dropped: Interactions the reader discarded, by reason.
        skipped_lines: Malformed lines skipped in lenient mode, by file name.
    """

    name: str
    interactions: list[tuple[str, str, float, float | None]]
    titles: dict[str, str]
    dropped: Counter = field(default_factory=Counter)
    skipped_lines: Counter = field(default_factory=Counter)


@dataclass
class PreparedDataset:
    """Examples per split (``{"train": [...], ...}``), the statistics, and the catalogue: every
    item after filtering, in natural id order, as ``{"item_id", "title", "popularity"}`` with
    popularity = the training rows whose target it is (``catalogue.json``,
    :mod:`sdpo_lightning.data.catalogue`)."""

    splits: dict[str, list[dict[str, Any]]]
    stats: dict[str, Any]
    catalogue: list[dict[str, Any]] = field(default_factory=list)


def _ordered_sequences(
    raw: RawDataset, config: ProtocolConfig, dropped: Counter, titles: dict[str, str]
) -> dict[str, list[str]]:
    """Steps 1–2: filter, order by time (stable), deduplicate per user."""
    per_user: dict[str, list[tuple[float, int, str]]] = {}
    for index, (user, item, time, rating) in enumerate(raw.interactions):
        if item not in titles:
            dropped["no_title"] += 1
        elif config.min_rating is not None and rating is not None and rating < config.min_rating:
            dropped["below_min_rating"] += 1
        else:
            per_user.setdefault(user, []).append((time, index, item))
    sequences: dict[str, list[str]] = {}
    for user, events in per_user.items():
        events.sort()
        seen: set[str] = set()
        sequence = []
        for _, _, item in events:
            if item in seen:
                dropped["repeated_user_item"] += 1
                continue
            seen.add(item)
            sequence.append(item)
        sequences[user] = sequence
    return sequences


def _k_core(
    sequences: dict[str, list[str]], min_user: int, min_item: int, dropped: Counter
) -> dict[str, list[str]]:
    """Step 3: iterative user/item minimum-interaction filter."""
    while True:
        counts = Counter(item for seq in sequences.values() for item in seq)
        rare = {item for item, n in counts.items() if n < min_item}
        changed = False
        kept: dict[str, list[str]] = {}
        for user, seq in sequences.items():
            new = [item for item in seq if item not in rare] if rare else seq
            if len(new) < min_user:
                dropped["min_interactions"] += len(new)
                dropped["users_removed"] += 1
                changed = True
                continue
            if len(new) != len(seq):
                dropped["min_interactions"] += len(seq) - len(new)
                changed = True
            kept[user] = new
        sequences = kept
        if not changed:
            return sequences


def _split_users(users: list[str], config: ProtocolConfig) -> dict[str, list[str]]:
    """Step 5: seeded shuffle of the sorted users, cut at the cumulative ratios."""
    order = sorted(users, key=natural_key)
    shuffle_in_place(random.Random(config.seed), order)
    total = sum(config.split)
    bounds, cumulative = [0], 0.0
    for ratio in config.split:
        cumulative += ratio / total
        bounds.append(min(len(order), math.floor(len(order) * cumulative + 0.5)))
    bounds[-1] = len(order)
    return {
        name: sorted(order[bounds[i] : bounds[i + 1]], key=natural_key)
        for i, name in enumerate(SPLITS)
    }


def build_examples(raw: RawDataset, config: ProtocolConfig | None = None) -> PreparedDataset:
    """Apply the protocol to a reader's output.

    Args:
        raw: Interactions and titles from a reader.
        config: Protocol options; defaults to :class:`ProtocolConfig()`.

    Returns:
        The examples per split and the statistics dictionary.

    Raises:
        PrepareError: Nothing left after filtering, or too few items for the candidates.
    """
    config = config or ProtocolConfig()
    config.validate()
    dropped: Counter = Counter(raw.dropped)
    cleaned = {item: clean_title(title) for item, title in raw.titles.items()}
    cleaned = {item: title for item, title in cleaned.items() if title}
    sequences = _ordered_sequences(raw, config, dropped, cleaned)
    sequences = _k_core(
        sequences, max(config.min_user_interactions, 2), config.min_item_interactions, dropped
    )
    if not sequences:
        raise PrepareError(
            f"{raw.name}: no users left after filtering ({len(raw.interactions)} raw "
            f"interactions; removed: {dict(sorted(dropped.items())) or 'none'}); "
            "relax --min-user-interactions / --min-item-interactions / --min-rating"
        )
    item_ids = sorted({item for seq in sequences.values() for item in seq}, key=natural_key)
    titles, renamed = disambiguate_titles({item: cleaned[item] for item in item_ids})
    index = {item: i for i, item in enumerate(item_ids)}
    names = [titles[item] for item in item_ids]
    negatives = config.num_candidates - 1
    for user, seq in sequences.items():
        if len(item_ids) - len(seq) < negatives:
            raise PrepareError(
                f"{raw.name}: user {user} interacted with {len(seq)} of {len(item_ids)} items, "
                f"leaving fewer than {negatives} negatives; lower --num-candidates"
            )
    splits: dict[str, list[dict[str, Any]]] = {}
    for split, users in _split_users(list(sequences), config).items():
        rows = splits[split] = []
        for user in users:
            seq = [index[item] for item in sequences[user]]
            seen = set(seq)
            first = (
                1
                if config.max_examples_per_user is None
                else max(1, len(seq) - config.max_examples_per_user)
            )
            for t in range(first, len(seq)):
                rng = example_rng(config.seed, user, t)
                history = seq[max(0, t - config.max_history) : t]
                candidates = [seq[t]] + sample_negatives(rng, len(item_ids), seen, negatives)
                shuffle_in_place(rng, candidates)
                row: dict[str, Any] = {
                    "historyList": [names[i] for i in history],
                    "itemList": [names[i] for i in candidates],
                    "trueSelection": names[seq[t]],
                    "user_id": user,
                }
                if config.include_item_ids:
                    row["item_ids"] = {
                        "historyList": [item_ids[i] for i in history],
                        "itemList": [item_ids[i] for i in candidates],
                        "trueSelection": item_ids[seq[t]],
                    }
                rows.append(row)
    stats = _statistics(raw, config, sequences, item_ids, splits, dropped, renamed)
    popularity = Counter(row["trueSelection"] for row in splits["train"])
    catalogue = [
        {"item_id": item, "title": names[i], "popularity": popularity[names[i]]}
        for i, item in enumerate(item_ids)
    ]
    return PreparedDataset(splits=splits, stats=stats, catalogue=catalogue)


def _statistics(
    raw: RawDataset,
    config: ProtocolConfig,
    sequences: dict[str, list[str]],
    item_ids: list[str],
    splits: dict[str, list[dict[str, Any]]],
    dropped: Counter,
    renamed: int,
) -> dict[str, Any]:
    """Collect the numbers written to ``stats.json`` (no paths, no times: deterministic)."""

    def mean_history(rows: list[dict[str, Any]]) -> float:
        return round(sum(len(r["historyList"]) for r in rows) / len(rows), 4) if rows else 0.0

    all_rows = [row for split in SPLITS for row in splits[split]]
    return {
        "dataset": raw.name,
        "users": len(sequences),
        "items": len(item_ids),
        "interactions": sum(len(seq) for seq in sequences.values()),
        "raw_interactions": len(raw.interactions),
        "users_per_split": {s: len({r["user_id"] for r in splits[s]}) for s in SPLITS},
        "examples": {**{s: len(splits[s]) for s in SPLITS}, "total": len(all_rows)},
        "mean_history_length": {
            **{s: mean_history(splits[s]) for s in SPLITS},
            "all": mean_history(all_rows),
        },
        "disambiguated_titles": renamed,
        "dropped": dict(sorted(dropped.items())),
        "skipped_lines": dict(sorted(raw.skipped_lines.items())),
        "protocol": {**asdict(config), "split": list(config.split)},
        "files": {**{s: f"{s}.json" for s in SPLITS}, "catalogue": "catalogue.json"},
    }
