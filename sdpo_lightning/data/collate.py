"""Datasets of encoded examples, the collate factory, and completion selection.

A collated batch holds every candidate of every example; the LightningModule then picks the
chosen completion and K negatives out of it (:func:`select_completions`, with the indices of a
:class:`~sdpo_lightning.training.negatives.NegativeSelector`), on the main process, so negative
sampling can use the epoch and the reference scores.

Batch keys (tensors unless noted):
    index (B,), target_index (B,), token_digest (B,) (64-bit hash of the example's ids),
    prompt_input_ids / prompt_attention_mask (B, P), left-padded,
    candidate_input_ids / candidate_attention_mask (B, M, C), right-padded,
    candidate_mask (B, M) bool (False for padding candidates),
    candidate_popularity (B, M) float,
    candidates, target, prompt, history: lists (not moved to device; ``history``: the
    example's whole history, oldest first, whatever the prompt kept of it).
After :func:`select_completions`: completion_input_ids / completion_attention_mask
(B, N, C) and completion_index (B, N), the chosen completion first.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sdpo_lightning.data.negatives import example_generator, sample_negatives
from sdpo_lightning.data.prompts import EncodedExample
from sdpo_lightning.data.records import Example


class RecDataset(Dataset):
    """Examples of one split, tokenized lazily when an item is first asked for.

    Nothing is tokenized up front: ``dataset[i]`` renders example ``i``'s prompt and
    tokenizes it with ``encode`` (the same :meth:`PromptBuilder.encode` the eager path used,
    so the ids are the same). Per example only the number of history items that fit
    ``max_length`` is remembered (2 bytes), so a second access tokenizes the prompt once, with
    no truncation search; title ids are cached by the encoder's title table.

    Args:
        examples: the records (a :class:`~sdpo_lightning.data.compact.CompactExamples` or a list).
        encode: ``encode(example, index) -> EncodedExample``.
        popularity: target counts of the training split (for ``popularity`` negatives).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        encode: Callable[[Example, int], EncodedExample],
        popularity: dict[str, int] | None = None,
    ) -> None:
        self.examples = examples
        self._encode = encode
        self.popularity = popularity or {}
        self._history_used = np.full(len(examples), -1, dtype=np.int32)  # -1: not encoded yet
        self.encoded = _LazyEncoded(self)

    def __len__(self) -> int:
        return len(self.examples)

    def encode(self, index: int) -> EncodedExample:
        """Token ids of example ``index`` (oldest history dropped to fit, as in the eager path)."""
        ex = self.examples[index]
        used = int(self._history_used[index])
        if 0 < used < len(ex.history):  # known to fit with its ``used`` latest items
            ex = dataclasses.replace(ex, history=ex.history[-used:])
        enc = self._encode(ex, index)
        self._history_used[index] = enc.history_used
        return enc

    def n_candidates(self, index: int) -> int:
        """Candidates of example ``index`` (without tokenizing it)."""
        counter = getattr(self.examples, "n_candidates", None)
        return counter(index) if counter is not None else len(self.examples[index].candidates)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._item(index, self.examples[index], self.encode(index))

    def _item(self, index: int, ex: Example, enc: EncodedExample) -> dict[str, Any]:
        """The item of example ``index`` (record ``ex``, encoded as ``enc``) that collate reads."""
        return {
            "index": index,
            "prompt_ids": enc.prompt_ids,
            "candidate_ids": enc.candidate_ids,
            "target_index": enc.target_index,
            "token_digest": token_digest(enc.prompt_ids, enc.candidate_ids),
            "popularity": [float(self.popularity.get(c, 0)) for c in ex.candidates],
            "candidates": list(ex.candidates),
            "target": ex.target,
            "prompt": enc.prompt,
            "history": list(ex.history),
        }


class _LazyEncoded(Sequence[EncodedExample]):
    """``dataset.encoded[i]``: the encoding of example ``i``, computed on access."""

    def __init__(self, dataset: RecDataset) -> None:
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> EncodedExample:  # type: ignore[override]
        return self._dataset.encode(index)


