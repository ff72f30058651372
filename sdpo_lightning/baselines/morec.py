"""MoRec (Yuan et al., SIGIR 2023, "Where to go next for recommender systems? ID- vs.
modality-based recommender models revisited"): SASRec over item representations from a frozen
text encoder of the titles — the S-DPO paper's Table 1 row.

* **Text embeddings.** Each item title is run through a causal LM (default: SmolLM2-135M, the
  project's GGUF, loaded by :mod:`sdpo_lightning.modeling.models`), frozen; its representation
  is the **mean over the title's tokens of the last hidden layer** (the decoder's output after
  its final norm), ``H`` floats. The embeddings of the fitted vocabulary's titles are computed
  once and cached in ``embedding_cache_dir`` under a name keyed by the encoder (path, file size,
  tiny config) and the titles (:func:`embedding_cache_path`); a later run with the same encoder
  and titles reads the file. Padding (id 0) and unknown (id 1) get zero vectors.
* **Model.** The embeddings are standardised per dimension (over the items) and mapped by a
  trainable ``Linear(H, d)``; that table replaces SASRec's item-embedding table, at the input
  and at the output (logits = final hidden state · projected item vectors). Everything else is
  :class:`~.sasrec.SASRec`: same blocks, same full-softmax cross-entropy training loop, checkpoint
  selection, candidate-list and all-item tests (:mod:`.seqrec_module`).

Config: ``configs/baselines/morec_lastfm.yaml``. The projection starts with std
``(H·d)^-1/2`` so projected items start at SASRec's ``d^-1/2`` scale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdpo_lightning.baselines.sasrec import SASRec

__all__ = ["MoRec", "embedding_cache_path", "encode_titles", "title_embeddings"]

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf"


@torch.no_grad()
def encode_titles(
    titles: Sequence[str],
    model: nn.Module,
    tokenizer: Any,
    batch_size: int = 64,
    max_tokens: int = 32,
) -> Tensor:
    """(len(titles), H) float32: each title's mean-pooled last hidden layer of ``model`` (a
    causal LM; its decoder's output, after the final norm). No special tokens are added."""
    decoder = getattr(model, "model", model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    # batches of titles of similar token length (little padding), results in the given order
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in titles]
    order = sorted(range(len(titles)), key=lambda i: lengths[i])
    out: list[Tensor] = []
    try:
        for i in range(0, len(order), batch_size):
            batch = [titles[j] for j in order[i : i + batch_size]]
            enc = tokenizer(
                batch,
                add_special_tokens=False,
                padding=True,
                truncation=True,
                max_length=max_tokens,
                return_tensors="pt",
            )
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            h = decoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # (B, T, H)
            m = mask.unsqueeze(-1).float()
            out.append(((h * m).sum(1) / m.sum(1).clamp_min(1.0)).cpu())
    finally:
        model.train(was_training)
    emb = torch.cat(out)
    result = torch.empty_like(emb)
    result[torch.tensor(order, dtype=torch.long)] = emb
    return result


def _encoder_key(
    encoder: str | None, tokenizer_path: str | None, tiny_config: dict | None, max_tokens: int
) -> dict[str, Any]:
    key: dict[str, Any] = {"pooling": "mean_last_hidden", "max_tokens": max_tokens}
    if encoder is None:
        key.update(tiny_config=tiny_config or {}, tokenizer=tokenizer_path)
    else:
        path = Path(encoder)
        key.update(encoder=path.name, size=path.stat().st_size if path.exists() else None)
    return key


def embedding_cache_path(
    cache_dir: str | os.PathLike,
    titles: Sequence[str],
    encoder: str | None,
    tokenizer_path: str | None = None,
    tiny_config: dict | None = None,
    max_tokens: int = 32,
) -> Path:
    """``<cache_dir>/<encoder name>-<hash of encoder settings>-<hash of titles>.pt``."""
    key = json.dumps(_encoder_key(encoder, tokenizer_path, tiny_config, max_tokens), sort_keys=True)
    k = hashlib.sha256(key.encode()).hexdigest()[:12]
    t = hashlib.sha256("\x1f".join(titles).encode("utf-8")).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(encoder).stem if encoder else "tiny")
    return Path(cache_dir) / f"{name}-{k}-{len(titles)}items-{t}.pt"


