"""Bootstrap confidence intervals and paired significance tests (README.md, "Metrics").

Test sets are small (LastFM: a few hundred to a few thousand rows), so every reported
number comes with a percentile-bootstrap CI, and comparisons between two systems on the
same examples use a paired bootstrap test. All randomness comes from a seeded
``numpy.random.Generator``: same inputs and seed → same outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "bootstrap_ci",
    "paired_bootstrap_ci",
    "paired_bootstrap_pvalue",
    "bootstrap_means",
    "cluster_bootstrap_ci",
    "bootstrap_statistic_ci",
]

_CHUNK_ELEMENTS = 4_000_000  # resample at most this many indices at once (memory bound)


def _as_1d(values: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement, same size) of ``values``.

    Args:
        values: (N,) float64.
        n_boot: Number of resamples.
        rng: The generator to draw from.

    Returns:
        (n_boot,) resample means.
    """
    return _resampled(values.shape[0], n_boot, rng, lambda idx: values[idx].mean(axis=1))


def _resampled(
    n: int, n_boot: int, rng: np.random.Generator, stat, row_cost: int = 1
) -> np.ndarray:
    """``stat(idx)`` of ``n_boot`` resamples of ``n`` indices with replacement, drawn in
    chunks of ``idx`` (chunk, n) to bound memory (``row_cost``: elements ``stat`` touches per
    index); returns (n_boot,)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rows = max(1, _CHUNK_ELEMENTS // (n * max(1, row_cost)))
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        out[start:stop] = stat(rng.integers(0, n, size=(stop - start, n)))  # idx: (chunk, n)
    return out


def bootstrap_ci(
    values: np.ndarray | Sequence[float],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of a mean.

    Args:
        values: (N,) per-example scores (e.g. 0/1 hits).
        n_boot: Number of bootstrap resamples.
        alpha: 1 - confidence level (0.05 → 95% CI).
        seed: Seed of the ``numpy.random.Generator``.

    Returns:
        ``(mean, lo, hi)``: the sample mean and the ``alpha/2`` and ``1 - alpha/2``
        percentiles of the resample means.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    arr = _as_1d(values, "values")
    means = bootstrap_means(arr, n_boot, np.random.default_rng(seed))
    lo, hi = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    return float(arr.mean()), float(lo), float(hi)


def paired_bootstrap_pvalue(
    a: np.ndarray | Sequence[float],
    b: np.ndarray | Sequence[float],
    n_boot: int = 10000,
    seed: int = 0,
) -> float:
    """Two-sided paired bootstrap test of ``mean(a) == mean(b)``.

    ``a[i]`` and ``b[i]`` are two systems' scores on the same example ``i``. With
    ``d = a - b`` and observed ``delta = mean(d)``, examples are resampled with
    replacement ``n_boot`` times; the resample means ``delta*`` are centered at
    ``delta`` to approximate the null distribution (Efron & Tibshirani 1993, §16.4;
    Berg-Kirkpatrick et al. 2012)::

        p = (1 + #{|delta* - delta| >= |delta|}) / (n_boot + 1)

    so ``p == 1`` for identical systems and ``p >= 1 / (n_boot + 1)`` always.

    Args:
        a: (N,) per-example scores of system A.
        b: (N,) per-example scores of system B on the same examples, same order.
        n_boot: Number of resamples.
        seed: Seed of the ``numpy.random.Generator``.

    Returns:
        The two-sided p-value in ``(0, 1]``.

    Raises:
        ValueError: if the lengths differ or the inputs are empty or non-finite.
    """
    arr_a, arr_b = _as_1d(a, "a"), _as_1d(b, "b")
    if arr_a.shape != arr_b.shape:
        raise ValueError(
            f"paired test needs scores on the same examples: len(a)={arr_a.size} "
            f"!= len(b)={arr_b.size}"
        )
    diff = arr_a - arr_b
    delta = diff.mean()
    means = bootstrap_means(diff, n_boot, np.random.default_rng(seed))
    # small tolerance so float noise in resample means of identical values does not
    # turn ">=" into "<"
    tol = 1e-12 * max(1.0, abs(delta))
    extreme = np.abs(means - delta) >= abs(delta) - tol
    return float((1 + extreme.sum()) / (n_boot + 1))


def paired_bootstrap_ci(
    a: np.ndarray | Sequence[float],
    b: np.ndarray | Sequence[float],
    n_boot: int = 10000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile-bootstrap interval of the paired difference ``mean(a) - mean(b)``.

    ``a[i]`` and ``b[i]`` are two systems' scores on the same example ``i``; the examples
    (not the systems) are resampled, so the interval reflects the per-example correlation
    of the two systems. An interval that lies above 0 says A beats B on these rows.

    Args:
        a: (N,) per-example scores of system A.
        b: (N,) per-example scores of system B on the same examples, same order.
        n_boot: Number of resamples.
        alpha: 1 - confidence level (0.05 → 95% interval).
        seed: Seed of the ``numpy.random.Generator``.

    Returns:
        ``(delta, lo, hi)``: the observed mean difference and its interval.
    """
    arr_a, arr_b = _as_1d(a, "a"), _as_1d(b, "b")
    if arr_a.shape != arr_b.shape:
        raise ValueError(
            f"paired interval needs scores on the same examples: len(a)={arr_a.size} "
            f"!= len(b)={arr_b.size}"
        )
    return bootstrap_ci(arr_a - arr_b, n_boot=n_boot, alpha=alpha, seed=seed)


def cluster_bootstrap_ci(
    values: np.ndarray | Sequence[float],
    groups: Sequence[object],
    n_boot: int = 10000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap interval of a mean over rows that come in clusters (e.g. users).

    Rows of one user share history windows, so they are not independent and a bootstrap
    over rows is too narrow. Here the ``G`` clusters are resampled with replacement and each
    resample's statistic is the mean over all rows of the drawn clusters::

        mean* = sum_c S_c* / sum_c n_c*      (S_c: sum of the cluster's values, n_c: its rows)

    With one row per cluster this is :func:`bootstrap_ci` (same draws for the same seed).
    For a paired comparison pass the per-row differences ``a - b``.

    Args:
        values: (N,) per-row scores or paired differences.
        groups: (N,) cluster label of each row (any hashable).
        n_boot: Number of resamples.
        alpha: 1 - confidence level (0.05 → 95% interval).
        seed: Seed of the ``numpy.random.Generator``.

    Returns:
        ``(mean, lo, hi)``: the mean over all rows and the interval.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    arr = _as_1d(values, "values")
    if len(groups) != arr.size:
        raise ValueError(
            f"groups needs one label per row: {len(groups)} labels for {arr.size} rows"
        )
    index: dict[object, int] = {}
    codes = np.array([index.setdefault(g, len(index)) for g in groups])  # (N,) cluster of each row
    sums = np.bincount(codes, weights=arr)  # (G,)
    counts = np.bincount(codes).astype(np.float64)  # (G,)
    means = _resampled(
        sums.shape[0],
        n_boot,
        np.random.default_rng(seed),  # the draws of bootstrap_means
        lambda idx: sums[idx].sum(axis=1) / counts[idx].sum(axis=1),
    )  # idx: (chunk, G)
    lo, hi = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    return float(arr.mean()), float(lo), float(hi)


def bootstrap_statistic_ci(
    n: int,
    statistic,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    row_cost: int = 1,
) -> tuple[float, float, float]:
    """Percentile bootstrap interval of a statistic of ``n`` rows that is not a mean of
    per-row values (e.g. catalogue coverage: distinct recommended items over all rows).

    The rows are resampled with replacement exactly as :func:`bootstrap_ci` resamples them (the
    same draws for the same seed), and the statistic is recomputed on each resample.

    Args:
        n: rows.
        statistic: ``statistic(idx)`` for ``idx`` ``(r, n)`` row indices → ``(r,)`` values.
        n_boot: Number of resamples.
        alpha: 1 - confidence level.
        seed: Seed of the ``numpy.random.Generator``.
        row_cost: elements ``statistic`` touches per row index (bounds the resamples drawn at once).

    Returns:
        ``(value, lo, hi)``: the statistic of the rows themselves and the interval (resamples
        where it is undefined, NaN, are left out).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n < 1:
        raise ValueError("no rows")
    value = float(statistic(np.arange(n)[None, :])[0])
    stats = _resampled(n, n_boot, np.random.default_rng(seed), statistic, row_cost)
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return value, float("nan"), float("nan")
    lo, hi = np.quantile(stats, [alpha / 2, 1.0 - alpha / 2])
    return value, float(lo), float(hi)
