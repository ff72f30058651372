"""Reference-free objectives: SimPO and its softmax form over K negatives.

SimPO (Meng, Xia and Chen, "SimPO: Simple Preference Optimization with a Reference-Free
Reward", NeurIPS 2024) replaces DPO's log-ratio by the **length-normalised** policy
log-likelihood and asks the chosen item to win by a target margin ``gamma``::

    r(y) = (beta / |y|) * log pi_theta(y|x)          (|y|: tokens of the completion y)

No reference model is involved: the module skips the reference pass (live or cached) for
these objectives. They take the token counts explicitly (``chosen_lengths`` ``(B,)``,
``rejected_lengths`` ``(B, K)``); pass counts of 1 for SimPO's "without length normalisation"
ablation (``r(y) = beta * log pi_theta(y|x)``). The reference arguments of the common call
shape are accepted and ignored (``None`` is fine).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sdpo_lightning.training.objective_base import (
    ObjectiveOutput,
    check_beta,
    check_lengths,
    check_logps,
    compute_dtype,
)

__all__ = ["simpo_loss", "simpo_rewards", "softmax_simpo_loss"]


def check_gamma(gamma: float) -> float:
    """SimPO's target margin as a float; raises ``ValueError`` unless finite."""
    gamma = float(gamma)
    if not math.isfinite(gamma):
        raise ValueError(f"gamma must be a finite number, got {gamma!r}")
    return gamma


def simpo_rewards(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    beta: float,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
) -> tuple[Tensor, Tensor]:
    """SimPO's rewards ``r(y) = beta * log pi_theta(y|x) / |y|``: ``(B,)`` and ``(B, K)``,
    attached to the graph, in at least float32.

    Raises:
        ValueError: on malformed shapes or counts, or a non-positive ``beta``.
    """
    beta = check_beta(beta)
    batch, n_neg = check_logps(policy_chosen_logps, policy_rejected_logps)
    dtype = compute_dtype(policy_chosen_logps, policy_rejected_logps)
    n_chosen, n_rejected = check_lengths(
        chosen_lengths, rejected_lengths, batch, n_neg, dtype, policy_chosen_logps.device
    )
    chosen = beta * policy_chosen_logps.to(dtype) / n_chosen  # (B,)
    rejected = beta * policy_rejected_logps.to(dtype) / n_rejected  # (B, K)
    return chosen, rejected


