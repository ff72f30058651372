"""The packed-row layout: one prompt and its K completions in one sequence.

Scoring (:mod:`sdpo_lightning.scoring.logps`, ``mode="shared_prefix"``), the frozen-trunk cache
(:mod:`sdpo_lightning.scoring.trunk_cache`) and hence hybrid prompts all run one **packed row** per
example, ``[prompt, c_0, ..., c_{K-1}, row padding]``, laid out here:

* **Ragged packing.** The ``(B, P)`` prompt keeps its ``P`` columns (left-padded). Completion
  ``n`` of a ``(B, K, C)`` right-padded batch takes exactly its real length, straight after
  completion ``n - 1``: no padding between completions. Rows whose completions are shorter in
  total are right-padded as a whole to ``L = P + T``, ``T`` the most real completion tokens of
  any example (at least 1). :func:`ragged_pack` returns the :class:`PackedLayout`;
  :func:`pack_row` and :func:`unpack_completions` move tensors in and out of it.
* **Segments.** ``segment`` (B, L) is -1 on the prompt, ``n`` on completion ``n`` and -2 on
  row padding.
* **Block attention mask** (:func:`packed_attention_mask`). Prompt tokens attend causally to
  real prompt tokens; completion tokens attend to the real prompt tokens and to the earlier
  tokens of their own completion only; no real token attends to padding. Each padding query
  sees itself, so that no row is all-masked (an all-masked row gives NaN in SDPA).
* **Position ids.** Real prompt tokens count from 0 (left padding gets 0); every completion
  restarts at ``n_prompt_tokens + j`` for its token ``j``.
* **Logits.** Only the ``T`` positions ``P-1 .. L-2`` are needed
  (:func:`kept_logit_positions`): the first token of every completion is predicted at the last
  prompt position, any other at the position before it (:func:`completion_src`).

Models read the mask as a dense 4D tensor, so the attention implementation must be one of
:data:`PACKED_ATTN_IMPLEMENTATIONS` (:func:`attn_implementation` tells which one a model uses).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "PACKED_ATTN_IMPLEMENTATIONS",
    "PackedLayout",
    "attn_implementation",
    "completion_src",
    "kept_logit_positions",
    "pack_row",
    "packed_attention_mask",
    "ragged_pack",
    "unpack_completions",
]

#: Attention implementations that take the packed row's custom dense 4D mask.
PACKED_ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


class PackedLayout(NamedTuple):
    """Where the prompt and the real completion tokens of a batch sit in its packed rows.

    Attributes:
        prompt_len: ``P``, the prompt columns (the first ``P`` positions of every row).
        num_completions: ``K``, completions per example.
        completion_len: ``C``, the completions' padded width.
        total: ``T``, the most real completion tokens of one example (>= 1).
        dest: ``(B, K*C)`` packed position of each completion slot; ``L`` for a padding slot.
        segment: ``(B, L)`` -1 prompt, ``n`` completion ``n``, -2 row padding.
        position_ids: ``(B, L)`` position ids of the packed rows.
    """

    prompt_len: int
    num_completions: int
    completion_len: int
    total: int
    dest: Tensor  # (B, K*C)
    segment: Tensor  # (B, L)
    position_ids: Tensor  # (B, L)

    @property
    def length(self) -> int:
        """``L = P + T``, the packed rows' length."""
        return self.prompt_len + self.total


def attn_implementation(model: nn.Module) -> str:
    """The attention implementation of ``model`` (``config._attn_implementation``, else eager).

    Args:
        model: A causal LM, possibly behind a ``peft.PeftModel``.

    Returns:
        The implementation's name; packed rows need one of :data:`PACKED_ATTN_IMPLEMENTATIONS`.
    """
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) or "eager"


def ragged_pack(p_mask: Tensor, c_mask: Tensor) -> PackedLayout:
    """Lay out rows ``[prompt, c_0, ..., c_{K-1}, row padding]`` with no padding inside.

    Completion ``n`` of example ``b`` takes exactly its real length, straight after completion
    ``n - 1``. Rows whose completions are shorter in total are right-padded to ``L = P + T``.

    Args:
        p_mask: ``(B, P)`` left-padded prompt attention mask, 1 for real tokens.
        c_mask: ``(B, K, C)`` right-padded completion attention mask.

    Returns:
        The :class:`PackedLayout` of the batch.
    """
    (B, P), (_, N, C) = p_mask.shape, c_mask.shape
    device = p_mask.device
    real = c_mask.bool().reshape(B, N * C)  # (B, N*C)
    total = max(int(real.sum(-1).max()), 1)  # T; at least one slot so that logits exist
    L = P + total
    dest = P + real.long().cumsum(-1) - 1  # (B, N*C): packed position of each real token
    dest = torch.where(real, dest, torch.full_like(dest, L))  # padding slots -> dropped column L
    completion = torch.arange(N, device=device).repeat_interleave(C).expand(B, N * C)
    offset = torch.arange(C, device=device).repeat(N).expand(B, N * C)  # index in its completion
    n_prompt = p_mask.long().sum(-1, keepdim=True)  # (B, 1)
    segment = torch.full((B, L + 1), -2, dtype=torch.long, device=device)  # (B, L+1)
    segment[:, :P] = -1
    segment.scatter_(1, dest, completion)
    positions = torch.zeros((B, L + 1), dtype=torch.long, device=device)  # (B, L+1)
    positions[:, :P] = (p_mask.long().cumsum(-1) - 1).clamp(min=0)
    positions.scatter_(1, dest, n_prompt + offset)  # restart after the prompt per completion
    return PackedLayout(P, N, C, total, dest, segment[:, :L], positions[:, :L])


