"""The preparation protocol on in-memory interactions: order, windows, split, candidates."""

from __future__ import annotations

import random

import pytest

from sdpo_lightning.data.prepare import PrepareError, ProtocolConfig, RawDataset, build_examples
from sdpo_lightning.data.prepare.sampling import example_rng, sample_negatives, shuffle_in_place
from sdpo_lightning.data.prepare.titles import clean_title, disambiguate_titles


def make_raw(
    n_users: int = 10, n_items: int = 60, length: int = 14, seed: int = 0, **kwargs
) -> RawDataset:
    """Users 1..n, each with ``length`` distinct items at increasing times, shuffled."""
    rng = random.Random(seed)
    rows = []
    for user in range(1, n_users + 1):
        for t, item in enumerate(rng.sample(range(1, n_items + 1), length)):
            rows.append((str(user), str(item), float(1000 + 10 * t), 4.0))
    rng.shuffle(rows)
    titles = {str(i): f"Item {i}" for i in range(1, n_items + 1)}
    return RawDataset(name="toy", interactions=rows, titles=titles, **kwargs)


def rows_by_user(prepared) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for split in ("train", "valid", "test"):
        for row in prepared.splits[split]:
            out.setdefault(row["user_id"], []).append(row)
    return out


def test_sliding_windows_follow_time_order_and_cap_history():
    raw = make_raw(n_users=3, length=14)
    prepared = build_examples(raw)
    for user, rows in rows_by_user(prepared).items():
        sequence = [
            item
            for u, item, _, _ in sorted(
                (r for r in raw.interactions if r[0] == user), key=lambda r: r[2]
            )
        ]
        assert len(rows) == 13  # one example per target position 1..13
        for t, row in enumerate(rows, start=1):
            ids = row["item_ids"]
            assert ids["trueSelection"] == sequence[t]
            assert ids["historyList"] == sequence[max(0, t - 10) : t]
            assert row["historyList"] == [f"Item {i}" for i in ids["historyList"]]
            assert list(row) == ["historyList", "itemList", "trueSelection", "user_id", "item_ids"]


def test_max_examples_per_user_keeps_the_most_recent_windows():
    full = rows_by_user(build_examples(make_raw(n_users=3)))
    capped = rows_by_user(
        build_examples(make_raw(n_users=3), ProtocolConfig(max_examples_per_user=4))
    )
    assert all(capped[user] == rows[-4:] for user, rows in full.items())


def test_equal_timestamps_keep_file_order_and_repeats_keep_first():
    rows = [
        ("u", "3", 5.0, None),
        ("u", "1", 5.0, None),
        ("u", "2", 1.0, None),
        ("u", "1", 9.0, None),
        ("v", "1", 1.0, None),
        ("v", "2", 1.0, None),
    ]
    rows += [("w", str(i), float(i), None) for i in range(4, 30)]
    raw = RawDataset("tie", rows, {str(i): f"T{i}" for i in range(1, 30)})
    prepared = build_examples(raw, ProtocolConfig(split=(1, 0, 0), num_candidates=3))
    u_rows = [r for r in prepared.splits["train"] if r["user_id"] == "u"]
    assert u_rows[-1]["item_ids"]["historyList"] == ["2", "3"]
    assert u_rows[-1]["item_ids"]["trueSelection"] == "1"
    assert prepared.stats["dropped"] == {"repeated_user_item": 1}


def test_user_split_is_seeded_disjoint_and_8_1_1():
    prepared = build_examples(make_raw(n_users=20))
    users = {s: {r["user_id"] for r in prepared.splits[s]} for s in ("train", "valid", "test")}
    assert [len(users[s]) for s in ("train", "valid", "test")] == [16, 2, 2]
    assert not (
        users["train"] & users["valid"]
        or users["train"] & users["test"]
        or users["valid"] & users["test"]
    )
    again = build_examples(make_raw(n_users=20))
    assert again.splits == prepared.splits and again.stats == prepared.stats
    other = build_examples(make_raw(n_users=20), ProtocolConfig(seed=7))
    assert {r["user_id"] for r in other.splits["test"]} != users["test"]


def test_candidates_are_unique_contain_target_and_avoid_user_items():
    raw = make_raw(n_users=6, n_items=40, length=18)
    prepared = build_examples(raw)
    seen = {}
    for user, item, _, _ in raw.interactions:
        seen.setdefault(user, set()).add(item)
    for rows in rows_by_user(prepared).values():
        for row in rows:
            ids = row["item_ids"]
            assert len(row["itemList"]) == len(set(row["itemList"])) == 20
            assert row["trueSelection"] in row["itemList"]
            negatives = set(ids["itemList"]) - {ids["trueSelection"]}
            assert len(negatives) == 19 and not negatives & seen[row["user_id"]]