def softmax_simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    beta: float,
    *,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    gamma: float = 0.5,
) -> ObjectiveOutput:
    """Softmax SimPO: S-DPO's softmax over K negatives with SimPO's reference-free,
    length-normalised reward and target margin (a reference-free S-DPO)::

        r(y) = (beta / |y|) log pi_theta(y|x)
        L    = -log sigmoid( -log sum_k exp( r(d_k) - r(p) + gamma ) )
             = softplus( gamma + logsumexp_k ( r(d_k) - r(p) ) )

    The margin enters once, inside every term of the sum, so the chosen item must beat the
    soft maximum of the negatives by ``gamma``. This is the ``loss_type="simpo"`` of RecPO's
    ``rec_cpo_trainer.py`` (``ln=True``, no rating margin); with ``K = 1`` it is SimPO,
    ``-log sigmoid(r(p) - r(d) - gamma)`` (:func:`simpo_loss`). Computed with ``logsumexp``
    and ``softplus``: finite, with a finite gradient, at any finite input.

    Gradients (``s = sigmoid(gamma + logsumexp_k g_k)``, ``g_k = r(d_k) - r(p)``,
    ``w = softmax(g)``)::

        dL/dlog pi(p)   = -beta * s / |p|
        dL/dlog pi(d_k) =  beta * s * w_k / |d_k|

    Args:
        policy_chosen_logps (Tensor): summed log pi_theta(p|x), shape ``(B,)``.
        policy_rejected_logps (Tensor): summed log pi_theta(d_k|x), shape ``(B, K)``.
        ref_chosen_logps: ignored (reference-free); may be ``None``.
        ref_rejected_logps: ignored (reference-free); may be ``None``.
        beta (float): reward scale, ``> 0`` (SimPO's defaults: 2.0 to 10).
        chosen_lengths (Tensor): token counts ``|p|``, shape ``(B,)`` (clamped to >= 1).
        rejected_lengths (Tensor): token counts ``|d_k|``, shape ``(B, K)``.
        gamma (float): target reward margin (SimPO's code sets ``gamma = beta *
            gamma_beta_ratio``; its default 2.0 * 0.25 = 0.5).

    Returns:
        ObjectiveOutput: losses ``(B,)``; detached rewards ``r(p)`` ``(B,)`` and ``r(d_k)``
        ``(B, K)`` (the reference-free rewards above).

    Raises:
        ValueError: on malformed shapes or counts, a non-positive ``beta`` or a non-finite
            ``gamma``.
    """
    gamma = check_gamma(gamma)
    chosen, rejected = simpo_rewards(
        policy_chosen_logps, policy_rejected_logps, beta, chosen_lengths, rejected_lengths
    )
    # (B,)
    lse = torch.logsumexp(rejected - chosen.unsqueeze(-1), dim=-1)
    losses = F.softplus(lse + gamma)
    return ObjectiveOutput(losses, chosen.detach(), rejected.detach())


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    beta: float,
    *,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    gamma: float = 0.5,
) -> ObjectiveOutput:
    """SimPO (pairwise)::

        r(y) = (beta / |y|) log pi_theta(y|x)
        L    = -log sigmoid( r(p) - r(d) - gamma )

    As princeton-nlp/SimPO's ``simpo_loss`` computes it (``beta * (avg_logp(p) - avg_logp(d)
    - gamma_beta_ratio)`` with ``gamma = beta * gamma_beta_ratio``, sigmoid loss, no label
    smoothing).

    Args:
        policy_chosen_logps (Tensor): summed log pi_theta(p|x), shape ``(B,)``.
        policy_rejected_logps (Tensor): summed log pi_theta(d|x), shape ``(B,)`` or ``(B, 1)``.
        ref_chosen_logps: ignored (reference-free); may be ``None``.
        ref_rejected_logps: ignored (reference-free); may be ``None``.
        beta (float): reward scale, ``> 0``.
        chosen_lengths (Tensor): token counts ``|p|``, shape ``(B,)``.
        rejected_lengths (Tensor): token counts ``|d|``, shape ``(B,)`` or ``(B, 1)``.
        gamma (float): target reward margin.

    Returns:
        ObjectiveOutput: losses ``(B,)``, detached rewards ``(B,)`` and ``(B, 1)``.

    Raises:
        ValueError: if more than one negative is given (use ``softmax_simpo``), or as
            :func:`softmax_simpo_loss`.
    """
    if policy_rejected_logps.dim() == 2 and policy_rejected_logps.shape[-1] != 1:
        raise ValueError(
            "simpo expects exactly one rejected item per example (shape (B,) or (B, 1)), got "
            f"policy_rejected_logps of shape {tuple(policy_rejected_logps.shape)}; use objective "
            "'softmax_simpo' for K > 1 negatives"
        )
    if policy_rejected_logps.dim() == 1:
        policy_rejected_logps = policy_rejected_logps.unsqueeze(-1)
    if rejected_lengths is not None and rejected_lengths.dim() == 1:
        rejected_lengths = rejected_lengths.unsqueeze(-1)
    gamma = check_gamma(gamma)
    chosen, rejected = simpo_rewards(
        policy_chosen_logps, policy_rejected_logps, beta, chosen_lengths, rejected_lengths
    )
    # (B,)
    losses = -F.logsigmoid(chosen - rejected.squeeze(-1) - gamma)
    return ObjectiveOutput(losses, chosen.detach(), rejected.detach())
