"""On-policy catalogue negatives: the policy's own top items over the whole catalogue.

With ``data.train_protocol: all_item`` and ``data.negative_sampling: on_policy_beam`` each
training row's K negatives are the first K non-target items of the policy's top ``K + 1`` by
the all-item protocol's constrained beam search over every catalogue title
(:func:`~sdpo_lightning.evaluation.beam_search.constrained_beam_search`; history items
excluded, summed log-probs, no length penalty), run on the row's history-only prompt with the
policy in eval mode and without gradient. The row's drawn candidates are replaced by
``(target, n_1, ..., n_K)`` before the step (:func:`beam_candidates`), so scoring, the reference
(live, or the cache, which re-scores a row whose token digest changed) and the objectives see an
ordinary candidate list. Rows are re-searched when their beams are ``refresh_steps`` optimizer
steps old (``docs/negatives.md``). Beam search is deterministic (ties: the lower item index).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from sdpo_lightning.data.catalogue import Catalogue
from sdpo_lightning.data.collate import token_digest
from sdpo_lightning.evaluation.beam_search import CatalogueTrie, constrained_beam_search
from sdpo_lightning.scoring.reference_cache import eval_mode
from sdpo_lightning.training.negatives import NegativeSelector, rows_of


def beam_candidates(
    batch: dict[str, Any],
    negatives: list[list[int]],
    trie: CatalogueTrie,
    catalogue: Catalogue,
    pad_token_id: int,
) -> dict[str, Any]:
    """The batch with each row's candidates replaced by ``(target, negatives...)``.

    Args:
        batch: a collated batch (``candidate_*``, ``target_index``, ``prompt_*``).
        negatives: per row, K catalogue item indices (never the target).
        trie: the catalogue trie (each item's completion token ids).
        catalogue: the catalogue (titles, popularity).
        pad_token_id: padding of the new candidate tensors.

    Returns:
        a new batch: ``candidate_input_ids`` / ``_attention_mask`` ``(B, 1 + K, C')``,
        ``candidate_mask (B, 1 + K)``, ``candidate_popularity``, ``candidates``,
        ``target_index`` (zeros) and ``token_digest`` of the new rows.
    """
    device = batch["candidate_input_ids"].device
    ids, mask = batch["candidate_input_ids"].cpu(), batch["candidate_attention_mask"].cpu()
    rows: list[list[list[int]]] = []
    for b, items in enumerate(negatives):
        t = int(batch["target_index"][b])
        target = ids[b, t][mask[b, t].bool()].tolist()
        rows.append([target] + [trie.sequence(i) for i in items])
    n, c = len(rows[0]), max(len(s) for r in rows for s in r)
    cand = torch.full((len(rows), n, c), pad_token_id, dtype=torch.long)  # (B, 1 + K, C')
    cmask = torch.zeros((len(rows), n, c), dtype=torch.long)
    for b, row in enumerate(rows):
        for j, seq in enumerate(row):
            cand[b, j, : len(seq)] = torch.tensor(seq)
            cmask[b, j, : len(seq)] = 1
    pop = catalogue.popularity
    titles = [
        [batch["candidates"][b][int(batch["target_index"][b])]]
        + [catalogue.titles[i] for i in items]
        for b, items in enumerate(negatives)
    ]
    popularity = torch.tensor(
        [[float(pop[catalogue.index[x]]) if pop is not None else 0.0 for x in r] for r in titles]
    )
    digests = []
    for b, row in enumerate(rows):
        prompt = batch["prompt_input_ids"][b][batch["prompt_attention_mask"][b].bool()].tolist()
        digests.append(token_digest(prompt, row))
    out = dict(batch)
    out.update(
        candidate_input_ids=cand.to(device),
        candidate_attention_mask=cmask.to(device),
        candidate_mask=torch.ones((len(rows), n), dtype=torch.bool, device=device),
        candidate_popularity=popularity.to(device),
        candidates=titles,
        target_index=torch.zeros(len(rows), dtype=torch.long, device=device),
        token_digest=torch.tensor(digests, dtype=torch.long, device=device),
    )
    return out


class CatalogueBeamNegatives(NegativeSelector):
    """The policy's top catalogue items as negatives (module docstring).

    Args:
        policy: returns the current policy (the module's).
        catalogue: the training catalogue (the data module's).
        tokenizer: the model's tokenizer (completion ids, padding).
        completion_prefix: the data's resolved completion prefix.
        step: the current optimizer step.
        refresh_steps: how many optimizer steps a row's beams are reused for (>= 1).
        beam_width: live beams per row (default ``K + 1``; the catalogue size is exact).
        kv_sharing: the beam search's prompt-cache reading (``auto`` | ``shared`` | ``expand``).

    :meth:`stats`: ``target_top1`` (the target is the policy's top item), ``target_in_beams``
    (the target is among its top K + 1), ``mean_rank`` (the negatives' mean rank among the top
    K + 1), ``refreshed`` (share of rows searched at this step).
    """

    needs_reference: ClassVar[bool] = False

    def __init__(
        self,
        policy: Callable[[], nn.Module],
        catalogue: Catalogue,
        tokenizer: Any,
        completion_prefix: str,
        step: Callable[[], int],
        refresh_steps: int = 1,
        beam_width: int | None = None,
        kv_sharing: str = "auto",
    ) -> None:
        if not (isinstance(refresh_steps, int) and refresh_steps >= 1):
            raise ValueError(
                f"on_policy_refresh_steps must be a positive integer, got {refresh_steps!r}"
            )
        self.policy, self.catalogue, self.tokenizer = policy, catalogue, tokenizer
        self.step, self.refresh_steps, self.beam_width, self.kv_sharing = (
            step,
            refresh_steps,
            beam_width,
            kv_sharing,
        )
        self.trie = CatalogueTrie.from_titles(
            catalogue.titles, tokenizer, completion_prefix, catalogue.source
        )
        self._cache: dict[
            int, tuple[int, list[int]]
        ] = {}  # example index -> (step, top K + 1 items)
        self._stats: dict[str, float] = {}

    def beams(self, batch: dict[str, Any], k: int) -> torch.Tensor:
        """``(B, K + 1)`` the policy's top catalogue items of each row (history excluded)."""
        cat = self.catalogue
        exclude = [
            sorted({cat.index[t] for t in hist if t in cat.index}) for hist in batch["history"]
        ]
        policy = self.policy()
        width = max(k + 1, self.beam_width or 0)
        with torch.no_grad(), eval_mode(policy):
            result = constrained_beam_search(
                policy,
                batch["prompt_input_ids"],
                batch["prompt_attention_mask"],
                self.trie,
                k + 1,
                width,
                exclude,
                kv_sharing=self.kv_sharing,
            )
        if bool((result.items < 0).any()):
            raise ValueError(
                f"on_policy_beam: a row has fewer than {k + 1} catalogue items outside its history"
            )
        return result.items.cpu()

    def propose(self, batch: dict[str, Any], k: int, epoch: int) -> dict[str, Any]:
        step = int(self.step())
        index = batch["index"].tolist()
        due = [
            i
            for i, row in enumerate(index)
            if row not in self._cache
            or step - self._cache[row][0] >= self.refresh_steps
            or len(self._cache[row][1]) != k + 1
        ]
        if due:
            fresh = self.beams(rows_of(batch, torch.tensor(due)), k)  # (R, K + 1)
            for j, i in enumerate(due):
                self._cache[index[i]] = (step, fresh[j].tolist())
        negatives, top1, within, ranks = [], 0, 0, []
        for b, row in enumerate(index):
            top = self._cache[row][1]
            target = self.catalogue.index[batch["target"][b]]
            top1 += top[0] == target
            within += target in top
            chosen = [(r, i) for r, i in enumerate(top, start=1) if i != target][:k]
            negatives.append([i for _, i in chosen])
            ranks.extend(r for r, _ in chosen)
        n = max(1, len(index))
        self._stats = {
            "target_top1": top1 / n,
            "target_in_beams": within / n,
            "mean_rank": sum(ranks) / max(1, len(ranks)),
            "refreshed": len(due) / n,
        }
        return beam_candidates(
            batch, negatives, self.trie, self.catalogue, self.tokenizer.pad_token_id
        )

    def select(self, batch: dict[str, Any], k: int, epoch: int) -> torch.Tensor:
        """The proposed negatives: candidates ``1..K`` of each row."""
        return torch.arange(1, k + 1).repeat(len(batch["index"]), 1)  # (B, K)

    def stats(self) -> dict[str, float]:
        return dict(self._stats)