def test_candidates_do_not_depend_on_other_users_or_split():
    small, large = make_raw(n_users=4), make_raw(n_users=4)
    known = sorted({item for _, item, _, _ in small.interactions})[:2]
    large.interactions += [("99", known[0], 0.0, None), ("99", known[1], 1.0, None)]
    a = rows_by_user(build_examples(small))["3"]
    b = rows_by_user(build_examples(large, ProtocolConfig(split=(0.5, 0.25, 0.25))))["3"]
    assert a == b


def test_title_cleaning_and_disambiguation():
    assert clean_title("  Cafe\u0301\t Society\n(1995)\u00a0") == "Café Society (1995)"
    assert clean_title("a\x00b\u200b") == "a b"
    unique, renamed = disambiguate_titles({"10": "X", "2": "X", "3": "X [2]", "4": "Y"})
    assert unique == {"2": "X", "10": "X [3]", "3": "X [2]", "4": "Y"} and renamed == 1
    raw = make_raw(n_users=4)
    used = sorted({item for _, item, _, _ in raw.interactions}, key=int)
    raw.titles.update({used[0]: "Same", used[1]: " Same ", used[2]: ""})
    prepared = build_examples(raw)
    titles = {t for rows in prepared.splits.values() for r in rows for t in r["itemList"]}
    assert "Same [2]" in titles or "Same" in titles
    assert prepared.stats["disambiguated_titles"] == 1
    assert all(t.strip() == t and t for t in titles)


def test_missing_titles_short_users_and_k_core_are_counted():
    raw = make_raw(n_users=10, n_items=30, length=12)
    del raw.titles["5"]
    raw.interactions.append(("lonely", "1", 0.0, None))
    prepared = build_examples(raw, ProtocolConfig(min_item_interactions=2, num_candidates=10))
    dropped = prepared.stats["dropped"]
    assert dropped["no_title"] == sum(1 for r in raw.interactions if r[1] == "5")
    assert dropped["users_removed"] >= 1  # "lonely" has one interaction
    assert "lonely" not in rows_by_user(prepared)
    sequences = {
        user: rows[0]["item_ids"]["historyList"] + [r["item_ids"]["trueSelection"] for r in rows]
        for user, rows in rows_by_user(prepared).items()
    }
    counts: dict[str, int] = {}
    for seq in sequences.values():
        for item in seq:
            counts[item] = counts.get(item, 0) + 1
    assert min(counts.values()) >= 2 and "5" not in counts
    assert prepared.stats["interactions"] == sum(map(len, sequences.values()))
    assert prepared.stats["items"] == len(counts)


def test_min_rating_filter():
    raw = make_raw(n_users=4)
    raw.interactions = [(u, i, t, 1.0 if int(i) % 2 else 5.0) for u, i, t, _ in raw.interactions]
    prepared = build_examples(raw, ProtocolConfig(min_rating=4, num_candidates=5))
    items = {r["item_ids"]["trueSelection"] for rows in prepared.splits.values() for r in rows}
    assert all(int(i) % 2 == 0 for i in items)
    assert prepared.stats["dropped"]["below_min_rating"] > 0


def test_empty_after_filtering_and_too_few_items_are_clear_errors():
    with pytest.raises(PrepareError, match="no users left after filtering"):
        build_examples(make_raw(n_users=3, length=5), ProtocolConfig(min_user_interactions=6))
    with pytest.raises(PrepareError, match="lower --num-candidates"):
        build_examples(make_raw(n_users=2, n_items=20, length=10))
    for bad in (
        dict(max_history=0),
        dict(num_candidates=1),
        dict(split=(1, -1, 0)),
        dict(split=(0, 0, 0)),
        dict(min_item_interactions=-1),
        dict(max_examples_per_user=0),
    ):
        with pytest.raises(PrepareError):
            build_examples(make_raw(n_users=2), ProtocolConfig(**bad))


def test_sampling_primitives_are_pinned_and_correct():
    # Pinned: a change here silently changes every prepared dataset.
    rng = example_rng(42, "1", 1)
    assert sample_negatives(rng, 1682, {0, 5, 9}, 5) == [488, 684, 1465, 476, 542]
    rng = random.Random(3)
    dense = sample_negatives(rng, 30, set(range(20)), 10)
    assert sorted(dense) == list(range(20, 30))
    with pytest.raises(ValueError):
        sample_negatives(rng, 10, set(range(5)), 6)
    values = list(range(50))
    shuffle_in_place(random.Random(0), values)
    assert sorted(values) == list(range(50)) and values != list(range(50))
