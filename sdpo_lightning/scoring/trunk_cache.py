"""Frozen-trunk activation cache: compute the frozen lower decoder layers once per example.

With LoRA on the top decoder layers only (``LoraSettings.layers_to_transform``), the
embeddings and the lower layers are a fixed function of the tokens. In the shared-prefix
packed row (see :mod:`sdpo_lightning.scoring.packing`), a completion token attends only to the
prompt and to its own completion, so its lower-layer activation does not depend on which
other completions share the row. Hence the activations of ``[prompt, every candidate]``
computed once per example serve every later packed row of that example — SFT (the target
only), any K negatives, the reference and the ranking protocol:

* first use of an example: one no-grad pass of the lower ``n_lower`` layers over its
  all-candidates packed row; the prompt's and each candidate's hidden states are stored
  (in memory, keyed by the token ids, so a split, a sampler or an epoch never mixes them);
* every use: the packed row of the requested completions is assembled from the store and
  only the upper layers run (``inputs_embeds`` with the decoder's layer list cut to the
  upper layers), with the same block mask and position ids.

The result equals :func:`~sdpo_lightning.scoring.completion_logps` in ``shared_prefix`` mode
up to float rounding (tested), and so do the gradients: autograd never reaches the frozen
layers either way. The saving is the forward of the lower layers on every step after an
example's first, and the whole backward below the adapters is skipped in both.
Single-process and DDP / ZeRO-2 only (ZeRO-3 partitions the layers' weights).

The same store serves evaluation across processes (``model.scoring.eval_trunk_dir``): the one-pass
evaluator's packed row of all candidates (:meth:`TrunkCache.packed_forward`) is assembled from
it, and :meth:`TrunkCache.save` / :meth:`TrunkCache.load` keep it in a file tagged with a digest
of the embedding and lower layers' weights (:func:`lower_layers_identity`), so every later test
of an adapter on the same base and rows runs the upper layers only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sdpo_lightning.modeling.models import decoder_of
from sdpo_lightning.scoring.logps import (
    CompletionLogps,
    PackedForward,
    packed_token_logps,
    trim_padding,
)
from sdpo_lightning.scoring.packing import (
    PACKED_ATTN_IMPLEMENTATIONS,
    attn_implementation,
    completion_src,
    kept_logit_positions,
    pack_row,
    packed_attention_mask,
    ragged_pack,
    unpack_completions,
)

__all__ = ["TrunkCache", "frozen_layer_count", "lower_layers_identity"]


def frozen_layer_count(model: nn.Module) -> int:
    """Number of leading decoder layers with no adapter of any name and no trainable weight."""
    decoder = decoder_of(model)
    if any(p.requires_grad for p in decoder.embed_tokens.parameters()):
        return 0
    for i, layer in enumerate(decoder.layers):
        has_adapter = any("lora_" in name for name, _ in layer.named_modules())
        if has_adapter or any(p.requires_grad for p in layer.parameters()):
            return i
    return len(decoder.layers)


@contextlib.contextmanager
def _only_layers(
    decoder: nn.Module, start: int, stop: int | None, skip_norm: bool
) -> Iterator[None]:
    """Temporarily cut the decoder to ``layers[start:stop]`` (and its final norm to identity)."""
    layers, norm = decoder.layers, decoder.norm
    decoder.layers = nn.ModuleList(list(layers)[start:stop])
    if skip_norm:
        decoder.norm = nn.Identity()
    try:
        yield
    finally:
        decoder.layers, decoder.norm = layers, norm


def _key(prompt_ids: Tensor, cand_ids: Tensor, cand_mask: Tensor) -> bytes:
    """Digest of one example's real prompt ids and its candidates' real ids."""
    h = hashlib.blake2b(digest_size=16)
    h.update(prompt_ids.to(torch.int64).cpu().numpy().tobytes())
    for ids, m in zip(cand_ids, cand_mask, strict=False):
        h.update(b"|" + ids[m.bool()].to(torch.int64).cpu().numpy().tobytes())
    return h.digest()


class TrunkCache:
    """Lower-layer activations of every example seen, keyed by its token ids.

    Args:
        n_lower: Number of frozen lower decoder layers served from the cache.
    """

    def __init__(self, n_lower: int) -> None:
        if n_lower < 1:
            raise ValueError(f"trunk cache needs at least one frozen lower layer, got {n_lower}")
        self.n_lower = n_lower
        self.store: dict[bytes, tuple[Tensor, list[Tensor]]] = {}
        self.builds = 0  # examples whose lower layers were computed

    def __len__(self) -> int:
        return len(self.store)

    @torch.no_grad()
    def _fill(
        self,
        model: nn.Module,
        p_ids: Tensor,
        p_mask: Tensor,
        c_ids: Tensor,
        c_mask: Tensor,
        keys: list[bytes],
    ) -> None:
        """Run the lower layers on the all-candidates packed rows of these examples."""
        p_ids, p_mask, c_ids, c_mask = trim_padding(p_ids, p_mask, c_ids, c_mask)
        B, P = p_ids.shape
        layout = ragged_pack(p_mask, c_mask)
        decoder = decoder_of(model)
        mask = packed_attention_mask(
            p_mask, layout.segment, _attn(model), decoder.embed_tokens.weight.dtype
        )  # (B, 1, L, L)
        with _only_layers(decoder, 0, self.n_lower, skip_norm=True):
            hidden = decoder(
                input_ids=pack_row(p_ids, c_ids, layout),
                attention_mask=mask,
                position_ids=layout.position_ids,
                use_cache=False,
            ).last_hidden_state  # (B, L, H)
        cands_h = unpack_completions(hidden, layout)  # (B, M, C, H)
        lengths = c_mask.long().sum(-1)  # (B, M)
        n_prompt = p_mask.long().sum(-1)  # (B,)
        for b, key in enumerate(keys):
            prompt_h = hidden[b, P - int(n_prompt[b]) : P].clone()  # left-padded: real ids last
            cands = [cands_h[b, m, : int(lengths[b, m])].clone() for m in range(cands_h.shape[1])]
            self.store[key] = (prompt_h, cands)
        self.builds += B

    def completion_logps(
        self, model: nn.Module, batch: dict[str, Any], ids: Tensor, mask: Tensor
    ) -> CompletionLogps:
        """Like ``completion_logps(model, prompt, ids, mask, mode="shared_prefix")`` for a batch
        whose ``ids`` rows are candidates of ``batch["candidate_input_ids"]``.

        Raises:
            KeyError: if a completion is not among its example's candidates.
        """
        packed, c_ids, c_mask = self._packed(model, batch, ids, mask)
        return CompletionLogps(
            packed_token_logps(packed, c_ids, c_mask).sum(-1), mask.long().sum(-1)
        )

    def packed_forward(self, model: nn.Module, batch: dict[str, Any]) -> PackedForward:
        """:func:`~sdpo_lightning.scoring.packed_forward` of the batch's prompts and **all** its
        candidates (trimmed by ``trim_padding``, as the evaluator trims them), the lower layers
        served from the cache: what the one-pass evaluator's ranking and constrained generation
        read. No model cache is returned (free-form decoding needs the lower layers' keys)."""
        return self._packed(
            model, batch, batch["candidate_input_ids"], batch["candidate_attention_mask"]
        )[0]

    def _packed(self, model: nn.Module, batch: dict[str, Any], ids: Tensor, mask: Tensor):
        """The packed forward of ``ids`` with the lower layers from the store (filled first where
        missing): ``(PackedForward, c_ids, c_mask)`` with the trimmed completions."""
        p_ids, p_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        cand_ids, cand_mask = (
            batch["candidate_input_ids"],
            batch["candidate_attention_mask"],
        )  # (B, M, C)
        cand_index = _candidate_index(ids, mask, cand_ids, cand_mask)  # (B, N)
        keys = [
            _key(p_ids[b][p_mask[b].bool()], cand_ids[b], cand_mask[b])
            for b in range(p_ids.shape[0])
        ]
        missing = [b for b, k in enumerate(keys) if k not in self.store]
        if missing:
            sel = torch.tensor(missing, device=p_ids.device)
            self._fill(
                model,
                p_ids[sel],
                p_mask[sel],
                cand_ids[sel],
                cand_mask[sel],
                [keys[b] for b in missing],
            )
        n_tokens = mask.long().sum(-1)  # (B, N)
        p_ids, p_mask, c_ids, c_mask = trim_padding(p_ids, p_mask, ids, mask)
        (B, P), (_, N, C) = p_ids.shape, c_ids.shape
        layout = ragged_pack(p_mask, c_mask)
        L = layout.length
        decoder = decoder_of(model)
        first = self.store[keys[0]][0]
        hidden = torch.zeros((B, L + 1, first.shape[-1]), dtype=first.dtype, device=first.device)
        dest = layout.dest.reshape(B, N, C)
        for b, key in enumerate(keys):
            prompt_h, cands = self.store[key]
            hidden[b, P - prompt_h.shape[0] : P] = prompt_h
            for n in range(N):
                length = int(n_tokens[b, n])
                if length:
                    hidden[b, dest[b, n, :length]] = cands[int(cand_index[b, n])][:length]
        attn = packed_attention_mask(
            p_mask, layout.segment, _attn(model), decoder.embed_tokens.weight.dtype
        )  # (B, 1, L, L)
        keep = kept_logit_positions(layout, p_ids.device)  # (T,)
        with _only_layers(decoder, self.n_lower, None, skip_norm=False):
            logits = model(
                inputs_embeds=hidden[:, :L],
                attention_mask=attn,
                position_ids=layout.position_ids,
                use_cache=False,
                logits_to_keep=keep,
            ).logits  # (B, T, V)
        return PackedForward(logits, completion_src(layout), None), c_ids, c_mask

    def save(self, path: Path, identity: str) -> None:
        """Write the store to ``path`` (atomically), tagged with the lower layers' ``identity``."""
        keys = list(self.store)
        state = {
            "identity": identity,
            "n_lower": self.n_lower,
            "keys": [k.hex() for k in keys],
            "prompt": [self.store[k][0].cpu() for k in keys],
            "cands": [self.store[k][1] for k in keys],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(
        cls, path: Path, identity: str, n_lower: int, device: torch.device | str = "cpu"
    ) -> TrunkCache:
        """A cache with the rows stored in ``path``; empty when there is no such file.

        Raises:
            ValueError: if the file was written for other lower layers (identity or count).
        """
        cache = cls(n_lower)
        if not path.is_file():
            return cache
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as err:  # a truncated or foreign file: say which
            raise ValueError(
                f"trunk cache file {path}: cannot be read ({err}); delete it to rebuild"
            ) from err
        if state.get("identity") != identity or state.get("n_lower") != n_lower:
            raise ValueError(
                f"trunk cache file {path}: written for other lower layers "
                f"({state.get('n_lower')} layers, identity {str(state.get('identity'))[:16]}); "
                "delete it or use another directory"
            )
        for key, prompt_h, cands in zip(
            state["keys"], state["prompt"], state["cands"], strict=False
        ):
            cache.store[bytes.fromhex(key)] = (prompt_h, list(cands))
        return cache


def lower_layers_identity(model: nn.Module, n_lower: int) -> str:
    """Digest of what the cached activations depend on: the embedding and the first ``n_lower``
    decoder layers' weights (bytes, dtypes, shapes) and the attention implementation."""
    decoder = decoder_of(model)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{n_lower}|{_attn(model)}".encode())
    modules = [("embed_tokens", decoder.embed_tokens)] + [
        (f"layers.{i}", decoder.layers[i]) for i in range(n_lower)
    ]
    for prefix, module in modules:
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{prefix}.{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _attn(model: nn.Module) -> str:
    impl = attn_implementation(model)
    if impl not in PACKED_ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"trunk cache needs attn_implementation sdpa or eager (custom 4D mask), got {impl!r}"
        )
    return impl


def _candidate_index(ids: Tensor, mask: Tensor, cand_ids: Tensor, cand_mask: Tensor) -> Tensor:
    """For each completion (B, N, C), the index of the equal candidate in (B, M, C')."""
    width = max(ids.shape[-1], cand_ids.shape[-1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[-1]))  # noqa: E731
    a = pad(ids * mask)[:, :, None]  # (B, N, 1, W)
    b = pad(cand_ids * cand_mask)[:, None]  # (B, 1, M, W)
    same = (a == b).all(-1) & (pad(mask)[:, :, None] == pad(cand_mask)[:, None]).all(
        -1
    )  # (B, N, M)
    if not bool(same.any(-1).all()):
        raise KeyError("trunk cache: a completion is not among its example's candidates")
    return same.float().argmax(-1)  # (B, N)
