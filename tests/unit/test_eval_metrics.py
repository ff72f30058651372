"""Tests of GenerationMetrics, RankingMetrics, rank_of_target and the bootstrap."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from sdpo_lightning.evaluation.bootstrap import bootstrap_ci, paired_bootstrap_pvalue
from sdpo_lightning.evaluation.metrics import (
    GenerationMetrics,
    RankingMetrics,
    rank_of_target,
    tie_broken_scores,
)


def _t(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def test_generation_metrics_hand_computed() -> None:
    metric = GenerationMetrics()
    metric.update(torch.tensor([True, False, False]), torch.tensor([True, True, False]))
    metric.update(torch.tensor([True, False]), torch.tensor([True, True]))
    out = metric.compute()
    assert_close(out["hr@1"], _t(2 / 5))
    assert_close(out["valid_ratio"], _t(4 / 5))
    assert_close(out["hr@1_given_valid"], _t(2 / 4))
    metric.reset()
    metric.update(torch.tensor([False]), torch.tensor([False]))
    out = metric.compute()
    assert_close(out["hr@1_given_valid"], _t(0.0))  # no valid answer: 0, not NaN
    assert_close(out["valid_ratio"], _t(0.0))


def test_generation_metrics_rejects_correct_but_invalid() -> None:
    with pytest.raises(ValueError, match="correct but not valid"):
        GenerationMetrics().update(torch.tensor([True]), torch.tensor([False]))


def test_generation_metrics_merge_like_sync() -> None:
    a, b = GenerationMetrics(), GenerationMetrics()
    a.update(torch.tensor([True, False]), torch.tensor([True, False]))
    b.update(torch.tensor([True, True, False]), torch.tensor([True, True, True]))
    a.merge_state(b)  # the same sum reduction as a distributed sync
    assert_close(a.compute()["hr@1"], _t(3 / 5))
    assert_close(a.compute()["hr@1_given_valid"], _t(3 / 4))


SCORES = torch.tensor(
    [
        [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0],  # target 0 -> rank 1
        [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0],  # target 2 -> rank 3
        [-3.0, -3.0, -3.0, -1.0, -9.0, -9.0],  # target 1, tied with 0 and 2 -> rank 4
        [-2.0, -2.0, -2.0, -2.0, -2.0, -2.0],  # target 5, all tied -> rank 6 (last)
    ]
)
TARGET = torch.tensor([0, 2, 1, 5])
RANKS = [1, 3, 4, 6]


def test_rank_of_target_ties_against_target() -> None:
    assert rank_of_target(SCORES, TARGET).tolist() == RANKS
    assert rank_of_target(SCORES, TARGET).dtype == torch.long


def test_tie_broken_scores_order() -> None:
    preds = tie_broken_scores(SCORES, TARGET)
    # row 2: 3 (best), then ties 0, 2 in candidate order, then the target 1, then 4, 5
    assert preds[2].tolist() == [5.0, 3.0, 4.0, 6.0, 2.0, 1.0]
    assert preds[3].tolist() == [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    rank_from_preds = (preds > preds.gather(1, TARGET[:, None])).sum(1) + 1
    assert rank_from_preds.tolist() == RANKS
    assert all(len(set(row.tolist())) == 6 for row in preds)  # no ties left


def test_rank_of_target_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        rank_of_target(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="out of range"):
        rank_of_target(torch.zeros(1, 3), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"\(B, M\)"):
        rank_of_target(torch.zeros(3), torch.tensor([0]))


def _hand(ranks: list[int]) -> dict[str, float]:
    n = len(ranks)

    def ndcg(k: int) -> float:
        return sum(1 / math.log2(r + 1) for r in ranks if r <= k) / n

    return {
        "hr@1": sum(r <= 1 for r in ranks) / n,
        "hr@3": sum(r <= 3 for r in ranks) / n,
        "hr@5": sum(r <= 5 for r in ranks) / n,
        "ndcg@5": ndcg(5),
        "ndcg@10": ndcg(10),
        "mrr": sum(1 / r for r in ranks) / n,
    }


def test_ranking_metrics_hand_computed() -> None:
    metric = RankingMetrics()
    metric.update(SCORES[:2], TARGET[:2])
    metric.update(SCORES[2:], TARGET[2:])
    out = metric.compute()
    assert set(out) == {"hr@1", "hr@3", "hr@5", "ndcg@5", "ndcg@10", "mrr"}
    for name, value in _hand(RANKS).items():
        assert_close(out[name], _t(value), msg=name)
    metric.reset()
    metric.update(SCORES[3:], TARGET[3:])  # indexes restart after reset
    assert_close(metric.compute()["mrr"], _t(1 / 6))


def test_ranking_metrics_random_matches_rank_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (64, 20), generator=gen).float()  # many ties
    target = torch.randint(0, 20, (64,), generator=gen)
    metric = RankingMetrics()
    for chunk in range(0, 64, 16):
        metric.update(scores[chunk : chunk + 16], target[chunk : chunk + 16])
    out = metric.compute()
    for name, value in _hand(rank_of_target(scores, target).tolist()).items():
        assert_close(out[name], _t(value), msg=name)


def test_ranking_metrics_explicit_indexes_and_variable_m() -> None:
    metric = RankingMetrics()
    metric.update(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([2]), indexes=torch.tensor([10]))
    metric.update(torch.tensor([[0.0, 1.0]]), torch.tensor([0]), indexes=torch.tensor([11]))
    assert_close(metric.compute()["mrr"], _t((1 + 1 / 2) / 2))


def test_bootstrap_ci_deterministic_and_sane() -> None:
    values = np.random.default_rng(1).binomial(1, 0.3, size=500).astype(float)
    first = bootstrap_ci(values, n_boot=500, seed=3)
    assert first == bootstrap_ci(values, n_boot=500, seed=3)
    assert first != bootstrap_ci(values, n_boot=500, seed=4)
    mean, lo, hi = first
    assert mean == pytest.approx(values.mean())
    assert lo < mean < hi
    se = math.sqrt(mean * (1 - mean) / values.size)  # normal approximation
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_bootstrap_ci_coverage() -> None:
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(100):
        sample = rng.binomial(1, 0.4, size=200).astype(float)
        _, lo, hi = bootstrap_ci(sample, n_boot=300, seed=trial)
        covered += lo <= 0.4 <= hi
    assert 85 <= covered <= 100  # nominal 95%


def test_bootstrap_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap_pvalue([1.0, 0.0], [1.0, 0.0, 1.0])


def test_paired_pvalue() -> None:
    rng = np.random.default_rng(0)
    a = rng.binomial(1, 0.5, size=300).astype(float)
    assert paired_bootstrap_pvalue(a, a, n_boot=2000) == 1.0
    b = np.where(rng.random(300) < 0.3, 1.0, a)  # b fixes 30% of the examples
    p = paired_bootstrap_pvalue(b, a, n_boot=2000)
    assert p == paired_bootstrap_pvalue(b, a, n_boot=2000)  # seeded
    assert p <= 1 / 2001 + 1e-12
    noisy = np.where(rng.random(300) < 0.02, 1.0 - a, a)  # a few flips both ways
    assert paired_bootstrap_pvalue(noisy, a, n_boot=2000) > 0.05


def _sync_worker(rank: int, world: int, port: int, queue) -> None:  # pragma: no cover - subprocess
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        gen, rnk = GenerationMetrics(), RankingMetrics()
        rows = slice(0, 3) if rank == 0 else slice(3, 4)  # uneven shards, same local indexes
        gen.update(
            torch.tensor([True, False, True, False])[rows],
            torch.tensor([True, True, True, False])[rows],
        )
        rnk.update(SCORES[rows], TARGET[rows])
        out = {
            k: float(v)
            for k, v in {**gen.compute(), **{f"r/{k}": v for k, v in rnk.compute().items()}}.items()
        }
        queue.put((rank, out))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="uses the fork start method")
def test_metrics_sync_across_two_processes() -> None:
    """Two gloo processes: sums and gathered rankings equal the single-process values."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # no re-import of torch in the children
    queue = ctx.Queue()
    procs = [ctx.Process(target=_sync_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected = {"hr@1": 2 / 4, "valid_ratio": 3 / 4, "hr@1_given_valid": 2 / 3}
    expected.update({f"r/{k}": v for k, v in _hand(RANKS).items()})
    for rank in (0, 1):
        assert results[rank] == pytest.approx(expected, abs=1e-6)


def test_paired_ci_is_the_interval_of_the_per_example_difference() -> None:
    """a - b = [1, 0, 0, 1, 0, 0, 0, 0] element-wise, so delta = 2/8 = 0.25; resampling
    the differences must give exactly bootstrap_ci of that difference vector (same seed),
    and the interval of a system against itself is the point 0."""
    from sdpo_lightning.evaluation.bootstrap import paired_bootstrap_ci

    a = [1, 1, 0, 1, 0, 1, 0, 0]
    b = [0, 1, 0, 0, 0, 1, 0, 0]
    delta, lo, hi = paired_bootstrap_ci(a, b, n_boot=500, seed=3)
    assert delta == pytest.approx(0.25)
    assert (delta, lo, hi) == bootstrap_ci([1, 0, 0, 1, 0, 0, 0, 0], n_boot=500, seed=3)
    assert 0.0 <= lo <= delta <= hi <= 0.75
    assert paired_bootstrap_ci(a, a, n_boot=100) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same examples"):
        paired_bootstrap_ci([1.0, 0.0], [1.0])
