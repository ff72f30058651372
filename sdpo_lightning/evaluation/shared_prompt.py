"""Beam decoding that reads each prompt's KV cache in place: no copy per beam, no copy per step.

The usual way to decode ``W`` beams after a prompt expands the prompt's KV cache to ``W`` copies
(``transformers``' beam search, and :func:`~sdpo_lightning.evaluation.beam_search.constrained_beam_search`
with ``kv_sharing="expand"``), then re-gathers the whole cache by the beams' parents and appends
to it at every step: three copies of ``W x prompt`` keys and values per step and layer, and ``W``
times the prompt's cache memory.

Here the prompt part stays as the prefill left it, ``(B, H_kv, P, D)`` per layer, and only the
beams' own tokens are kept per beam, ``(R, H_kv, t, D)`` (``t`` <= the longest title). A beam's
attention is computed in two parts that are merged exactly by their log-sum-exp:

* against its row's prompt: the beams of row ``b`` are the "queries" of one attention call
  against row ``b``'s prompt keys (``(B, H_kv, G x W, D) @ (B, H_kv, D, P)``, padded to the most
  beams of any row; ``G`` query heads per key head), masked by the prompt's padding;
* against its own generated tokens (all visible: they are its own past).

It runs as a ``transformers`` attention function (:class:`transformers.AttentionInterface`,
registered as :data:`ATTENTION_NAME`) selected for the decoding forwards only, with a small cache
object in place of the model's cache; the model's own modules (projections, rotary embeddings,
LoRA layers) run unchanged. Supported for the decoder families whose attention goes through that
interface with plain causal attention (:data:`SUPPORTED_MODEL_TYPES`; sliding windows, soft-capping
or attention sinks are not); other models use the expanded cache.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ATTENTION_NAME",
    "SUPPORTED_MODEL_TYPES",
    "SharedPromptCache",
    "prompt_key_values",
    "supports_shared_prompt",
    "shared_prompt_attention",
]

ATTENTION_NAME = "sdpo_shared_prompt"
#: ``config.model_type`` values whose attention is plain causal attention routed through
#: ``transformers``' attention interface (each checked against the expanded cache in
#: ``tests/unit/test_beam_search.py``).
SUPPORTED_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "granite"}
)
_ACTIVE: contextvars.ContextVar[SharedPromptCache | None] = contextvars.ContextVar(
    "sdpo_shared_prompt_cache", default=None
)
_REGISTERED = False


def _config(model: nn.Module) -> Any:
    return getattr(model, "config", None)


def supports_shared_prompt(model: nn.Module) -> bool:
    """Whether ``model`` can decode with :class:`SharedPromptCache`: a supported decoder family
    on ``sdpa`` or ``eager`` attention, without a sliding window."""
    cfg = _config(model)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(cfg, "_attn_implementation", None) not in ("sdpa", "eager", None):
        return False
    return getattr(cfg, "sliding_window", None) is None or not getattr(
        cfg, "use_sliding_window", True
    )


def prompt_key_values(cache: Any) -> list[tuple[Tensor, Tensor]]:
    """Per layer ``(keys, values)`` ``(B, H_kv, P, D)`` of a ``transformers`` dynamic cache."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # older transformers


