"""From the ``objective`` settings and a batch's scores to a preference objective's call.

Every preference objective of :data:`~sdpo_lightning.training.objectives.OBJECTIVES` takes the
same five arguments (policy and reference log-probs of the chosen and rejected completions, and
``beta``); the few that need more take it as keyword options, listed by their
:class:`~sdpo_lightning.training.objectives.ObjectiveSpec`. This module is the one place that
fills those options from :class:`~sdpo_lightning.training.module_args.ObjectiveArgs` and the
completions' token counts, so :class:`~sdpo_lightning.training.module.SDPOModule` calls every
objective the same way::

    ref = reference() if needs_reference(args) else None     # no reference pass otherwise
    out = objective_loss(args, policy_logps, n_tokens, ref)
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from sdpo_lightning.training.module_args import ObjectiveArgs
from sdpo_lightning.training.objective_base import ObjectiveOutput
from sdpo_lightning.training.objectives import OBJECTIVE_SPECS, preference_loss

__all__ = ["needs_reference", "objective_loss", "objective_options", "uses_token_mean"]

#: The default of ``objective.token_mean`` (None) for the objectives that read it: SimPO is
#: defined on token-mean log-probs; IPO's paper on sequence log-probs (TRL's IPO: token-mean).
TOKEN_MEAN_DEFAULT = {"ipo": False, "ipo_k": False, "simpo": True, "softmax_simpo": True}


def needs_reference(args: ObjectiveArgs) -> bool:
    """Whether the objective reads reference log-probs (never for ``sft``, ``simpo``,
    ``softmax_simpo``): when not, the module runs no reference pass, live or cached."""
    spec = OBJECTIVE_SPECS.get(args.name)
    return spec is not None and spec.reference


def uses_token_mean(args: ObjectiveArgs) -> bool:
    """``objective.token_mean`` resolved: the setting, else the objective's default."""
    if args.token_mean is not None:
        return bool(args.token_mean)
    return TOKEN_MEAN_DEFAULT.get(args.name, False)


def objective_options(args: ObjectiveArgs, n_tokens: Tensor) -> dict[str, Any]:
    """The keyword options of ``args.name``'s objective beyond the common five arguments.

    Args:
        args: the objective settings.
        n_tokens (Tensor): completion token counts ``(B, 1 + K)``, the chosen one first.

    Returns:
        dict: ``chosen_lengths`` ``(B,)`` / ``rejected_lengths`` ``(B, K)`` (IPO with token
        means; SimPO always, counts of 1 without token means), ``gamma`` (SimPO), ``margin`` and
        ``spread`` (DynamicPO); empty for the others.
    """
    name = args.name
    options: dict[str, Any] = {}
    if name in ("ipo", "ipo_k") and uses_token_mean(args):
        options.update(chosen_lengths=n_tokens[:, 0], rejected_lengths=n_tokens[:, 1:])
    elif name in ("simpo", "softmax_simpo"):
        counts = n_tokens if uses_token_mean(args) else n_tokens.new_ones(n_tokens.shape)
        options.update(
            chosen_lengths=counts[:, 0], rejected_lengths=counts[:, 1:], gamma=args.gamma
        )
    elif name == "dynamicpo":
        options.update(margin=args.dynamicpo_margin, spread=args.dynamicpo_spread)
    return options


def objective_loss(
    args: ObjectiveArgs, policy_logps: Tensor, n_tokens: Tensor, reference_logps: Tensor | None
) -> ObjectiveOutput:
    """The preference objective of ``args`` on one batch.

    Args:
        args: the objective settings (``name``, ``beta`` and the objective's own fields).
        policy_logps (Tensor): summed completion log-probs ``(B, 1 + K)``, chosen first.
        n_tokens (Tensor): their token counts ``(B, 1 + K)``.
        reference_logps (Tensor | None): the reference's ``(B, 1 + K)``; ``None`` for a
            reference-free objective.

    Returns:
        ObjectiveOutput: per-example losses ``(B,)`` and detached rewards.

    Raises:
        ValueError: for a reference-based objective without reference log-probs, or as the
            objective does.
    """
    if reference_logps is None and needs_reference(args):
        raise ValueError(f"objective {args.name!r} needs reference log-probs")
    ref_chosen = reference_logps[:, 0] if reference_logps is not None else None
    ref_rejected = reference_logps[:, 1:] if reference_logps is not None else None
    return preference_loss(
        args.name,
        policy_logps[:, 0],
        policy_logps[:, 1:],
        ref_chosen,
        ref_rejected,
        args.beta,
        **objective_options(args, n_tokens),
    )
