"""Distributed-safe evaluation metrics of the protocols (generation, ranking and all-item;
definitions: README.md, "Metrics", and ``docs/all_item.md``).

* :class:`GenerationMetrics` — paper protocol: HR@1 = correct / all,
  ValidRatio = valid / all, and LLaRA's HR@1 given valid = correct / valid.
* :class:`RankingMetrics` — candidates scored by completion log-likelihood, evaluated
  with ``torchmetrics`` retrieval metrics (HR@1/3/5, NDCG@5/10, MRR).
* :class:`AllItemMetrics` — the all-item protocol's logged per-example means (HR@k, NDCG@k,
  MRR@N over the top N of the whole catalogue; ValidRatio of free generation); the set-level
  ones (coverage, popularity lift) are in the summary (:mod:`.all_item_metrics`).

**Ties** are broken *against the target* (pessimistic): the target's rank is
``1 + #{other candidates with score >= target score}``. Ties among non-target
candidates are broken by candidate order (earlier first); they never affect any metric
because only the target is relevant. NaN scores are rejected; ``-inf`` is allowed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "AllItemMetrics",
    "GenerationMetrics",
    "RankingMetrics",
    "rank_of_target",
    "tie_broken_scores",
]


class GenerationMetrics(Metric):
    """HR@1, ValidRatio and HR@1-given-valid over generated answers.

    States are sums reduced with ``"sum"``, so values are exact across processes.
    ``hr@1_given_valid`` is 0.0 when no answer was valid.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("correct", "valid", "total"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Tensor, valid: Tensor) -> None:
        """Add a batch.

        Args:
            correct: (B,) bool, parsed answer equals the target (implies valid).
            valid: (B,) bool, answer names exactly one candidate.
        """
        correct, valid = correct.bool().reshape(-1), valid.bool().reshape(-1)
        if correct.shape != valid.shape:
            shapes = f"correct {tuple(correct.shape)}, valid {tuple(valid.shape)}"
            raise ValueError(f"shapes differ: {shapes}")
        if bool((correct & ~valid).any()):
            raise ValueError("an answer is marked correct but not valid")
        self.correct += correct.sum()
        self.valid += valid.sum()
        self.total += correct.numel()

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"hr@1", "valid_ratio", "hr@1_given_valid"}`` as float scalars."""
        total = self.total.clamp_min(1).double()
        given_valid = self.correct.double() / self.valid.clamp_min(1).double()
        return {
            "hr@1": (self.correct.double() / total).float(),
            "valid_ratio": (self.valid.double() / total).float(),
            "hr@1_given_valid": given_valid.float(),
        }


def _check(scores: Tensor, target_index: Tensor) -> None:
    if scores.ndim != 2 or target_index.shape != scores.shape[:1]:
        raise ValueError(
            f"expected scores (B, M) and target_index (B,), got {tuple(scores.shape)} "
            f"and {tuple(target_index.shape)}"
        )
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN")
    if bool(((target_index < 0) | (target_index >= scores.shape[1])).any()):
        raise ValueError(f"target_index out of range [0, {scores.shape[1]})")


def rank_of_target(scores: Tensor, target_index: Tensor) -> Tensor:
    """1-based rank of the target among its candidates, ties against the target.

    Args:
        scores: (B, M) candidate scores, higher is better.
        target_index: (B,) long, position of the target in each row.

    Returns:
        (B,) long ranks in ``[1, M]``.
    """
    _check(scores, target_index)
    target_score = scores.gather(1, target_index[:, None].long())  # (B, 1)
    others_ge = (scores >= target_score).sum(dim=1) - 1  # (B,) excluding the target itself
    return (others_ge + 1).long()


def tie_broken_scores(scores: Tensor, target_index: Tensor) -> Tensor:
    """Replace scores by distinct ones inducing the pessimistic, deterministic order.

    Order: score descending; among equal scores the target comes last, the others
    keep candidate order. The result is ``M - position`` (float), so the best
    candidate gets ``M`` and the target gets ``M + 1 - rank_of_target``.

    Args:
        scores: (B, M) candidate scores.
        target_index: (B,) long.

    Returns:
        (B, M) float scores without ties.
    """
    _check(scores, target_index)
    b, m = scores.shape
    idx = torch.arange(m, device=scores.device)
    is_target = idx[None, :] == target_index[:, None].long()  # (B, M)
    s_i, s_j = scores[:, :, None], scores[:, None, :]  # (B, M, 1), (B, 1, M): i beats j?
    t_i, t_j = is_target[:, :, None], is_target[:, None, :]
    earlier = (idx[:, None] < idx[None, :])[None]  # (1, M, M)
    before_on_tie = (t_j & ~t_i) | (~t_i & ~t_j & earlier)  # (B, M, M)
    beats = (s_i > s_j) | ((s_i == s_j) & before_on_tie)
    position = beats.sum(dim=1)  # (B, M), 0-based position of candidate j
    return (m - position).float()


class RankingMetrics(Metric):
    """HR@1/3/5, NDCG@5/10 and MRR of the target among scored candidates.

    Keeps the (tie-broken) scores and one query index per example as ``cat`` states
    (gathered once across processes at ``compute``), then evaluates them with
    ``torchmetrics.retrieval`` metrics. Query indexes are made globally unique as
    ``local_counter * world_size + rank`` unless passed explicitly (then they must be
    unique across all processes). ``M`` may differ between updates.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("indexes", default=[], dist_reduce_fx="cat")
        self.add_state("seen", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        no_sync = {"sync_on_compute": False}
        self.retrieval = torch.nn.ModuleDict(
            {
                "hr@1": RetrievalHitRate(top_k=1, **no_sync),
                "hr@3": RetrievalHitRate(top_k=3, **no_sync),
                "hr@5": RetrievalHitRate(top_k=5, **no_sync),
                "ndcg@5": RetrievalNormalizedDCG(top_k=5, **no_sync),
                "ndcg@10": RetrievalNormalizedDCG(top_k=10, **no_sync),
                "mrr": RetrievalMRR(**no_sync),
            }
        )
        self._local_count = 0

    def update(self, scores: Tensor, target_index: Tensor, indexes: Tensor | None = None) -> None:
        """Add a batch.

        Args:
            scores: (B, M) candidate scores (e.g. completion log-likelihoods).
            target_index: (B,) long, position of the target in each row.
            indexes: optional (B,) long globally unique example ids.
        """
        preds = tie_broken_scores(scores, target_index)  # (B, M)
        b, m = preds.shape
        if indexes is None:
            world, rank = 1, 0
            if dist.is_available() and dist.is_initialized():
                world, rank = dist.get_world_size(), dist.get_rank()
            local = torch.arange(self._local_count, self._local_count + b, device=preds.device)
            indexes = local * world + rank
            self._local_count += b
        target = torch.zeros_like(preds, dtype=torch.bool)
        target[torch.arange(b, device=preds.device), target_index.long()] = True
        self.preds.append(preds.reshape(-1))  # (B*M,)
        self.target.append(target.reshape(-1))
        self.indexes.append(indexes.long().to(preds.device).repeat_interleave(m))
        self.seen += b

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"hr@1","hr@3","hr@5","ndcg@5","ndcg@10","mrr"}`` float scalars."""
        if int(self.seen) == 0:
            return {name: torch.tensor(0.0, device=self.seen.device) for name in self.retrieval}
        preds, target = dim_zero_cat(self.preds), dim_zero_cat(self.target)
        indexes = dim_zero_cat(self.indexes)
        out = {}
        for name, metric in self.retrieval.items():
            metric.reset()
            metric.update(preds, target, indexes=indexes)
            out[name] = metric.compute().float()
            metric.reset()
        return out

    def reset(self) -> None:
        """Reset states and the local query counter."""
        super().reset()
        self._local_count = 0


class AllItemMetrics(Metric):
    """HR@k, NDCG@k and MRR of the target over the top ``N`` of the whole catalogue, and the
    ValidRatio / HR@1 of free generation (the all-item protocol, ``docs/all_item.md``).

    Args:
        top_n: ``N``, the items returned per row: HR@k for k in (1, 5, 10, 20) and NDCG@k for k
            in (5, 10, 20) up to ``N``; MRR is over the top ``N`` (a target outside counts 0).

    States are sums reduced with ``"sum"``, so values are exact across processes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, top_n: int, **kwargs) -> None:
        super().__init__(**kwargs)
        from sdpo_lightning.evaluation.all_item_metrics import HR_KS, NDCG_KS

        self.top_n = top_n
        self.names = (
            [f"hr@{k}" for k in HR_KS if k <= top_n]
            + [f"ndcg@{k}" for k in NDCG_KS if k <= top_n]
            + ["mrr"]
        )
        for name in (*self.names, "valid", "correct", "generated"):
            self.add_state(
                name.replace("@", "_"),
                default=torch.tensor(0.0, dtype=torch.float64),
                dist_reduce_fx="sum",
            )
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, rank: Tensor, valid: Tensor | None = None, correct: Tensor | None = None
    ) -> None:
        """Add a batch.

        Args:
            rank: ``(B,)`` long, the target's 1-based rank in the top ``N``, 0 when outside.
            valid: ``(B,)`` bool, free generation named one catalogue title (optional).
            correct: ``(B,)`` bool, it named the target (implies valid).
        """
        rank = rank.reshape(-1).double()
        hit = (rank > 0) & (rank <= self.top_n)
        gain = torch.where(hit, 1.0 / torch.log2(rank + 1.0), torch.zeros_like(rank))
        for name in self.names:
            k = self.top_n if name == "mrr" else int(name.split("@")[1])
            within = hit & (rank <= k)
            value = (
                torch.where(within, 1.0 / rank.clamp_min(1.0), torch.zeros_like(rank))
                if name == "mrr"
                else within.double()
                if name.startswith("hr")
                else torch.where(within, gain, torch.zeros_like(rank))
            )
            state = name.replace("@", "_")
            setattr(self, state, getattr(self, state) + value.sum())
        if valid is not None and correct is not None:
            self.valid += valid.reshape(-1).double().sum()
            self.correct += correct.reshape(-1).double().sum()
            self.generated += rank.numel()
        self.total += rank.numel()

    def compute(self) -> dict[str, Tensor]:
        """``{"hr@1", ..., "mrr"}`` and, with free generation, ``valid_ratio`` and
        ``generation_hr@1``, as float scalars."""
        total = self.total.clamp_min(1).double()
        out = {name: (getattr(self, name.replace("@", "_")) / total).float() for name in self.names}
        if float(self.generated) > 0:
            out["valid_ratio"] = (self.valid / self.generated).float()
            out["generation_hr@1"] = (self.correct / self.generated).float()
        return out
