"""The all-item protocol's metrics, from per-example prediction records (``docs/all_item.md``).

Each record of ``predictions.jsonl`` holds the protocol's part under ``"all_item"``
(:mod:`.all_item`): ``items`` (the top ``N`` titles, best first, history items never among them),
``target_rank`` (1-based rank of the target among them, ``null`` when it is not in the top ``N``),
with popularity known ``popularity`` (the items' training popularity) and ``target_popularity``,
and with free generation ``valid`` / ``correct``.

Per-example metrics (mean over rows, percentile-bootstrap interval):

* ``hr@k`` (k = 1, 5, 10, 20; those <= N): the target is in the top k;
* ``ndcg@k`` (k = 5, 10, 20): ``1 / log2(rank + 1)`` when ``rank <= k``, else 0 (one relevant item);
* ``mrr``: ``1 / rank`` over the top ``N`` (MRR@N): a target outside the top ``N`` counts 0;
* ``valid_ratio`` / ``generation_hr@1`` (free generation): the answer names one catalogue title
  (:meth:`~sdpo_lightning.data.catalogue.Catalogue.match`) / names the target;
* ``popularity@k`` (k = min(10, N)): mean training popularity of a row's top-k items;
  ``target_popularity``: the target's (what users did pick, the reference);
* ``novelty@k``: mean self-information ``-log2 p(i)`` of a row's top-k items, ``p(i) =
  (popularity_i + 1) / (sum of popularity + n_items)``; ``target_novelty``: the target's.

Set-level metrics (the bootstrap resamples rows and recomputes them):

* ``coverage@k``: distinct items in all rows' top-k over the catalogue size;
* ``popularity_lift@k``: ``popularity@k / target_popularity`` (above 1: more popular than what
  users pick).

The catalogue figures come from the summary's ``catalogue`` entry (``n_items``,
``total_popularity``); without them coverage and novelty are left out, as are the popularity
metrics when the records carry no popularity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["RowStatistic", "all_item_values", "per_example_value", "HR_KS", "NDCG_KS", "SET_K"]

HR_KS = (1, 5, 10, 20)
NDCG_KS = (5, 10, 20)
SET_K = 10


@dataclasses.dataclass(frozen=True)
class RowStatistic:
    """A statistic of the rows that is not a mean of per-row values.

    Attributes:
        n: rows.
        fn: ``fn(idx)`` for ``idx`` ``(r, n)`` row indices (``r`` resamples) → ``(r,)`` values.
        row_cost: elements ``fn`` touches per resampled row (bounds the resamples done at once).
    """

    n: int
    fn: Callable[[np.ndarray], np.ndarray]
    row_cost: int = 1

    def value(self) -> float:
        """The statistic of the rows themselves."""
        return float(self.fn(np.arange(self.n)[None, :])[0])


def _ranks(parts: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Target ranks, 0 where the target is not in the top N."""
    return np.array([p["target_rank"] or 0 for p in parts], dtype=np.float64)


def per_example_value(part: Mapping[str, Any], metric: str) -> float:
    """One record's value of a per-example all-item metric (``hr@k``, ``ndcg@k``, ``mrr``,
    ``valid_ratio``, ``generation_hr@1``): the paired tests' unit.

    Raises:
        KeyError: for a metric that is not a mean of per-example values.
    """
    rank = part.get("target_rank") or 0
    if metric.startswith("hr@"):
        return float(0 < rank <= int(metric[3:]))
    if metric.startswith("ndcg@"):
        return float(1.0 / np.log2(rank + 1.0)) if 0 < rank <= int(metric[5:]) else 0.0
    if metric == "mrr":
        return 1.0 / rank if rank else 0.0
    if metric == "valid_ratio":
        return float(bool(part["valid"]))
    if metric == "generation_hr@1":
        return float(bool(part["correct"]))
    raise KeyError(f"{metric!r} is not a per-example all-item metric")


def all_item_values(
    records: Sequence[Mapping[str, Any]], catalogue: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray | RowStatistic]:
    """Per-example arrays (means) and :class:`RowStatistic` of the all-item protocol (module
    docstring), in reporting order.

    Args:
        records: prediction records, each with an ``all_item`` part holding ``target_rank``.
        catalogue: the summary's catalogue entry (``n_items``, ``total_popularity``, ``top_n``).
    """
    catalogue = catalogue or {}
    parts = [r["all_item"] for r in records]
    n = len(parts)
    top_n = int(catalogue.get("top_n") or max((len(p["items"]) for p in parts), default=0))
    rank = _ranks(parts)
    hit = rank > 0
    out: dict[str, np.ndarray | RowStatistic] = {}
    for k in HR_KS:
        if k <= top_n:
            out[f"hr@{k}"] = (hit & (rank <= k)).astype(np.float64)
    gain = np.where(hit, 1.0 / np.log2(np.maximum(rank, 1.0) + 1.0), 0.0)  # rank 0: a miss
    for k in NDCG_KS:
        if k <= top_n:
            out[f"ndcg@{k}"] = np.where(hit & (rank <= k), gain, 0.0)
    out["mrr"] = np.where(hit, 1.0 / np.maximum(rank, 1.0), 0.0)
    if all("valid" in p for p in parts):
        out["valid_ratio"] = np.array([bool(p["valid"]) for p in parts], dtype=np.float64)
        out["generation_hr@1"] = np.array([bool(p["correct"]) for p in parts], dtype=np.float64)
    k = min(SET_K, top_n)
    n_items = catalogue.get("n_items")
    if n_items:
        codes: dict[str, int] = {}
        top = np.full((n, k), -1, dtype=np.int64)
        for i, p in enumerate(parts):
            for j, title in enumerate(p["items"][:k]):
                top[i, j] = codes.setdefault(title, len(codes))
        n_codes = len(codes)

        def coverage(idx: np.ndarray) -> np.ndarray:
            seen = np.zeros((idx.shape[0], n_codes + 1), dtype=bool)
            seen[np.arange(idx.shape[0])[:, None], top[idx].reshape(idx.shape[0], -1) + 1] = True
            return seen[:, 1:].sum(axis=1) / float(n_items)

        out[f"coverage@{k}"] = RowStatistic(n, coverage, row_cost=k)
    if all("popularity" in p and "target_popularity" in p for p in parts):
        pops = [np.asarray(p["popularity"][:k], dtype=np.float64) for p in parts]
        rec_pop = np.array([x.mean() if x.size else 0.0 for x in pops])
        tgt_pop = np.array([float(p["target_popularity"]) for p in parts])
        out[f"popularity@{k}"] = rec_pop
        out["target_popularity"] = tgt_pop

        def lift(idx: np.ndarray) -> np.ndarray:
            t = tgt_pop[idx].mean(axis=1)
            return np.divide(rec_pop[idx].mean(axis=1), t, out=np.full(len(t), np.nan), where=t > 0)

        if tgt_pop.sum() > 0:
            out[f"popularity_lift@{k}"] = RowStatistic(n, lift)
        total = catalogue.get("total_popularity")
        if n_items and total is not None:

            def info(pop: np.ndarray) -> np.ndarray:
                return -np.log2((pop + 1.0) / (float(total) + float(n_items)))

            out[f"novelty@{k}"] = np.array([info(x).mean() if x.size else 0.0 for x in pops])
            out["target_novelty"] = info(tgt_pop)
    return out
