"""Training objectives: the registry of preference objectives, and S-DPO (softmax DPO), pairwise
DPO, DPO over K negatives, and SFT.

Every objective is a pure function on tensors of summed sequence log-probabilities; none
of them knows about models, tokenisers or Lightning. The successors of S-DPO live beside this
module and are registered here: DMPO and IPO (:mod:`~sdpo_lightning.training.multi_negative`),
DynamicPO (:mod:`~sdpo_lightning.training.dynamicpo`), SimPO and softmax SimPO
(:mod:`~sdpo_lightning.training.reference_free`); ``docs/objectives.md`` gives each formula.
Notation, following the S-DPO paper ("On Softmax Direct Preference Optimization for
Recommendation", NeurIPS 2024):

* ``p`` is the chosen (preferred) item and ``d_1 .. d_K`` are the K rejected (dispreferred) items.
* The implicit reward of a completion ``y`` is
  ``r(y) = beta * (log pi_theta(y|x) - log pi_ref(y|x))``.

Shapes use ``B`` for the batch size and ``K`` for the number of negatives per example.

All preference losses are computed in at least float32: half-precision inputs are upcast,
float64 inputs stay float64. Losses keep their autograd graph; rewards are detached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sdpo_lightning.training.dynamicpo import dynamicpo_loss
from sdpo_lightning.training.multi_negative import dmpo_loss, ipo_k_loss, ipo_loss
from sdpo_lightning.training.objective_base import (
    ObjectiveOutput,
    check_beta,
    compute_dtype,
    implicit_rewards,
)
from sdpo_lightning.training.reference_free import simpo_loss, softmax_simpo_loss

__all__ = [
    "OBJECTIVES",
    "OBJECTIVE_SPECS",
    "ObjectiveOutput",
    "ObjectiveSpec",
    "check_beta",
    "dmpo_loss",
    "dpo_k_loss",
    "dpo_loss",
    "dynamicpo_loss",
    "ipo_k_loss",
    "ipo_loss",
    "preference_loss",
    "reward_metrics",
    "sdpo_loss",
    "sft_loss",
    "simpo_loss",
    "softmax_simpo_loss",
]


def sft_loss(logps_sum: Tensor, n_tokens: Tensor) -> Tensor:
    """Per-example token-mean negative log-likelihood of the completion.

    ``loss_i = -logps_sum_i / max(n_tokens_i, 1)``; the guard keeps an empty completion
    from dividing by zero (its summed log-prob is 0, so its loss is 0).

    Args:
        logps_sum (Tensor): summed log-probabilities of the completion tokens, shape ``(B,)``.
        n_tokens (Tensor): number of completion tokens per example, shape ``(B,)``
            (integer or floating point).

    Returns:
        Tensor: per-example losses, shape ``(B,)``, in at least float32.

    Raises:
        ValueError: if the shapes are not both ``(B,)``.
    """
    if logps_sum.dim() != 1 or n_tokens.shape != logps_sum.shape:
        raise ValueError(
            "sft_loss expects logps_sum and n_tokens of the same shape (B,), got "
            f"{tuple(logps_sum.shape)} and {tuple(n_tokens.shape)}"
        )
    dtype = compute_dtype(logps_sum)
    # (B,)
    denom = n_tokens.to(device=logps_sum.device, dtype=dtype).clamp_min(1.0)
    return -logps_sum.to(dtype) / denom


def sdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> ObjectiveOutput:
    """Softmax DPO (S-DPO) loss of the paper, computed stably.

    With ``g_k = r(d_k) - r(p)``::

        L = -log sigmoid(-log sum_k exp(g_k))
          = -log sigmoid(-logsumexp_k g_k)
          = softplus(logsumexp_k g_k)

    The official implementation evaluates ``log(sum(exp(g)))`` directly, which overflows to
    ``inf`` for ``g_k`` in the hundreds (float32) and yields NaN gradients when every
    ``g_k`` is very negative. Here ``logsumexp`` and ``logsigmoid`` keep both the value and the
    gradient finite for any finite input. For ``K = 1`` the loss equals :func:`dpo_loss`.

    Gradients (``s = sigmoid(logsumexp_k g_k)``, ``w = softmax(g)``)::

        dL/dlog pi(p)   = -beta * s
        dL/dlog pi(d_k) =  beta * s * w_k

    Args:
        policy_chosen_logps (Tensor): log pi_theta(p|x), shape ``(B,)``.
        policy_rejected_logps (Tensor): log pi_theta(d_k|x), shape ``(B, K)``.
        ref_chosen_logps (Tensor): log pi_ref(p|x), shape ``(B,)``.
        ref_rejected_logps (Tensor): log pi_ref(d_k|x), shape ``(B, K)``.
        beta (float): temperature of the implicit reward, ``> 0``.

    Returns:
        ObjectiveOutput: per-example losses ``(B,)`` and detached rewards ``(B,)``, ``(B, K)``.

    Raises:
        ValueError: on malformed shapes or a non-positive ``beta``.
    """
    chosen_rewards, rejected_rewards = implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    # (B, K)
    gaps = rejected_rewards - chosen_rewards.unsqueeze(-1)
    # (B,)
    lse = torch.logsumexp(gaps, dim=-1)
    # (B,)
    losses = -F.logsigmoid(-lse)
    return ObjectiveOutput(losses, chosen_rewards.detach(), rejected_rewards.detach())


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> ObjectiveOutput:
    """Pairwise DPO loss: ``L = -log sigmoid(r(p) - r(d))``.

    Args:
        policy_chosen_logps (Tensor): log pi_theta(p|x), shape ``(B,)``.
        policy_rejected_logps (Tensor): log pi_theta(d|x), shape ``(B,)`` or ``(B, 1)``.
        ref_chosen_logps (Tensor): log pi_ref(p|x), shape ``(B,)``.
        ref_rejected_logps (Tensor): log pi_ref(d|x), same shape as ``policy_rejected_logps``.
        beta (float): temperature of the implicit reward, ``> 0``.

    Returns:
        ObjectiveOutput: per-example losses ``(B,)``, detached rewards ``(B,)`` and ``(B, 1)``.

    Raises:
        ValueError: if more than one negative is given (use ``sdpo`` or ``dpo_k``), or on
            otherwise malformed shapes or a non-positive ``beta``.
    """
    if policy_rejected_logps.dim() == 2 and policy_rejected_logps.shape[-1] != 1:
        raise ValueError(
            "dpo expects exactly one rejected item per example (shape (B,) or (B, 1)), got "
            f"policy_rejected_logps of shape {tuple(policy_rejected_logps.shape)}; "
            "use objective 'sdpo' or 'dpo_k' for K > 1 negatives"
        )
    if policy_rejected_logps.dim() == 1:
        policy_rejected_logps = policy_rejected_logps.unsqueeze(-1)
    if ref_rejected_logps.dim() == 1:
        ref_rejected_logps = ref_rejected_logps.unsqueeze(-1)
    chosen_rewards, rejected_rewards = implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards.squeeze(-1))
    return ObjectiveOutput(losses, chosen_rewards.detach(), rejected_rewards.detach())


def dpo_k_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> ObjectiveOutput:
    """DPO over K negatives ("DPO-Knegative", Table 2 of the S-DPO paper).

    The mean of K pairwise DPO losses: ``L = (1/K) sum_k -log sigmoid(r(p) - r(d_k))``.

    Args:
        policy_chosen_logps (Tensor): log pi_theta(p|x), shape ``(B,)``.
        policy_rejected_logps (Tensor): log pi_theta(d_k|x), shape ``(B, K)``.
        ref_chosen_logps (Tensor): log pi_ref(p|x), shape ``(B,)``.
        ref_rejected_logps (Tensor): log pi_ref(d_k|x), shape ``(B, K)``.
        beta (float): temperature of the implicit reward, ``> 0``.

    Returns:
        ObjectiveOutput: per-example losses ``(B,)`` and detached rewards ``(B,)``, ``(B, K)``.

    Raises:
        ValueError: on malformed shapes or a non-positive ``beta``.
    """
    chosen_rewards, rejected_rewards = implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    # (B, K)
    pairwise = -F.logsigmoid(chosen_rewards.unsqueeze(-1) - rejected_rewards)
    # (B,)
    losses = pairwise.mean(dim=-1)
    return ObjectiveOutput(losses, chosen_rewards.detach(), rejected_rewards.detach())


PreferenceObjective = Callable[..., ObjectiveOutput]
"""``fn(policy_chosen_logps (B,), policy_rejected_logps (B, K), ref_chosen_logps (B,),
ref_rejected_logps (B, K), beta, **options) -> ObjectiveOutput``; the reference arguments of a
reference-free objective are ignored (may be ``None``)."""


class ObjectiveSpec(NamedTuple):
    """How a registered preference objective is called.

    Attributes:
        fn: the objective (:data:`PreferenceObjective`).
        reference: whether it reads the reference log-probs (False: reference-free, the module
            runs no reference pass).
        pairwise: whether it takes exactly one negative (``K = 1``).
        options: the keyword options it takes beyond the common five arguments.
    """

    fn: PreferenceObjective
    reference: bool
    pairwise: bool
    options: tuple[str, ...] = ()


_LENGTHS = ("chosen_lengths", "rejected_lengths")

OBJECTIVE_SPECS: dict[str, ObjectiveSpec] = {
    "sdpo": ObjectiveSpec(sdpo_loss, reference=True, pairwise=False),
    "dpo": ObjectiveSpec(dpo_loss, reference=True, pairwise=True),
    "dpo_k": ObjectiveSpec(dpo_k_loss, reference=True, pairwise=False),
    "dmpo": ObjectiveSpec(dmpo_loss, reference=True, pairwise=False),
    "ipo": ObjectiveSpec(ipo_loss, reference=True, pairwise=True, options=_LENGTHS),
    "ipo_k": ObjectiveSpec(ipo_k_loss, reference=True, pairwise=False, options=_LENGTHS),
    "simpo": ObjectiveSpec(
        simpo_loss, reference=False, pairwise=True, options=(*_LENGTHS, "gamma")
    ),
    "softmax_simpo": ObjectiveSpec(
        softmax_simpo_loss, reference=False, pairwise=False, options=(*_LENGTHS, "gamma")
    ),
    "dynamicpo": ObjectiveSpec(
        dynamicpo_loss, reference=True, pairwise=False, options=("margin", "spread", "clusters")
    ),
}
"""Preference objectives by name, with how each is called (:class:`ObjectiveSpec`)."""

OBJECTIVES: dict[str, PreferenceObjective] = {
    name: spec.fn for name, spec in OBJECTIVE_SPECS.items()
}
"""Preference objectives by name. ``sft`` is separate (:func:`sft_loss`): it needs no negatives."""


def preference_loss(
    name: str,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    beta: float,
    **options: Any,
) -> ObjectiveOutput:
    """Dispatch to the preference objective registered under ``name`` in :data:`OBJECTIVES`.

    Args:
        name (str): a key of :data:`OBJECTIVE_SPECS` (``sdpo``, ``dpo``, ``dpo_k``, ``dmpo``,
            ``ipo``, ``ipo_k``, ``simpo``, ``softmax_simpo``, ``dynamicpo``).
        policy_chosen_logps (Tensor): shape ``(B,)``.
        policy_rejected_logps (Tensor): shape ``(B, K)`` (``(B,)`` or ``(B, 1)`` for the
            pairwise ``dpo``, ``ipo``, ``simpo``).
        ref_chosen_logps (Tensor | None): shape ``(B,)``; ``None`` for a reference-free
            objective.
        ref_rejected_logps (Tensor | None): same shape as ``policy_rejected_logps``.
        beta (float): temperature of the implicit reward, ``> 0``.
        **options: the objective's own keyword options (its spec's ``options``, e.g. the token
            counts and ``gamma`` of SimPO).

    Returns:
        ObjectiveOutput: see the chosen objective.

    Raises:
        ValueError: if ``name`` is not a registered objective, or an option is not one it takes.
    """
    try:
        spec = OBJECTIVE_SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown preference objective {name!r}; expected one of {sorted(OBJECTIVES)} "
            "(for supervised fine-tuning use sft_loss)"
        ) from None
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"objective {name!r} takes no option {unknown[0]!r}; its options: {list(spec.options)}"
        )
    return spec.fn(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta,
        **options,
    )


@torch.no_grad()
def reward_metrics(
    out: ObjectiveOutput, policy_chosen_logps: Tensor, policy_rejected_logps: Tensor
) -> dict[str, Tensor]:
    """Scalar batch means for logging; the caller prefixes the split (``train/``, ``val/``).

    Keys:
        * ``rewards/chosen``: mean of ``r(p)``.
        * ``rewards/rejected``: mean of ``r(d_k)`` over all examples and all negatives.
        * ``rewards/margins``: mean over examples of ``r(p) - mean_k r(d_k)``.
        * ``rewards/accuracies``: fraction of examples whose ``r(p)`` is strictly greater than
          **every** ``r(d_k)`` (ties count as failures).
        * ``logps/chosen``: mean policy log-prob of the chosen items.
        * ``logps/rejected``: mean policy log-prob over all rejected items.

    Args:
        out (ObjectiveOutput): output of a preference objective; rewards ``(B,)``, ``(B, K)``.
        policy_chosen_logps (Tensor): shape ``(B,)``.
        policy_rejected_logps (Tensor): shape ``(B, K)`` or ``(B,)``.

    Returns:
        dict[str, Tensor]: detached 0-dim tensors.
    """
    chosen = out.chosen_rewards.detach()  # (B,)
    rejected = out.rejected_rewards.detach()  # (B, K)
    if rejected.dim() == 1:
        rejected = rejected.unsqueeze(-1)
    beats_all = (chosen.unsqueeze(-1) > rejected).all(dim=-1)  # (B,)
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected.mean(dim=-1)).mean(),
        "rewards/accuracies": beats_all.to(chosen.dtype).mean(),
        "logps/chosen": policy_chosen_logps.detach().to(chosen.dtype).mean(),
        "logps/rejected": policy_rejected_logps.detach().to(chosen.dtype).mean(),
    }