def pack_row(prompt: Tensor, completions: Tensor, layout: PackedLayout) -> Tensor:
    """The packed rows of per-token values (token ids, or features in trailing dims).

    Args:
        prompt: ``(B, P, *F)`` values of the prompt columns, padding included.
        completions: ``(B, K, C, *F)`` values of the completion slots.
        layout: The batch's :func:`ragged_pack` layout.

    Returns:
        ``(B, L, *F)`` in ``prompt``'s dtype: the prompt, then each completion's real slots at
        their packed positions; row padding is 0. A view of a ``(B, L + 1, *F)`` buffer.
    """
    B, P = prompt.shape[:2]
    features = tuple(prompt.shape[2:])
    slots = layout.num_completions * layout.completion_len
    L = P + layout.total
    row = torch.zeros((B, L + 1, *features), dtype=prompt.dtype, device=prompt.device)
    row[:, :P] = prompt
    index = layout.dest.reshape(B, slots, *(1,) * len(features)).expand(B, slots, *features)
    flat = completions.reshape(B, slots, *features)  # (B, K*C, *F)
    return row.scatter_(1, index, flat)[:, :L]  # (B, L, *F)


def unpack_completions(row: Tensor, layout: PackedLayout) -> Tensor:
    """Read each completion slot's value back out of packed rows (the inverse of :func:`pack_row`).

    Args:
        row: ``(B, L, *F)`` values at the packed positions (ids, hidden states, ...).
        layout: The batch's :func:`ragged_pack` layout.

    Returns:
        ``(B, K, C, *F)``, 0 at the completions' padding slots.
    """
    B, L = row.shape[:2]
    features = tuple(row.shape[2:])
    K, C = layout.num_completions, layout.completion_len
    padded = torch.cat([row, row.new_zeros((B, 1, *features))], dim=1)  # (B, L+1, *F)
    index = layout.dest.reshape(B, K * C, *(1,) * len(features)).expand(B, K * C, *features)
    return padded.gather(1, index).reshape(B, K, C, *features)


def packed_attention_mask(
    p_mask: Tensor, segment: Tensor, attn_impl: str, dtype: torch.dtype
) -> Tensor:
    """Block mask for packed rows ``[prompt, c_0, ..., c_{K-1}, pad]``: ``(B, 1, L, L)``.

    Real tokens never see padding. Each padding query sees itself, so that no row is all-masked
    (an all-masked row gives NaN in SDPA). Their outputs are never read.

    Args:
        p_mask: ``(B, P)`` left-padded prompt attention mask.
        segment: ``(B, L)`` the layout's segments (-1 prompt, ``n`` completion, -2 padding).
        attn_impl: ``"sdpa"`` (a boolean mask, True = attend) or ``"eager"`` (an additive mask).
        dtype: The additive mask's dtype (eager only; it adds to the attention scores).

    Returns:
        ``(B, 1, L, L)``: bool for SDPA; 0 / ``finfo(dtype).min`` in ``dtype`` otherwise.
    """
    P, L, device = p_mask.shape[1], segment.shape[1], p_mask.device
    pos = torch.arange(L, device=device)
    causal = pos[:, None] >= pos[None, :]  # (L, L)
    key_seg, query_seg = segment[:, None, :], segment[:, :, None]
    same_block = (key_seg == -1) | (key_seg == query_seg)  # (B, L, L)
    key_real = torch.cat([p_mask.bool(), segment[:, P:] >= 0], dim=1)  # (B, L)
    allowed = causal[None] & same_block & key_real[:, None, :]  # (B, L, L)
    allowed = allowed | torch.eye(L, dtype=torch.bool, device=device)[None]
    allowed = allowed[:, None]  # (B, 1, L, L)
    if attn_impl == "sdpa":
        return allowed
    additive = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return additive.masked_fill_(~allowed, torch.finfo(dtype).min)


def kept_logit_positions(layout: PackedLayout, device: torch.device) -> Tensor:
    """The ``T`` packed positions ``P-1 .. L-2`` whose logits predict completion tokens.

    Args:
        layout: The batch's :func:`ragged_pack` layout.
        device: Where the index lives (the model's ``logits_to_keep``).

    Returns:
        ``(T,)`` long positions, shared by all rows.
    """
    P = layout.prompt_len
    return torch.arange(P - 1, P + layout.total - 1, device=device)  # (T,)


def completion_src(layout: PackedLayout) -> Tensor:
    """Index into the kept logits (:func:`kept_logit_positions`) predicting each completion slot.

    The first token of every completion reads the last prompt position (index 0), any other the
    position before it (``dest - P``). Padding slots get some valid index (masked by callers).

    Args:
        layout: The batch's :func:`ragged_pack` layout.

    Returns:
        ``(B, K*C)`` long indices in ``[0, T)``.
    """
    dest, P, C, T = layout.dest, layout.prompt_len, layout.completion_len, layout.total
    first = torch.arange(dest.shape[1], device=dest.device).expand_as(dest) % C == 0  # (B, K*C)
    return torch.where(first, torch.zeros_like(dest), dest - P).clamp(0, T - 1)
