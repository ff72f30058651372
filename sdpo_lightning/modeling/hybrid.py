"""LLaRA hybrid item prompts: a title followed by one item token carrying a recommender's embedding.

LLaRA (Liao et al., SIGIR 2024) writes every history and candidate item of the prompt as its
title and one extra token whose input embedding is ``projector(e_item)``, ``e_item`` being the
item's embedding in a trained sequential recommender (SASRec here, frozen) and the projector a
small MLP trained with the LoRA adapters. Items the recommender never saw get one learned
"unknown" vector in its place.

Item tokens travel as **negative token ids** (item ``i`` of the table is ``-(i + 2)``, an item
outside it ``-1``), so a prompt, its packed shared-prefix row (:mod:`sdpo_lightning.scoring.packing`),
its digest and every cache key carry them like any other id, and no tokenizer or vocabulary
changes: the decoder's ``embed_tokens`` is replaced by :class:`HybridEmbedding`, which embeds
real ids as before and item ids by the projection. Completions (the answers) stay plain titles.

Files (an item table directory, also written into every exported hybrid adapter under
:data:`HYBRID_SUBDIR`): ``items.json`` (``{"titles": [...], "source": ...}``, row order),
``item_embeddings.safetensors`` (``embeddings``: (N, d)), and in an export
``projector.safetensors`` (projector and unknown vector).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sdpo_lightning.modeling.models import decoder_of

__all__ = [
    "HYBRID_SUBDIR",
    "HybridEmbedding",
    "HybridSettings",
    "ItemTable",
    "UNKNOWN_ITEM_ID",
    "curriculum_probability",
    "hybrid_embedding",
    "install_hybrid",
    "item_token_id",
    "strip_item_tokens",
]

HYBRID_SUBDIR = "hybrid"
ITEMS_FILE = "items.json"
EMBEDDINGS_FILE = "item_embeddings.safetensors"
PROJECTOR_FILE = "projector.safetensors"
UNKNOWN_ITEM_ID = -1


def item_token_id(index: int | None) -> int:
    """The (negative) token id of table row ``index``; ``None`` (not in the table) → ``-1``."""
    return UNKNOWN_ITEM_ID if index is None else -(index + 2)


@dataclass
class HybridSettings:
    """Hybrid-prompt options of the model.

    Attributes:
        item_table: an item table directory (a sequential baseline's test step writes one when
            given ``item_table_dir``: ``sdpo-baseline fit -c configs/baselines/sasrec_lastfm.yaml
            --model.init_args.item_table_dir DIR``) or an exported hybrid adapter's ``hybrid``
            folder.
        projector_hidden: hidden width of the two-layer projector (GELU between).
        curriculum_start: probability that a training example uses the hybrid form at the
            first step; it moves linearly to ``curriculum_end`` at the last step (LLaRA's
            curriculum: 0 → 1, text-only prompts first). The other examples use the text form
            (the same prompt with its item tokens removed). Evaluation is always hybrid.
        curriculum_end: probability at the last training step.
        train_projector: train the projector and unknown vector (``None``: in SFT only; the
            preference objectives keep them frozen, so policy and reference share them).
    """

    item_table: str = ""
    projector_hidden: int = 256
    curriculum_start: float = 1.0
    curriculum_end: float = 1.0
    train_projector: bool | None = None

    def __post_init__(self) -> None:
        if not self.item_table:
            raise ValueError("hybrid.item_table: give an item table directory")
        for name in ("curriculum_start", "curriculum_end"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"hybrid.{name} must be a probability in [0, 1], got {v!r}")
        if self.projector_hidden < 1:
            raise ValueError(f"hybrid.projector_hidden must be >= 1, got {self.projector_hidden}")


class ItemTable:
    """Titles and their recommender embeddings, row by row.

    Args:
        titles: one title per row (unique).
        embeddings: (N, d) float tensor.
        source: where the embeddings come from (kept in ``items.json``).
    """

    def __init__(self, titles: Sequence[str], embeddings: Tensor, source: str = "") -> None:
        titles = list(titles)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(titles):
            raise ValueError(
                f"item table: {len(titles)} titles but embeddings of shape {tuple(embeddings.shape)}"
            )
        if len(set(titles)) != len(titles):
            raise ValueError("item table: titles repeat")
        self.titles, self.embeddings, self.source = titles, embeddings.float(), source
        self.index = {t: i for i, t in enumerate(titles)}

    def __len__(self) -> int:
        return len(self.titles)

    def token_ids(self, titles: Sequence[str]) -> list[int]:
        """Item token ids of ``titles`` (``-1`` for a title outside the table)."""
        return [item_token_id(self.index.get(t)) for t in titles]

    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / ITEMS_FILE).write_text(
            json.dumps({"titles": self.titles, "source": self.source}, ensure_ascii=False)
        )
        save_file({"embeddings": self.embeddings.contiguous()}, str(out / EMBEDDINGS_FILE))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> ItemTable:
        """Read a table directory; a missing or broken file is named in the error."""
        from safetensors.torch import load_file

        root = Path(directory)
        where = f"item table {str(root)!r}"
        for name in (ITEMS_FILE, EMBEDDINGS_FILE):
            if not (root / name).is_file():
                raise FileNotFoundError(
                    f"{where}: no {name} (write one with sdpo-baseline "
                    "--model.init_args.item_table_dir)"
                )
        try:
            meta = json.loads((root / ITEMS_FILE).read_text(encoding="utf-8"))
            titles = meta["titles"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{where}: {ITEMS_FILE} is not a {{'titles': [...]}} JSON object ({err})"
            ) from None
        try:
            emb = load_file(str(root / EMBEDDINGS_FILE))["embeddings"]
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(
                f"{where}: {EMBEDDINGS_FILE} is unreadable or has no 'embeddings' ({err})"
            ) from None
        try:
            return cls(titles, emb, meta.get("source", ""))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


class HybridEmbedding(nn.Module):
    """The decoder's token embedding, with item tokens embedded by a projection.

    ``forward(ids)``: real ids (``>= 0``) → ``base(ids)``; item ids ``-(i + 2)`` →
    ``projector(items[i])``; ``-1`` → ``projector(unknown)``. Shapes: ids (...), out (..., H).

    Args:
        base: the model's ``nn.Embedding`` (kept, frozen or not, as it was).
        items: (N, d) recommender embeddings (a frozen buffer).
        hidden: projector hidden width.
    """

    def __init__(self, base: nn.Embedding, items: Tensor, hidden: int = 256) -> None:
        super().__init__()
        self.base = base
        d_item, d_model = items.shape[1], base.embedding_dim
        self.register_buffer("items", items.detach().clone().float())
        self.unknown = nn.Parameter(torch.zeros(d_item))
        self.projector = nn.Sequential(
            nn.Linear(d_item, hidden), nn.GELU(), nn.Linear(hidden, d_model)
        )
        self.to(base.weight.device)

    @property
    def weight(self) -> Tensor:
        """The token embedding matrix (what tied output heads and dtype checks read)."""
        return self.base.weight

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings

    def project(self, item_ids: Tensor) -> Tensor:
        """Projected embeddings of item ids (each ``<= -1``): (n,) → (n, H)."""
        row = -item_ids - 2  # (n,) table row, -1 = unknown
        vec = self.items[row.clamp(min=0)]  # (n, d)
        vec = torch.where((row >= 0).unsqueeze(-1), vec, self.unknown.to(vec.dtype))
        p = self.projector[0].weight
        return self.projector(vec.to(p.dtype))

    def forward(self, ids: Tensor) -> Tensor:
        item = ids < 0
        out = self.base(ids.clamp(min=0))  # (..., H)
        if not bool(item.any()):
            return out
        where = item.nonzero(as_tuple=True)
        return out.index_put(where, self.project(ids[where]).to(out.dtype))

    def projector_state(self) -> dict[str, Tensor]:
        """The trained part: projector weights and the unknown vector."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("base.", "items"))}