def token_digest(prompt_ids: Sequence[int], candidate_ids: Sequence[Sequence[int]]) -> int:
    """A signed 64-bit BLAKE2b digest of one example's prompt and candidate token ids."""
    h = hashlib.blake2b(digest_size=8)
    h.update(np.asarray(prompt_ids, dtype=np.int64).tobytes())
    for ids in candidate_ids:
        h.update(b"|")
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)


def make_collate(pad_token_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """A collate function padding prompts on the left and completions on the right."""

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        b = len(items)
        p = max(len(it["prompt_ids"]) for it in items)
        m = max(len(it["candidate_ids"]) for it in items)
        c = max(len(ids) for it in items for ids in it["candidate_ids"])
        prompt = torch.full((b, p), pad_token_id, dtype=torch.long)
        prompt_mask = torch.zeros((b, p), dtype=torch.long)
        cand = torch.full((b, m, c), pad_token_id, dtype=torch.long)
        cand_mask = torch.zeros((b, m, c), dtype=torch.long)
        cand_valid = torch.zeros((b, m), dtype=torch.bool)
        pop = torch.zeros((b, m), dtype=torch.float)
        for i, it in enumerate(items):
            ids = it["prompt_ids"]
            prompt[i, p - len(ids) :] = torch.tensor(ids)
            prompt_mask[i, p - len(ids) :] = 1
            for j, cids in enumerate(it["candidate_ids"]):
                cand[i, j, : len(cids)] = torch.tensor(cids)
                cand_mask[i, j, : len(cids)] = 1
                cand_valid[i, j] = True
            pop[i, : len(it["popularity"])] = torch.tensor(it["popularity"])
        return {
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "target_index": torch.tensor([it["target_index"] for it in items], dtype=torch.long),
            "token_digest": torch.tensor([it["token_digest"] for it in items], dtype=torch.long),
            "prompt_input_ids": prompt,
            "prompt_attention_mask": prompt_mask,
            "candidate_input_ids": cand,
            "candidate_attention_mask": cand_mask,
            "candidate_mask": cand_valid,
            "candidate_popularity": pop,
            "candidates": [it["candidates"] for it in items],
            "target": [it["target"] for it in items],
            "prompt": [it["prompt"] for it in items],
            "history": [it["history"] for it in items],
        }

    return collate


def negative_indices(
    batch: dict[str, Any],
    k: int,
    strategy: str,
    seed: int,
    epoch: int,
    scores: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Draw K negatives per example of a collated batch → (B, K) candidate indices."""
    out = []
    for i in range(len(batch["candidates"])):
        n = int(batch["candidate_mask"][i].sum())
        out.append(
            sample_negatives(
                n_candidates=n,
                target_index=int(batch["target_index"][i]),
                k=k,
                strategy=strategy,
                generator=example_generator(seed, epoch, int(batch["index"][i])),
                weights=batch["candidate_popularity"][i, :n].cpu(),
                scores=None if scores is None else scores[i, :n].cpu(),
                temperature=temperature,
            )
        )
    return torch.tensor(out, dtype=torch.long).view(len(out), k)


def select_completions(batch: dict[str, Any], negatives: torch.Tensor) -> dict[str, Any]:
    """Add the chosen completion and the given negatives as ``completion_*`` keys.

    Args:
        batch: a collated batch.
        negatives: (B, K) candidate indices of the negatives.
    """
    device = batch["candidate_input_ids"].device
    index = torch.cat([batch["target_index"].view(-1, 1).cpu(), negatives.cpu()], dim=1)  # (B, N)
    index = index.to(device)
    c = batch["candidate_input_ids"].shape[-1]
    gather = index.unsqueeze(-1).expand(-1, -1, c)  # (B, N, C)
    ids = torch.gather(batch["candidate_input_ids"], 1, gather)
    mask = torch.gather(batch["candidate_attention_mask"], 1, gather)
    keep = int(mask.sum(dim=(0, 1)).nonzero().max()) + 1  # trim padding columns
    batch = dict(batch)
    batch["completion_input_ids"] = ids[..., :keep]
    batch["completion_attention_mask"] = mask[..., :keep]
    batch["completion_index"] = index
    return batch