def title_embeddings(
    titles: Sequence[str],
    encoder: str | None,
    tokenizer_path: str | None = None,
    tiny_config: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    max_tokens: int = 32,
    init_seed: int = 0,
) -> Tensor:
    """The titles' text embeddings (:func:`encode_titles`), read from / written to the cache.

    Args:
        titles: item titles.
        encoder: a ``.gguf`` file or HF model directory; ``None``: a tiny LLaMA built from
            ``tiny_config`` (seeded by ``init_seed``) with the tokenizer at ``tokenizer_path``.
        cache_dir: where the embeddings are cached (``None``: no cache).
    """
    path = None
    if cache_dir is not None:
        path = embedding_cache_path(
            cache_dir, titles, encoder, tokenizer_path, tiny_config, max_tokens
        )
        if path.exists():
            data = torch.load(path, map_location="cpu", weights_only=True)
            if data["titles"] == list(titles):
                log.info("MoRec: text embeddings read from %s", path)
                return data["embeddings"]
    from sdpo_lightning.modeling.models import build_policy, load_tokenizer

    tok = load_tokenizer(encoder, tokenizer_path=tokenizer_path)
    model = build_policy(encoder, tok, tiny_config=tiny_config, init_seed=init_seed)
    model.requires_grad_(False)
    emb = encode_titles(titles, model, tok, batch_size, max_tokens)
    del model
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(
            {
                "titles": list(titles),
                "embeddings": emb,
                "key": _encoder_key(encoder, tokenizer_path, tiny_config, max_tokens),
            },
            tmp,
        )
        os.replace(tmp, path)
        log.info(
            "MoRec: text embeddings of %d titles (H=%d) cached in %s",
            len(titles),
            emb.shape[1],
            path,
        )
    return emb


class MoRec(SASRec):
    """SASRec whose item table is ``Linear(frozen text embedding of the title)``.

    Args:
        num_items, max_len, d, num_blocks, num_heads, dropout, lr, weight_decay, report_dir,
            method: as :class:`~.sasrec.SASRec`.
        encoder: the text encoder (``.gguf`` or HF directory; ``None`` with ``tiny_config``).
        tokenizer_path: tokenizer of a tiny encoder.
        tiny_config: ``LlamaConfig`` overrides of a tiny encoder built in code (tests).
        embedding_cache_dir: cache of the text embeddings (``None``: recompute every run).
        encode_batch_size: titles per encoder batch.
        max_title_tokens: tokens of a title kept.

    The item table is built in :meth:`setup` from the data module's vocabulary (the fitted
    titles): the text embeddings are a non-persistent buffer, only the projection is saved.
    """

    method_name = "MoRec"

    def __init__(
        self,
        num_items: int,
        max_len: int = 10,
        d: int = 64,
        num_blocks: int = 2,
        num_heads: int = 1,
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        report_dir: str | None = None,
        method: str | None = None,
        encoder: str | None = DEFAULT_ENCODER,
        tokenizer_path: str | None = None,
        tiny_config: dict[str, Any] | None = None,
        embedding_cache_dir: str | None = "runs/morec_cache",
        encode_batch_size: int = 64,
        max_title_tokens: int = 32,
    ) -> None:
        super().__init__(
            num_items,
            max_len,
            d,
            num_blocks,
            num_heads,
            dropout,
            lr,
            weight_decay,
            report_dir,
            method,
        )
        self.save_hyperparameters()
        del self.embed  # the item table comes from the text embeddings
        self.d = d
        self.proj: nn.Linear | None = None
        self.register_buffer("text_emb", torch.zeros(0), persistent=False)

    def set_text_embeddings(self, emb: Tensor) -> None:
        """Install ``(num_items, H)`` raw text embeddings (rows 0 and 1, padding and unknown, are
        zeroed); standardised per dimension over the items; makes the projection if needed."""
        if emb.shape[0] != self.num_items:
            raise ValueError(f"{emb.shape[0]} text embeddings for {self.num_items} items")
        emb = emb.float().clone()
        items = emb[2:]
        emb[2:] = (items - items.mean(0)) / items.std(0).clamp_min(1e-6)
        emb[:2] = 0.0
        h = emb.shape[1]
        if self.proj is None or self.proj.in_features != h:
            self.proj = nn.Linear(h, self.d).to(self.pos.weight.device)
            nn.init.normal_(self.proj.weight, std=(h * self.d) ** -0.5)
            nn.init.zeros_(self.proj.bias)
        self.text_emb = emb.to(self.pos.weight.device)

    def setup(self, stage: str) -> None:
        if self.text_emb.numel():
            return
        vocab = self.trainer.datamodule.vocab
        titles = sorted(vocab.ids, key=vocab.ids.get)  # ids 2, 3, ...
        hp = self.hparams
        emb = title_embeddings(
            titles,
            hp.encoder,
            hp.tokenizer_path,
            hp.tiny_config,
            hp.embedding_cache_dir,
            hp.encode_batch_size,
            hp.max_title_tokens,
        )
        self.set_text_embeddings(torch.cat([torch.zeros(2, emb.shape[1]), emb]))

    def item_table(self) -> Tensor:
        if self.proj is None:
            raise RuntimeError("MoRec has no text embeddings yet (set_text_embeddings / setup)")
        table = self.proj(self.text_emb)
        return table * (torch.arange(len(table), device=table.device) != 0).unsqueeze(1)  # pad = 0

    def embed_items(self, seq: Tensor, table: Tensor) -> Tensor:
        return F.embedding(seq, table)

    def write_item_table(self, directory: str | os.PathLike) -> Path:
        """Not available: MoRec's items are projected text embeddings, not an ``embed`` table."""
        raise NotImplementedError("MoRec does not write a hybrid item table")
