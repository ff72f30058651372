"""Negative sampling: distinct, never the target, seeded, re-drawn per epoch; each strategy."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from sdpo_lightning.data.negatives import example_generator, sample_negatives


@pytest.mark.parametrize("strategy", ["random", "popularity", "hard", "tempered"])
def test_distinct_and_never_the_target(strategy):
    scores = torch.randn(20)
    for idx in range(30):
        neg = sample_negatives(
            20,
            target_index=idx % 20,
            k=19 if idx % 2 else 3,
            strategy=strategy,
            generator=example_generator(0, 0, idx),
            weights=torch.rand(20) * 5,
            scores=scores,
        )
        assert idx % 20 not in neg and len(set(neg)) == len(neg)


def test_seeded_and_redrawn_each_epoch():
    def draw(seed, epoch, i):
        return sample_negatives(20, 0, 3, generator=example_generator(seed, epoch, i))  # noqa: E731

    assert draw(0, 1, 5) == draw(0, 1, 5)
    per_epoch = [tuple(draw(0, e, 5)) for e in range(10)]
    assert len(set(per_epoch)) > 5
    assert [draw(1, 0, i) for i in range(10)] != [draw(0, 0, i) for i in range(10)]


def test_random_is_uniform_over_non_targets():
    counts = Counter()
    for i in range(3000):
        counts.update(sample_negatives(5, 2, 1, generator=example_generator(0, 0, i)))
    assert set(counts) == {0, 1, 3, 4}
    assert all(650 < c < 850 for c in counts.values())  # 750 expected each


def test_popularity_prefers_frequent_targets():
    weights = [0, 50, 0, 0, 0]  # candidate 1 was a target 50 times (weights are count + 1)
    hits = sum(
        1 in sample_negatives(5, 0, 1, "popularity", example_generator(0, 0, i), weights=weights)
        for i in range(1000)
    )
    assert hits / 1000 == pytest.approx(51 / 54, abs=0.04)


def test_hard_takes_the_top_scored_non_targets():
    scores = [5.0, -1.0, 3.0, 9.0, 0.0, 3.0]
    assert sample_negatives(6, 3, 3, "hard", scores=scores) == [0, 2, 5]  # tie 2/5 → earlier first


def test_tempered_interpolates_between_hard_and_uniform():
    scores = torch.tensor([0.0, 10.0, 9.0, 1.0, 2.0, 3.0])
    cold = [
        sample_negatives(
            6, 0, 2, "tempered", example_generator(0, 0, i), scores=scores, temperature=1e-3
        )
        for i in range(50)
    ]
    assert all(sorted(c) == [1, 2] for c in cold)
    hot = Counter()
    for i in range(2000):
        hot.update(
            sample_negatives(
                6, 0, 1, "tempered", example_generator(0, 0, i), scores=scores, temperature=1e6
            )
        )
    assert all(330 < c < 470 for c in hot.values()) and len(hot) == 5


def test_errors():
    with pytest.raises(ValueError, match="unknown negative sampling strategy 'nope'"):
        sample_negatives(5, 0, 1, "nope")
    with pytest.raises(ValueError, match="asked for 5 negatives but only 4"):
        sample_negatives(5, 0, 5)
    with pytest.raises(ValueError, match="needs reference scores"):
        sample_negatives(5, 0, 2, "hard")