class SharedPromptCache:
    """The decoding cache of :mod:`this module <sdpo_lightning.evaluation.shared_prompt>`.

    Args:
        prompt: per layer ``(keys, values)`` of the prompts, ``(B, H_kv, P, D)``.
        p_mask: ``(B, P)`` the prompts' attention mask (left padding).

    Call :meth:`select` before each forward with the beams' rows and parents; the model's
    attention layers then :meth:`update` it with each beam's new key and value.
    """

    def __init__(self, prompt: list[tuple[Tensor, Tensor]], p_mask: Tensor) -> None:
        self.prompt = prompt
        self.n_prompt = prompt[0][0].shape[2]
        dtype = prompt[0][0].dtype
        bias = torch.zeros(p_mask.shape, dtype=torch.float32, device=p_mask.device)
        self.prompt_bias = bias.masked_fill(p_mask == 0, float("-inf"))[
            :, None, None, :
        ]  # (B,1,1,P)
        self.generated: list[tuple[Tensor, Tensor] | None] = [None] * len(prompt)
        self.rows: Tensor | None = None
        self.slots: Tensor | None = None
        self.width = 0
        self.dtype = dtype

    def select(self, parents: Tensor, rows: Tensor) -> None:
        """Make the beams of the next forward: beam ``r`` continues beam ``parents[r]`` of the last
        one (for the first forward: any index, nothing is generated yet) and belongs to prompt
        ``rows[r]``; beams come sorted by row."""
        self.generated = [
            None if g is None else (g[0].index_select(0, parents), g[1].index_select(0, parents))
            for g in self.generated
        ]
        counts = torch.bincount(rows, minlength=len(self.prompt_bias))
        first = torch.cumsum(counts, 0) - counts
        self.rows = rows
        self.slots = torch.arange(len(rows), device=rows.device) - first[rows]
        self.width = int(counts.max())

    def update(
        self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        """Append the beams' new keys and values ``(R, H_kv, 1, D)``; returns the beams' generated
        keys and values (the prompt part is read by :func:`shared_prompt_attention`)."""
        old = self.generated[layer_idx]
        if old is not None:
            key_states = torch.cat([old[0], key_states], dim=2)
            value_states = torch.cat([old[1], value_states], dim=2)
        self.generated[layer_idx] = (key_states, value_states)
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Prompt positions plus the tokens generated so far."""
        g = self.generated[layer_idx]
        return self.n_prompt + (0 if g is None else g[0].shape[2])

    @contextlib.contextmanager
    def active(self, model: nn.Module) -> Iterator[None]:
        """Run ``model``'s forwards on this cache: selects :func:`shared_prompt_attention` and
        restores the model's attention implementation afterwards."""
        _register()
        cfg = _config(model)
        before = cfg._attn_implementation
        token = _ACTIVE.set(self)
        cfg._attn_implementation = ATTENTION_NAME
        try:
            yield
        finally:
            cfg._attn_implementation = before
            _ACTIVE.reset(token)


def shared_prompt_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Attention of one decoding step against the row's prompt and the beam's own tokens (module
    docstring), as ``eager`` attention computes it over the expanded cache.

    Args:
        module: the attention layer (its ``layer_idx`` names the prompt keys).
        query: ``(R, H, 1, D)``.
        key, value: ``(R, H_kv, t, D)``, the beams' generated part (:meth:`SharedPromptCache.update`).
        attention_mask: ignored (the prompt's padding is known to the cache; a beam sees all of
            its own tokens).
        scaling: the softmax scale (default ``D ** -0.5``).

    Returns:
        ``(R, 1, H, D)`` and no weights.
    """
    cache = _ACTIVE.get()
    if cache is None:
        raise RuntimeError(
            f"{ATTENTION_NAME} attention runs only inside SharedPromptCache.active()"
        )
    for name in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise ValueError(f"{ATTENTION_NAME} attention does not support {name}")
    R, H, q_len, D = query.shape
    if q_len != 1:
        raise ValueError(f"{ATTENTION_NAME} attention decodes one token per beam, got {q_len}")
    pk, pv = cache.prompt[module.layer_idx]  # (B, Hkv, P, D)
    B, Hkv, P, _ = pk.shape
    G = H // Hkv
    scale = D**-0.5 if scaling is None else scaling
    q = query[:, :, 0, :].float().reshape(R, Hkv, G, D)  # query head h = kv head h // G
    # the prompt part: each row's beams are the queries of one call against its prompt
    W = cache.width
    grouped = q.new_zeros(B, W, Hkv, G, D)
    grouped[cache.rows, cache.slots] = q
    grouped = grouped.permute(0, 2, 3, 1, 4).reshape(B, Hkv, G * W, D)
    s_p = (
        torch.matmul(grouped, pk.float().transpose(2, 3)) * scale + cache.prompt_bias
    )  # (B,Hkv,GW,P)
    m_p = s_p.amax(-1, keepdim=True)
    e_p = torch.exp(s_p - m_p)
    o_p = torch.matmul(e_p, pv.float())  # (B, Hkv, GW, D)
    z_p = e_p.sum(-1, keepdim=True)

    def per_beam(x: Tensor) -> Tensor:  # (B, Hkv, G*W, k) -> (R, Hkv, G, k)
        x = x.reshape(B, Hkv, G, W, x.shape[-1]).permute(0, 3, 1, 2, 4)
        return x[cache.rows, cache.slots]

    o_p, m_p, z_p = per_beam(o_p), per_beam(m_p), per_beam(z_p)
    # the generated part: the beam's own tokens
    s_g = torch.matmul(q, key.float().transpose(2, 3)) * scale  # (R, Hkv, G, t)
    m_g = s_g.amax(-1, keepdim=True)
    e_g = torch.exp(s_g - m_g)
    o_g = torch.matmul(e_g, value.float())
    z_g = e_g.sum(-1, keepdim=True)
    m = torch.maximum(m_p, m_g)
    a_p, a_g = torch.exp(m_p - m), torch.exp(m_g - m)
    out = (o_p * a_p + o_g * a_g) / (z_p * a_p + z_g * a_g)  # (R, Hkv, G, D)
    return out.reshape(R, 1, H, D).to(query.dtype), None


def _register() -> None:
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION_NAME, shared_prompt_attention)
        _REGISTERED = True
