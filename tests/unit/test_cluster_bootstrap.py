"""The bootstrap over clusters (users) of sdpo_lightning.evaluation.bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from torch.testing import assert_close

from sdpo_lightning.evaluation.bootstrap import bootstrap_ci, cluster_bootstrap_ci


def test_one_row_per_cluster_is_the_row_bootstrap() -> None:
    """Singleton clusters: S_c = x_c and n_c = 1, so mean* = mean of the drawn rows, with the
    same draws as bootstrap_ci for the same seed — the two intervals are equal."""
    x = np.random.default_rng(3).integers(0, 2, size=157).astype(float)
    assert_close(
        cluster_bootstrap_ci(x, list(range(157)), n_boot=2000, seed=5),
        bootstrap_ci(x, n_boot=2000, seed=5),
    )


def test_two_clusters_hand_computed() -> None:
    """Clusters A = [1, 1] and B = [0]. The mean over rows is 2/3. A resample of two clusters
    is AA (mean 1, p 1/4), BB (0, p 1/4) or AB/BA (2/3, p 1/2); the 2.5% and 97.5%
    percentiles of those means are 0 and 1."""
    mean, lo, hi = cluster_bootstrap_ci([1.0, 1.0, 0.0], ["A", "A", "B"], n_boot=4000, seed=0)
    assert_close((mean, lo, hi), (2 / 3, 0.0, 1.0))


def test_constant_clusters_collapse_the_interval() -> None:
    """Every cluster has mean 0.25 (rows 1, 0, 0, 0): each resample's mean is 0.25."""
    values = [1.0, 0.0, 0.0, 0.0] * 5
    mean, lo, hi = cluster_bootstrap_ci(values, [i // 4 for i in range(20)], n_boot=500, seed=1)
    assert_close((mean, lo, hi), (0.25, 0.25, 0.25))


def test_correlated_rows_widen_the_interval() -> None:
    """10 users, 20 identical rows each, half the users all 1s: 200 rows but only 10
    independent units. The row interval is about mean ± 1.96·sqrt(0.25/200) (width ~0.14),
    the user interval about ± 1.96·sqrt(0.25/10) (width ~0.6)."""
    values = np.repeat([1.0] * 5 + [0.0] * 5, 20)
    users = np.repeat(np.arange(10), 20).tolist()
    _, r_lo, r_hi = bootstrap_ci(values, n_boot=4000, seed=0)
    _, c_lo, c_hi = cluster_bootstrap_ci(values, users, n_boot=4000, seed=0)
    assert r_hi - r_lo == pytest.approx(0.14, abs=0.03)
    assert c_hi - c_lo == pytest.approx(0.6, abs=0.1)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="one label per row"):
        cluster_bootstrap_ci([1.0, 0.0], ["a"])
    with pytest.raises(ValueError, match="alpha"):
        cluster_bootstrap_ci([1.0], ["a"], alpha=1.5)
    with pytest.raises(ValueError, match="empty"):
        cluster_bootstrap_ci([], [])
