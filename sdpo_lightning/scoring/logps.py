"""Sequence log-probs of several short completions after one long prompt.

``completion_logps`` scores N completions (item title + EOS) per prompt. It returns
``log p(completion | prompt)`` summed over completion tokens, in float32, with gradients
to the model when autograd is on. Two modes:

* ``"naive"``: the official S-DPO code's way and the benchmark baseline. Each of the B*N
  ``[prompt, completion]`` sequences is a row of its own, shape ``(B*N, P+C)``. The
  model returns full logits; the log-softmax runs only on the completion positions.
* ``"shared_prefix"``: the prompt is computed once per example. Each example becomes
  one **packed row** ``[prompt, c_0, ..., c_{N-1}]`` of length ``P + T`` holding only the
  real tokens of each completion (T = the most real completion tokens of any example), with
  a block attention mask and position ids that restart for every completion; logits are made
  only at the T positions that predict completion tokens (``logits_to_keep``). The layout is
  :mod:`sdpo_lightning.scoring.packing`'s, shared with the trunk cache.

Why a packed row and not a KV cache expanded to B*N? The packed row is a single ordinary
forward pass. Gradients reach the prompt's activations through autograd with no special
handling, and it works under gradient checkpointing (which forces ``use_cache=False``),
with peft LoRA, and with DeepSpeed hooks. The attention cost is ``(P + T)^2`` rather
than ``N*(P+C)^2``. For short completions that is about ``P^2``.

Requirements: ``model.config._attn_implementation`` must be ``"sdpa"`` (the default;
it gets a boolean 4D mask) or ``"eager"`` (it gets an additive float mask). Flash-attention
and flex kernels do not take a custom dense 4D mask; use ``mode="naive"`` with them. The
model's forward must accept ``position_ids`` and ``logits_to_keep`` (any transformers
causal LM >= 4.50, also behind a ``peft.PeftModel``). Every prompt must have at least
one real token, and the completions must be right-padded.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from sdpo_lightning.scoring.packing import (
    PACKED_ATTN_IMPLEMENTATIONS,
    attn_implementation,
    completion_src,
    kept_logit_positions,
    pack_row,
    packed_attention_mask,
    ragged_pack,
)

__all__ = [
    "MODES",
    "CompletionLogps",
    "PackedForward",
    "check_inputs",
    "completion_logps",
    "gather_completion_token_logps",
    "packed_forward",
    "packed_token_logps",
    "trim_padding",
]

MODES = ("naive", "shared_prefix")


class CompletionLogps(NamedTuple):
    """Summed completion log-probs and the number of real completion tokens."""

    logps: Tensor  # (B, N) float32
    n_tokens: Tensor  # (B, N) long


def gather_completion_token_logps(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Per-token ``log p(target)`` in float32, zero where ``mask`` is 0.

    Args:
        logits: ``(..., V)`` logits predicting each target (any float dtype).
        targets: ``(...)`` token ids.
        mask: ``(...)`` 1 for real tokens.
    """
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...)
    token_logps = picked - torch.logsumexp(logits, dim=-1)  # (...)
    return torch.where(mask.bool(), token_logps, torch.zeros_like(token_logps))