def hybrid_embedding(model: nn.Module) -> HybridEmbedding | None:
    """The model's :class:`HybridEmbedding`, or ``None`` for a text-only model."""
    emb = decoder_of(model).embed_tokens
    return emb if isinstance(emb, HybridEmbedding) else None


def install_hybrid(
    model: nn.Module,
    table: ItemTable,
    hidden: int,
    seed: int = 0,
    projector_dir: str | Path | None = None,
) -> HybridEmbedding:
    """Replace the decoder's ``embed_tokens`` by a :class:`HybridEmbedding` (in place).

    The projector is initialised from ``seed`` (the same seed, the same weights), or read from
    ``projector_dir``'s :data:`PROJECTOR_FILE` (an exported hybrid adapter's folder).
    """
    decoder = decoder_of(model)
    if isinstance(decoder.embed_tokens, HybridEmbedding):
        raise ValueError("the model already has hybrid item embeddings")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        emb = HybridEmbedding(decoder.embed_tokens, table.embeddings, hidden)
    emb.to(decoder.embed_tokens.weight.dtype)
    emb.items.data = emb.items.data.float()
    if projector_dir is not None:
        load_projector(emb, projector_dir)
    decoder.embed_tokens = emb
    return emb


def save_projector(emb: HybridEmbedding, table: ItemTable, directory: str | Path) -> Path:
    """Write the item table and the projector into ``directory`` (an export's hybrid folder)."""
    from safetensors.torch import save_file

    out = table.save(directory)
    state = {k: v.detach().float().contiguous() for k, v in emb.projector_state().items()}
    save_file(state, str(out / PROJECTOR_FILE))
    return out


