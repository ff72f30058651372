"""DynamicPO (arXiv 2605.00327): DMPO over the negatives near the decision boundary, with a
temperature per negative.

Read from the authors' code (``xingyuHuxingyu/DynamicPO`` at ``1d82aa3``,
``trainer/dynamicpo_trainer.py``, ``preference_loss`` with
``filter_mode="DMPO_hard_negative_dynamic_beta_fixed_margin"``); the paper's method section
was not available to us, so its two mechanisms are implemented as that code computes them:

1. **Dynamic boundary negative selection.** On the policy's summed log-probabilities
   ``l(y) = log pi_theta(y|x)`` (not the rewards), the *boundary* negatives of an example are
   those the policy already likes at least as much as the chosen item,
   ``B = {k : l(d_k) >= l(p)}``. When there is none, the K values ``l(d_k)`` are split into
   ``min(3, K)`` groups by one-dimensional k-means and ``B`` is the group with the highest mean.
   The other negatives are the *discriminative* ones ``D`` (``D = B`` when ``B`` holds all K).
2. **Dual-margin dynamic beta.** For ``j`` in ``B``, with the positive-to-boundary gap
   ``a_j = l(p) - l(d_j)`` and the boundary-to-discriminative gap
   ``c_j = l(d_j) - mean_{i in D} l(d_i)``::

       beta_j = beta * (1 + s * tanh( (a_j - c_j - m) / (|a_j| + |c_j|) ))

   with the code's constants ``m = 2`` (``margin``) and ``s = 0.5`` (``spread``), so
   ``beta_j`` lies in ``(beta (1 - s), beta (1 + s))``. It is a constant of the step: no
   gradient flows through it or through the selection.

The loss is DMPO over ``B`` with those temperatures, ``h(y) = log pi_theta(y|x) -
log pi_ref(y|x)``::

    L = -log sigmoid( (1/|B|) sum_{j in B} beta_j * (h(p) - h(d_j)) )

Differences from the authors' code, none of which changes a value it computes without error:
the k-means step is the exact optimum of the one-dimensional problem (the best split of the
sorted values into contiguous groups) where the code runs scikit-learn's ``KMeans(n_clusters=3,
random_state=42)``, whose Lloyd iterations can stop at a local optimum; it also works for
``K < 3`` (the code raises); ``|a_j| + |c_j| = 0`` gives ``tanh(-inf)`` rather than NaN.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sdpo_lightning.training.objective_base import (
    ObjectiveOutput,
    check_beta,
    implicit_rewards,
)

__all__ = ["boundary_negatives", "dynamic_betas", "dynamicpo_loss", "top_cluster"]


def top_cluster(values: Tensor, clusters: int = 3) -> Tensor:
    """The members of the highest-mean group of an optimal one-dimensional k-means of each row.

    Each row of ``values`` is split into ``c = min(clusters, K)`` groups minimising the summed
    squared distance to the group means; in one dimension an optimal split is contiguous in
    sorted order, so every choice of ``c - 1`` cut points is tried (``C(K-1, c-1)`` of them;
    171 for ``K = 19``). The first best split in lexicographic cut order wins ties.

    Args:
        values (Tensor): shape ``(N, K)``; read detached, in float64.
        clusters (int): the number of groups, ``>= 1``.

    Returns:
        Tensor: bool ``(N, K)``, True for the members of each row's top group.
    """
    if clusters < 1:
        raise ValueError(f"clusters must be >= 1, got {clusters}")
    n_rows, k = values.shape
    c = min(clusters, k)
    if c == 1 or n_rows == 0:
        return torch.ones_like(values, dtype=torch.bool)
    x, order = values.detach().to(torch.float64).sort(dim=-1)  # (N, K) ascending
    zero = x.new_zeros(n_rows, 1)
    s1 = torch.cat([zero, x.cumsum(-1)], dim=-1)  # (N, K + 1)
    s2 = torch.cat([zero, x.square().cumsum(-1)], dim=-1)
    cuts = torch.tensor(list(itertools.combinations(range(1, k), c - 1)), device=x.device)
    bounds = torch.cat(
        [cuts.new_zeros(len(cuts), 1), cuts, cuts.new_full((len(cuts), 1), k)], dim=1
    )  # (P, c + 1)
    cost = x.new_zeros(n_rows, len(cuts))  # (N, P)
    for seg in range(c):
        lo, hi = bounds[:, seg], bounds[:, seg + 1]  # (P,)
        total = s1[:, hi] - s1[:, lo]
        cost += (s2[:, hi] - s2[:, lo]) - total.square() / (hi - lo).to(x.dtype)
    start = bounds[cost.argmin(dim=-1), c - 1]  # (N,) first sorted position of the top group
    in_top = torch.arange(k, device=x.device).unsqueeze(0) >= start.unsqueeze(-1)  # sorted order
    return torch.zeros_like(in_top).scatter(1, order, in_top)


def boundary_negatives(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, clusters: int = 3
) -> tuple[Tensor, Tensor]:
    """DynamicPO's boundary and discriminative negatives of each example.

    Args:
        policy_chosen_logps (Tensor): ``l(p)``, shape ``(B,)``.
        policy_rejected_logps (Tensor): ``l(d_k)``, shape ``(B, K)``.
        clusters (int): k-means groups of the fallback (the code's 3).

    Returns:
        tuple[Tensor, Tensor]: bool masks ``(B, K)``: boundary ``B`` (never empty) and
        discriminative ``D`` (the rest, or ``B`` itself when that is all K).
    """
    chosen = policy_chosen_logps.detach().unsqueeze(-1)
    rejected = policy_rejected_logps.detach()
    boundary = rejected >= chosen  # (B, K)
    none = ~boundary.any(dim=-1)
    if none.any():
        boundary[none] = top_cluster(rejected[none], clusters)
    discriminative = ~boundary
    everything = ~discriminative.any(dim=-1)
    discriminative[everything] = True
    return boundary, discriminative


def dynamic_betas(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    beta: float,
    boundary: Tensor,
    discriminative: Tensor,
    margin: float = 2.0,
    spread: float = 0.5,
) -> Tensor:
    """The per-negative temperatures ``beta_j`` of DynamicPO (module docstring), detached.

    Args:
        policy_chosen_logps (Tensor): ``l(p)``, shape ``(B,)``.
        policy_rejected_logps (Tensor): ``l(d_k)``, shape ``(B, K)``.
        beta (float): the base temperature, ``> 0``.
        boundary (Tensor): bool ``(B, K)`` from :func:`boundary_negatives`.
        discriminative (Tensor): bool ``(B, K)`` from :func:`boundary_negatives`.
        margin (float): ``m``, the fixed margin subtracted from ``a_j - c_j``.
        spread (float): ``s`` in ``[0, 1)``, the largest relative change of ``beta``.

    Returns:
        Tensor: ``(B, K)``, ``beta_j`` on boundary negatives and 0 elsewhere, in at least
        float32.
    """
    dtype = torch.promote_types(policy_rejected_logps.dtype, torch.float32)
    chosen = policy_chosen_logps.detach().to(dtype).unsqueeze(-1)  # (B, 1)
    rejected = policy_rejected_logps.detach().to(dtype)  # (B, K)
    disc = discriminative.to(dtype)
    disc_mean = (rejected * disc).sum(-1, keepdim=True) / disc.sum(-1, keepdim=True)  # (B, 1)
    a = chosen - rejected  # positive-to-boundary gap
    c = rejected - disc_mean  # boundary-to-discriminative gap
    denom = (a.abs() + c.abs()).clamp_min(torch.finfo(dtype).tiny)
    betas = beta * (1.0 + spread * torch.tanh((a - c - margin) / denom))
    return torch.where(boundary, betas, torch.zeros_like(betas))


def dynamicpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    *,
    margin: float = 2.0,
    spread: float = 0.5,
    clusters: int = 3,
) -> ObjectiveOutput:
    """DynamicPO's loss (module docstring)::

        L = -log sigmoid( (1/|B|) sum_{j in B} beta_j * (h(p) - h(d_j)) )

    With ``spread = 0`` every ``beta_j`` is ``beta`` and the loss is DMPO over the boundary
    negatives; when those are all K negatives it is :func:`~sdpo_lightning.training.
    multi_negative.dmpo_loss` itself. ``logsigmoid`` keeps it finite, with its gradient, at
    any finite margin.

    Args:
        policy_chosen_logps (Tensor): log pi_theta(p|x), shape ``(B,)``.
        policy_rejected_logps (Tensor): log pi_theta(d_k|x), shape ``(B, K)``.
        ref_chosen_logps (Tensor): log pi_ref(p|x), shape ``(B,)``.
        ref_rejected_logps (Tensor): log pi_ref(d_k|x), shape ``(B, K)``.
        beta (float): base temperature, ``> 0``.
        margin (float): ``m`` of the beta adjustment (the code's fixed 2.0).
        spread (float): ``s`` in ``[0, 1)`` (the code's 0.5).
        clusters (int): k-means groups when no negative reaches the chosen item (the code's 3).

    Returns:
        ObjectiveOutput: losses ``(B,)``; detached rewards ``beta * h`` with the base ``beta``
        (as the authors log them), ``(B,)`` and ``(B, K)``.

    Raises:
        ValueError: on malformed shapes, a non-positive ``beta``, a non-finite ``margin`` or a
            ``spread`` outside ``[0, 1)``.
    """
    beta = check_beta(beta)
    if not math.isfinite(margin):
        raise ValueError(f"margin must be finite, got {margin!r}")
    if not 0.0 <= spread < 1.0:
        raise ValueError(f"spread must be in [0, 1), got {spread!r}")
    # log-ratios h: (B,), (B, K)
    chosen_h, rejected_h = implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, 1.0
    )
    boundary, discriminative = boundary_negatives(
        policy_chosen_logps, policy_rejected_logps, clusters
    )
    betas = dynamic_betas(
        policy_chosen_logps, policy_rejected_logps, beta, boundary, discriminative, margin, spread
    ).to(rejected_h.dtype)  # (B, K)
    n_boundary = boundary.sum(dim=-1).to(rejected_h.dtype)  # (B,) >= 1
    # (B,): masked terms have beta_j = 0
    logits = (betas * (chosen_h.unsqueeze(-1) - rejected_h)).sum(dim=-1) / n_boundary
    losses = -F.logsigmoid(logits)
    return ObjectiveOutput(losses, (beta * chosen_h).detach(), (beta * rejected_h).detach())
