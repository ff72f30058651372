"""What every preference objective shares: the output type, the checks of its inputs, and the
implicit reward ``r(y) = beta * (log pi_theta(y|x) - log pi_ref(y|x))``.

The objectives themselves live in :mod:`sdpo_lightning.training.objectives` (the registry and
S-DPO / DPO / DPO-K), :mod:`~sdpo_lightning.training.multi_negative` (DMPO, IPO),
:mod:`~sdpo_lightning.training.dynamicpo` and :mod:`~sdpo_lightning.training.reference_free`
(SimPO). Shapes: ``B`` examples, ``K`` negatives each.

Losses are computed in at least float32: half-precision inputs are upcast, float64 stays float64.
"""

from __future__ import annotations

from functools import reduce
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "ObjectiveOutput",
    "check_beta",
    "check_lengths",
    "check_logps",
    "compute_dtype",
    "implicit_rewards",
]


class ObjectiveOutput(NamedTuple):
    """Result of a preference objective.

    Attributes:
        losses (Tensor): per-example losses, shape ``(B,)``, still attached to the autograd
            graph. Reduce (e.g. ``.mean()``) before calling ``backward``.
        chosen_rewards (Tensor): detached implicit rewards ``r(p)`` of the chosen items,
            shape ``(B,)``.
        rejected_rewards (Tensor): detached implicit rewards ``r(d_k)`` of the rejected items,
            shape ``(B, K)``.
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype to compute in: the promoted input dtype, but never below float32."""
    return reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)


def check_beta(beta: float) -> float:
    """The DPO temperature ``beta`` as a float, checked.

    Args:
        beta: The value to check (anything ``float()`` accepts).

    Returns:
        ``float(beta)``.

    Raises:
        ValueError: unless it is finite and positive.
    """
    beta = float(beta)
    if not (beta > 0.0 and beta < float("inf")):
        raise ValueError(f"beta must be a finite positive number, got {beta!r}")
    return beta


def check_logps(chosen: Tensor, rejected: Tensor, what: str = "policy") -> tuple[int, int]:
    """Check ``chosen`` is ``(B,)`` and ``rejected`` is ``(B, K)`` with ``K >= 1``.

    Returns:
        ``(B, K)``.

    Raises:
        ValueError: naming the argument and its shape.
    """
    if chosen.dim() != 1:
        raise ValueError(f"{what}_chosen_logps must have shape (B,), got {tuple(chosen.shape)}")
    if rejected.dim() != 2:
        raise ValueError(
            f"{what}_rejected_logps must have shape (B, K), got {tuple(rejected.shape)}"
        )
    batch, n_neg = rejected.shape
    if chosen.shape[0] != batch:
        raise ValueError(
            f"batch sizes differ: {what}_chosen_logps has {chosen.shape[0]}, "
            f"{what}_rejected_logps has {batch}"
        )
    if n_neg < 1:
        raise ValueError(f"{what}_rejected_logps must hold at least one negative (K >= 1)")
    return batch, n_neg


def implicit_rewards(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """Validate shapes and return ``r(p)`` of shape ``(B,)`` and ``r(d)`` of shape ``(B, K)``.

    ``r(y) = beta * (log pi_theta(y|x) - log pi_ref(y|x))``. The rewards stay attached to the
    graph (they are the logits of the losses); callers detach copies for logging.

    Raises:
        ValueError: on malformed shapes or a non-positive ``beta``.
    """
    beta = check_beta(beta)
    check_logps(policy_chosen_logps, policy_rejected_logps)
    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(
            "this objective compares with a reference: ref_chosen_logps and "
            "ref_rejected_logps are required"
        )
    if ref_chosen_logps.shape != policy_chosen_logps.shape:
        raise ValueError(
            f"ref_chosen_logps shape {tuple(ref_chosen_logps.shape)} does not match "
            f"policy_chosen_logps shape {tuple(policy_chosen_logps.shape)}"
        )
    if ref_rejected_logps.shape != policy_rejected_logps.shape:
        raise ValueError(
            f"ref_rejected_logps shape {tuple(ref_rejected_logps.shape)} does not match "
            f"policy_rejected_logps shape {tuple(policy_rejected_logps.shape)}"
        )
    dtype = compute_dtype(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    # (B,)
    chosen_rewards = beta * (policy_chosen_logps.to(dtype) - ref_chosen_logps.to(dtype))
    # (B, K)
    rejected_rewards = beta * (policy_rejected_logps.to(dtype) - ref_rejected_logps.to(dtype))
    return chosen_rewards, rejected_rewards


def check_lengths(
    chosen_lengths: Tensor | None,
    rejected_lengths: Tensor | None,
    batch: int,
    n_neg: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Token counts ``|p|`` of shape ``(B,)`` and ``|d_k|`` of shape ``(B, K)`` as ``dtype``.

    Counts are clamped to at least 1, like :func:`~sdpo_lightning.training.objectives.sft_loss`
    does (an empty completion has summed log-prob 0, so its normalised log-prob is 0 too).

    Raises:
        ValueError: if either is missing, has the wrong shape, or holds a negative count.
    """
    if chosen_lengths is None or rejected_lengths is None:
        raise ValueError(
            "token counts are required: pass chosen_lengths (B,) and rejected_lengths (B, K)"
        )
    if tuple(chosen_lengths.shape) != (batch,):
        raise ValueError(
            f"chosen_lengths must have shape ({batch},), got {tuple(chosen_lengths.shape)}"
        )
    if tuple(rejected_lengths.shape) != (batch, n_neg):
        raise ValueError(
            f"rejected_lengths must have shape ({batch}, {n_neg}), got "
            f"{tuple(rejected_lengths.shape)}"
        )
    if (chosen_lengths < 0).any() or (rejected_lengths < 0).any():
        raise ValueError("token counts must be >= 0")
    chosen = chosen_lengths.detach().to(device=device, dtype=dtype).clamp_min(1.0)
    rejected = rejected_lengths.detach().to(device=device, dtype=dtype).clamp_min(1.0)
    return chosen, rejected
