"""Reference-based objectives over K negatives besides S-DPO: DMPO and IPO.

Notation as in :mod:`sdpo_lightning.training.objectives`: chosen item ``p``, negatives
``d_1 .. d_K``, log-ratio ``h(y) = log pi_theta(y|x) - log pi_ref(y|x)`` and implicit reward
``r(y) = beta * h(y)``. Inputs are summed completion log-probabilities: policy and reference,
chosen ``(B,)`` and rejected ``(B, K)``. Every function returns an
:class:`~sdpo_lightning.training.objective_base.ObjectiveOutput` (per-example losses ``(B,)``
attached to the graph, detached rewards ``(B,)`` and ``(B, K)``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from sdpo_lightning.training.objective_base import (
    ObjectiveOutput,
    check_beta,
    check_lengths,
    implicit_rewards,
)

__all__ = ["dmpo_loss", "ipo_k_loss", "ipo_loss"]


def dmpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> ObjectiveOutput:
    """DMPO, Direct Multi-Preference Optimization (arXiv 2405.16127): the chosen item against
    the **mean reward** of the K negatives::

        L = -log sigmoid( r(p) - (1/K) sum_k r(d_k) )
          = softplus( (1/K) sum_k r(d_k) - r(p) )

    The rewards (equivalently the log-ratios ``h``, since ``beta`` is shared) are averaged,
    not the probabilities: this is not ``-log sigmoid(r(p) - r(mean of pi(d_k)))``. With
    ``K = 1`` it is exactly pairwise DPO. ``logsigmoid`` keeps loss and gradient finite at any
    finite margin.

    Gradients (``s = sigmoid((1/K) sum_k r(d_k) - r(p))``)::

        dL/dlog pi(p)   = -beta * s
        dL/dlog pi(d_k) =  beta * s / K

    Args:
        policy_chosen_logps (Tensor): log pi_theta(p|x), shape ``(B,)``.
        policy_rejected_logps (Tensor): log pi_theta(d_k|x), shape ``(B, K)``.
        ref_chosen_logps (Tensor): log pi_ref(p|x), shape ``(B,)``.
        ref_rejected_logps (Tensor): log pi_ref(d_k|x), shape ``(B, K)``.
        beta (float): temperature of the implicit reward, ``> 0``.

    Returns:
        ObjectiveOutput: losses ``(B,)``, detached rewards ``(B,)`` and ``(B, K)``.

    Raises:
        ValueError: on malformed shapes or a non-positive ``beta``.
    """
    chosen_rewards, rejected_rewards = implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards.mean(dim=-1))
    return ObjectiveOutput(losses, chosen_rewards.detach(), rejected_rewards.detach())


def ipo_k_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    *,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> ObjectiveOutput:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", Eq. 17) averaged over K negatives: a squared regression of each log-ratio
    margin onto the target ``1 / (2 beta)`` (``beta`` is the paper's regulariser ``tau``)::

        m_k = h(p) - h(d_k)
        L   = (1/K) sum_k ( m_k - 1/(2 beta) )^2

    With token counts (``chosen_lengths`` ``|p|``, ``rejected_lengths`` ``|d_k|``) the margin
    uses token-mean log-ratios, ``m_k = h(p)/|p| - h(d_k)/|d_k|``: the form of TRL's
    ``loss_type="ipo"``, which its authors confirmed with IPO's; without them, the paper's
    sequence-level margin. ``beta`` does not scale the margin inside the square. With ``K = 1``
    it is :func:`ipo_loss`. The loss is a polynomial, finite with its gradient
    ``dL/dm_k = 2 (m_k - 1/(2 beta)) / K`` at any finite margin.

    Args:
        policy_chosen_logps (Tensor): log pi_theta(p|x), shape ``(B,)``.
        policy_rejected_logps (Tensor): log pi_theta(d_k|x), shape ``(B, K)``.
        ref_chosen_logps (Tensor): log pi_ref(p|x), shape ``(B,)``.
        ref_rejected_logps (Tensor): log pi_ref(d_k|x), shape ``(B, K)``.
        beta (float): IPO's ``tau``, ``> 0``; the target margin is ``1/(2 beta)``.
        chosen_lengths (Tensor | None): token counts ``(B,)`` of the chosen completions;
            give both counts or neither.
        rejected_lengths (Tensor | None): token counts ``(B, K)`` of the negatives.

    Returns:
        ObjectiveOutput: losses ``(B,)``; detached rewards ``beta * h`` (token-mean ``h`` when
        counts are given), ``(B,)`` and ``(B, K)``.

    Raises:
        ValueError: on malformed shapes, a non-positive ``beta``, or only one of the counts.
    """
    beta = check_beta(beta)
    # log-ratios h: (B,), (B, K)
    chosen_h, rejected_h = implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, 1.0
    )
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("give both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        n_chosen, n_rejected = check_lengths(
            chosen_lengths, rejected_lengths, *rejected_h.shape, rejected_h.dtype, rejected_h.device
        )
        chosen_h = chosen_h / n_chosen  # (B,)
        rejected_h = rejected_h / n_rejected  # (B, K)
    # (B, K)
    margins = chosen_h.unsqueeze(-1) - rejected_h
    # (B,)
    losses = (margins - 1.0 / (2.0 * beta)).square().mean(dim=-1)
    chosen_rewards, rejected_rewards = beta * chosen_h, beta * rejected_h
    return ObjectiveOutput(losses, chosen_rewards.detach(), rejected_rewards.detach())


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    *,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> ObjectiveOutput:
    """Pairwise IPO: ``L = (h(p) - h(d) - 1/(2 beta))^2`` (token-mean log-ratios when token
    counts are given; see :func:`ipo_k_loss`, which this is with ``K = 1``).

    Args:
        policy_chosen_logps (Tensor): log pi_theta(p|x), shape ``(B,)``.
        policy_rejected_logps (Tensor): log pi_theta(d|x), shape ``(B,)`` or ``(B, 1)``.
        ref_chosen_logps (Tensor): log pi_ref(p|x), shape ``(B,)``.
        ref_rejected_logps (Tensor): log pi_ref(d|x), same shape as ``policy_rejected_logps``.
        beta (float): IPO's ``tau``, ``> 0``.
        chosen_lengths (Tensor | None): token counts ``(B,)``; both counts or neither.
        rejected_lengths (Tensor | None): token counts, shape ``(B,)`` or ``(B, 1)``.

    Returns:
        ObjectiveOutput: losses ``(B,)``, detached rewards ``(B,)`` and ``(B, 1)``.

    Raises:
        ValueError: if more than one negative is given (use ``ipo_k``), or as :func:`ipo_k_loss`.
    """
    if policy_rejected_logps.dim() == 2 and policy_rejected_logps.shape[-1] != 1:
        raise ValueError(
            "ipo expects exactly one rejected item per example (shape (B,) or (B, 1)), got "
            f"policy_rejected_logps of shape {tuple(policy_rejected_logps.shape)}; use objective "
            "'ipo_k' for K > 1 negatives"
        )

    def unsq(t: Tensor | None) -> Tensor | None:
        return t.unsqueeze(-1) if t is not None and t.dim() == 1 else t

    return ipo_k_loss(
        policy_chosen_logps,
        unsq(policy_rejected_logps),
        ref_chosen_logps,
        unsq(ref_rejected_logps),
        beta,
        chosen_lengths=chosen_lengths,
        rejected_lengths=unsq(rejected_lengths),
    )