def load_projector(emb: HybridEmbedding, directory: str | Path) -> None:
    """Read a projector written by :func:`save_projector` (shapes must match)."""
    from safetensors.torch import load_file

    path = Path(directory) / PROJECTOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"hybrid adapter {str(directory)!r}: no {PROJECTOR_FILE}")
    state = load_file(str(path))
    own = emb.projector_state()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise ValueError(
            f"{path}: projector shapes { ({k: tuple(v.shape) for k, v in state.items()}) } do not match "
            f"this model's { ({k: tuple(v.shape) for k, v in own.items()}) } (hybrid.projector_hidden?)"
        )
    with torch.no_grad():
        for k, v in emb.named_parameters():
            if k in state:
                v.copy_(state[k].to(v.dtype))


def curriculum_probability(step: int, total_steps: int, start: float, end: float) -> float:
    """Probability of the hybrid form at ``step`` of ``total_steps`` (linear from start to end)."""
    if total_steps <= 1:
        return end
    return start + (end - start) * min(max(step, 0), total_steps - 1) / (total_steps - 1)


def text_form_rows(indices: Sequence[int], seed: int, step: int, p_hybrid: float) -> list[bool]:
    """Which examples of a training batch take the text form (seeded by seed, step, index)."""
    return [random.Random(f"{seed}|{step}|{int(i)}").random() >= p_hybrid for i in indices]


def strip_item_tokens(batch: dict[str, Any], rows: Sequence[bool]) -> dict[str, Any]:
    """Remove the item tokens from the prompts of the chosen rows (the curriculum's text form).

    The text form has the text prompt's words; its ids are the pieces between item tokens,
    tokenized apart, which equal the text prompt's ids unless the tokenizer merges across a
    title's end (SmolLM2's tokenizer: 42 of the first 50 LastFM ``valid.json`` prompts equal).

    Prompts stay left-padded: (B, P) → (B, P') with P' the longest remaining prompt.
    """
    ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]  # (B, P)
    if not any(rows):
        return batch
    pad = int(ids[mask == 0][0]) if bool((mask == 0).any()) else 0
    kept = []
    for b in range(ids.shape[0]):
        real = ids[b][mask[b].bool()]
        kept.append(real[real >= 0] if rows[b] else real)
    width = max(len(k) for k in kept)
    new_ids = torch.full((len(kept), width), pad, dtype=ids.dtype, device=ids.device)
    new_mask = torch.zeros((len(kept), width), dtype=mask.dtype, device=mask.device)
    for b, k in enumerate(kept):
        new_ids[b, width - len(k) :] = k
        new_mask[b, width - len(k) :] = 1
    return {**batch, "prompt_input_ids": new_ids, "prompt_attention_mask": new_mask}