def trim_padding(
    prompt_input_ids: Tensor,
    prompt_attention_mask: Tensor,
    completion_input_ids: Tensor,
    completion_attention_mask: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Drop the prompt's all-padding left columns and the completions' all-padding right columns."""
    real_cols = prompt_attention_mask.bool().any(0)  # (P,)
    if not bool(real_cols.any()):
        raise ValueError("every prompt is empty: prompt_attention_mask has no real token")
    start = int(real_cols.int().argmax())
    c_len = int(completion_attention_mask.sum(-1).max()) if completion_attention_mask.numel() else 0
    return (
        prompt_input_ids[:, start:],
        prompt_attention_mask[:, start:],
        completion_input_ids[..., :c_len],
        completion_attention_mask[..., :c_len],
    )


def check_inputs(p_ids: Tensor, p_mask: Tensor, c_ids: Tensor, c_mask: Tensor) -> None:
    """Raise ``ValueError`` unless prompts are (B, P) left-padded and completions (B, N, C) right-padded."""
    if p_ids.dim() != 2 or p_mask.shape != p_ids.shape:
        raise ValueError(
            f"prompt ids/mask must be (B, P), got {tuple(p_ids.shape)}/{tuple(p_mask.shape)}"
        )
    if c_ids.dim() != 3 or c_mask.shape != c_ids.shape or c_ids.shape[0] != p_ids.shape[0]:
        raise ValueError(
            f"completion ids/mask must be (B, N, C) with B={p_ids.shape[0]}, "
            f"got {tuple(c_ids.shape)}/{tuple(c_mask.shape)}"
        )
    if not bool(p_mask[:, -1].bool().all()):
        raise ValueError("prompts must be LEFT-padded and non-empty (last column must be real)")
    if c_mask.shape[-1] > 1 and bool((c_mask[..., 1:].bool() & ~c_mask[..., :-1].bool()).any()):
        raise ValueError("completions must be RIGHT-padded (a real token follows a pad)")


class PackedForward(NamedTuple):
    """One packed forward pass: logits at the completion positions and where each token reads."""

    logits: Tensor  # (B, T, V) at packed positions P-1 .. P+T-2, the model's dtype
    src: Tensor  # (B, N*C) index into T of the logits predicting each completion slot
    past_key_values: Any  # the model's cache of all L positions, None unless use_cache


def packed_forward(
    model: nn.Module,
    p_ids: Tensor,
    p_mask: Tensor,
    c_ids: Tensor,
    c_mask: Tensor,
    use_cache: bool = False,
) -> PackedForward:
    """Run ``[prompt, c_0, ..., c_{N-1}]`` as one packed row per example.

    The layout (ragged packing, block mask, position ids, kept logits) is
    :mod:`sdpo_lightning.scoring.packing`'s.

    Inputs must be checked and trimmed (``trim_padding``). With ``use_cache`` the model's cache
    is returned too; its first ``P`` positions are exactly a causal prefill of the prompts.
    """
    attn_impl = attn_implementation(model)
    if attn_impl not in PACKED_ATTN_IMPLEMENTATIONS:
        raise ValueError(
            "mode='shared_prefix' needs attn_implementation in "
            f"{PACKED_ATTN_IMPLEMENTATIONS} (custom 4D mask), "
            f"the model uses {attn_impl!r}; use mode='naive' or attn_implementation='sdpa'"
        )
    layout = ragged_pack(p_mask, c_mask)
    input_ids = pack_row(p_ids, c_ids, layout)  # (B, L)
    dtype = model.get_input_embeddings().weight.dtype  # eager only; adds to the attention scores
    mask = packed_attention_mask(p_mask, layout.segment, attn_impl, dtype)  # (B, 1, L, L)
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=layout.position_ids,
        use_cache=use_cache,
        logits_to_keep=kept_logit_positions(layout, p_ids.device),  # (T,)
    )
    cache = out.past_key_values if use_cache else None
    return PackedForward(out.logits, completion_src(layout), cache)


def packed_token_logps(packed: PackedForward, c_ids: Tensor, c_mask: Tensor) -> Tensor:
    """Per-token completion log-probs (B, N, C) from a :func:`packed_forward` result."""
    (B, N, C), (_, T, V) = c_ids.shape, packed.logits.shape
    flat_ids, flat_mask = c_ids.reshape(B, N * C), c_mask.reshape(B, N * C)
    # log p(target) = logit[src, target] - logsumexp(logits[src]); no (B, N*C, V) copy.
    logits = packed.logits.float()
    picked = logits.reshape(B, T * V).gather(1, packed.src * V + flat_ids)  # (B, N*C)
    lse = torch.logsumexp(logits, dim=-1).gather(1, packed.src)  # (B, N*C)
    token_logps = torch.where(flat_mask.bool(), picked - lse, torch.zeros_like(picked))
    return token_logps.reshape(B, N, C)


def _shared_prefix(
    model: nn.Module, p_ids: Tensor, p_mask: Tensor, c_ids: Tensor, c_mask: Tensor
) -> Tensor:
    """Per-token completion log-probs (B, N, C) from one packed forward pass per example."""
    return packed_token_logps(packed_forward(model, p_ids, p_mask, c_ids, c_mask), c_ids, c_mask)


def _naive(
    model: nn.Module, p_ids: Tensor, p_mask: Tensor, c_ids: Tensor, c_mask: Tensor
) -> Tensor:
    """Per-token completion log-probs (B, N, C) from B*N full sequences (the baseline)."""
    (B, P), (_, N, C) = p_ids.shape, c_ids.shape
    input_ids = torch.cat([p_ids[:, None].expand(B, N, P), c_ids], dim=-1)  # (B, N, P+C)
    input_ids = input_ids.reshape(B * N, P + C)
    attention_mask = torch.cat([p_mask[:, None].expand(B, N, P), c_mask], dim=-1)  # (B, N, P+C)
    attention_mask = attention_mask.reshape(B * N, P + C)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B*N, P+C)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    ).logits  # (B*N, P+C, V), full logits as in the official code
    logits = logits[:, P - 1 : P + C - 1]  # (B*N, C, V): predictions of the completion tokens
    token_logps = gather_completion_token_logps(
        logits, c_ids.reshape(B * N, C), c_mask.reshape(B * N, C)
    )  # (B*N, C)
    return token_logps.reshape(B, N, C)


def completion_logps(
    model: nn.Module,
    prompt_input_ids: Tensor,
    prompt_attention_mask: Tensor,
    completion_input_ids: Tensor,
    completion_attention_mask: Tensor,
    mode: str = "shared_prefix",
    max_completions_per_forward: int | None = None,
) -> CompletionLogps:
    """Sum of completion-token log-probs of N completions per prompt.

    Args:
        model: Hugging Face causal LM, possibly a ``peft.PeftModel``, in train or eval mode.
        prompt_input_ids: ``(B, P)`` LEFT-padded prompt ids.
        prompt_attention_mask: ``(B, P)`` 1 for real tokens; every prompt needs at least one.
        completion_input_ids: ``(B, N, C)`` RIGHT-padded completion ids (title + EOS).
        completion_attention_mask: ``(B, N, C)``. An all-zero row gives logp 0 and count 0.
        mode: ``"naive"`` (the baseline, B*N full sequences) or ``"shared_prefix"``.
        max_completions_per_forward: if set, scores at most this many completions per
            example in one forward pass, to bound memory. In ``shared_prefix`` mode each
            chunk recomputes the prompt. Gradients stay exact in both modes.

    Returns:
        ``CompletionLogps(logps (B, N) float32, n_tokens (B, N) long)``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown scoring mode {mode!r}; expected one of {MODES}")
    if max_completions_per_forward is not None and max_completions_per_forward < 1:
        raise ValueError(
            f"max_completions_per_forward must be >= 1, got {max_completions_per_forward}"
        )
    check_inputs(
        prompt_input_ids, prompt_attention_mask, completion_input_ids, completion_attention_mask
    )
    B, N, _ = completion_input_ids.shape
    n_tokens = completion_attention_mask.long().sum(-1)  # (B, N)
    p_ids, p_mask, c_ids, c_mask = trim_padding(
        prompt_input_ids, prompt_attention_mask, completion_input_ids, completion_attention_mask
    )
    if c_ids.shape[-1] == 0 or N == 0:  # nothing to score
        zeros = torch.zeros(B, N, dtype=torch.float32, device=c_ids.device)
        return CompletionLogps(zeros, n_tokens)
    score = _shared_prefix if mode == "shared_prefix" else _naive
    step = N if max_completions_per_forward is None else max_completions_per_forward
    chunks = [
        # (B, n, C) -> (B, n)
        score(model, p_ids, p_mask, c_ids[:, s : s + step], c_mask[:, s : s + step]).sum(-1)
        for s in range(0, N, step)
    ]
    return CompletionLogps(torch.cat(chunks, dim=1), n_tokens)
