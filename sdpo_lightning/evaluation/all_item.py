"""The all-item protocol: rank the whole catalogue from a history-only prompt (``docs/all_item.md``).

Per test row:

1. **Prompt**: a history-only template (:data:`~sdpo_lightning.data.prompts.HISTORY_PRESETS`,
   seeded per row as the candidate-list templates are), the oldest history items dropped until
   the prompt plus the longest catalogue completion fit ``max_length``.
2. **History rule**: every item of the row's history (as the data file gives it, whether or not
   it fit in the prompt) is excluded from the row's top ``N`` — the same for every method and
   row. In the data sets at hand the target is never in its own history (``sdpo-prepare`` keeps a
   user's first interaction with an item; the public LastFM files have no such row); a row where
   it is cannot be hit, and is counted (``n_target_in_history`` in the summary's ``catalogue``).
3. **Top N**: :func:`~sdpo_lightning.evaluation.beam_search.constrained_beam_search` over the trie
   of every catalogue title, from one prefill of the prompts.
4. **Free generation** (optional, from the same prefill): greedy decoding, cut after the first
   non-blank line; *valid* when it names one catalogue title
   (:meth:`~sdpo_lightning.data.catalogue.Catalogue.match`), *correct* when that is the target.

Each row's record gets an ``all_item`` part (:meth:`AllItemProtocol.run`); the metrics are
computed from the records (:mod:`.all_item_metrics`, :class:`~.metrics.AllItemMetrics`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sdpo_lightning.data.catalogue import Catalogue
from sdpo_lightning.data.prompts import PromptBuilder
from sdpo_lightning.data.records import DataFormatError
from sdpo_lightning.evaluation.beam_search import (
    CatalogueTrie,
    check_beam_settings,
    constrained_beam_search,
)
from sdpo_lightning.evaluation.decoding import greedy_decode, prefill
from sdpo_lightning.evaluation.parsing import answer_scope

__all__ = ["AllItemProtocol"]

log = logging.getLogger(__name__)


class AllItemProtocol:
    """What the all-item protocol needs for one evaluation: the catalogue and its trie, the
    history-only prompts and the decoding settings.

    Args:
        catalogue: every item (:class:`~sdpo_lightning.data.catalogue.Catalogue`).
        tokenizer: the model's tokenizer.
        prompts: a history-only :class:`~sdpo_lightning.data.prompts.PromptBuilder` (its
            completion prefix is resolved for ``tokenizer`` here).
        max_length: token budget of prompt + the longest catalogue completion.
        top_n: ``N``, items returned per row.
        beam_width: beams kept per row (default ``top_n``; >= ``top_n``).
        length_penalty: 0 ranks by summed log-probs (default); ``a > 0`` by ``sum / n ** a``.
        free_generation: also decode greedily and read the answer (ValidRatio).
        max_new_tokens: free generation's budget.
        kv_sharing: ``auto`` | ``shared`` | ``expand`` (:func:`constrained_beam_search`).
        source: the evaluated data file (named in errors).

    Raises:
        ValueError: ``top_n`` larger than the catalogue, ``beam_width < top_n``, or two titles
            with the same token ids.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        tokenizer: Any,
        prompts: PromptBuilder,
        max_length: int,
        top_n: int = 20,
        beam_width: int | None = None,
        length_penalty: float = 0.0,
        free_generation: bool = True,
        max_new_tokens: int = 32,
        kv_sharing: str = "auto",
        source: str = "data",
    ) -> None:
        self.catalogue, self.tokenizer, self.prompts = catalogue, tokenizer, prompts
        self.beam_width = check_beam_settings(len(catalogue), top_n, beam_width)
        self.top_n, self.max_length, self.length_penalty = top_n, max_length, length_penalty
        self.free_generation, self.max_new_tokens = free_generation, max_new_tokens
        self.kv_sharing, self.source = kv_sharing, source
        prefix = prompts.resolve_prefix(tokenizer)
        self.trie = CatalogueTrie.from_titles(
            catalogue.titles, tokenizer, prefix, source=catalogue.source
        )
        self.n_target_in_history = 0
        pad = tokenizer.pad_token_id
        self.pad_token_id = tokenizer.eos_token_id if pad is None else pad

    def meta(self) -> dict[str, Any]:
        """The summary's ``catalogue`` entry: the catalogue, the settings and the history rule."""
        pop = self.catalogue.popularity
        return {
            "file": self.catalogue.source,
            "n_items": len(self.catalogue),
            "total_popularity": None if pop is None else int(pop.sum()),
            "top_n": self.top_n,
            "beam_width": self.beam_width,
            "length_penalty": self.length_penalty,
            "history_rule": "excluded",
            "n_target_in_history": self.n_target_in_history,
        }

    def encode(
        self, histories: Sequence[Sequence[str]], indices: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Left-padded history-only prompts ``(B, P)``, their mask and texts."""
        texts, ids = [], []
        for hist, index in zip(histories, indices, strict=True):
            text, row, _ = self.prompts.encode_history(
                hist, index, self.tokenizer, self.max_length, self.trie.max_length, self.source
            )
            texts.append(text)
            ids.append(row)
        P = max(map(len, ids))
        p_ids = torch.full((len(ids), P), self.pad_token_id, dtype=torch.long)
        p_mask = torch.zeros((len(ids), P), dtype=torch.long)
        for i, row in enumerate(ids):
            p_ids[i, P - len(row) :] = torch.tensor(row)
            p_mask[i, P - len(row) :] = 1
        return p_ids, p_mask, texts

    @torch.no_grad()
    def run(self, model: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """The ``all_item`` record part of each row of ``batch`` (keys ``index``, ``history``,
        ``target``): ``prompt``; ``items`` and ``scores`` (top ``N``, best first);
        ``target_rank`` (1-based, null outside the top ``N``); ``popularity`` and
        ``target_popularity`` (when the catalogue has popularity); ``generated``, ``parsed``,
        ``valid``, ``correct`` (free generation). Rows without a target get no ``target_*`` /
        ``correct``. Call with the model in eval mode.

        Raises:
            DataFormatError: a target that is not in the catalogue (naming the data file and
                the record).
        """
        cat = self.catalogue
        indices = [int(i) for i in batch["index"].tolist()]
        histories, targets = batch["history"], batch["target"]
        for index, target in zip(indices, targets, strict=True):
            if target is not None and target not in cat.index:
                raise DataFormatError(
                    self.source,
                    f"record {index}",
                    f"target {target!r} is not in the catalogue {cat.source} ({len(cat)} items)",
                )
        exclude = [sorted({cat.index[t] for t in hist if t in cat.index}) for hist in histories]
        device = next(model.parameters()).device
        p_ids, p_mask, texts = self.encode(histories, indices)
        p_ids, p_mask = p_ids.to(device), p_mask.to(device)
        first, cache = prefill(model, p_ids, p_mask)
        answers: list[str] | None = None
        if self.free_generation:
            tok = self.tokenizer

            def decode(t: list[int]) -> str:
                return tok.decode(t, skip_special_tokens=True)

            tokens = greedy_decode(
                model,
                first,
                cache,
                p_mask,
                self.max_new_tokens,
                tok.eos_token_id,
                self.pad_token_id,
                decode=decode,
            )
            extra = cache.get_seq_length() - p_ids.shape[1]
            if extra:  # back to the prompt positions, for the beams (a negative crop: any version)
                cache.crop(-extra)
            answers = tok.batch_decode(tokens, skip_special_tokens=True)
        top = constrained_beam_search(
            model,
            p_ids,
            p_mask,
            self.trie,
            self.top_n,
            self.beam_width,
            exclude=exclude,
            length_penalty=self.length_penalty,
            prompt_cache=(first, cache),
            kv_sharing=self.kv_sharing,
        )
        out = []
        for b, (target, hist) in enumerate(zip(targets, histories, strict=True)):
            items = [i for i in top.items[b].tolist() if i >= 0]
            part: dict[str, Any] = {
                "prompt": texts[b],
                "items": [cat.titles[i] for i in items],
                "scores": [round(float(x), 4) for x in top.scores[b, : len(items)].tolist()],
            }
            if target is not None:
                t = cat.index[target]
                part["target_rank"] = items.index(t) + 1 if t in items else None
                if target in hist:
                    self.n_target_in_history += 1
            if cat.popularity is not None:
                part["popularity"] = [int(cat.popularity[i]) for i in items]
                if target is not None:
                    part["target_popularity"] = int(cat.popularity[cat.index[target]])
            if answers is not None:
                item = cat.match(answer_scope(answers[b]))
                part.update(
                    generated=answers[b],
                    parsed=None if item is None else cat.titles[item],
                    valid=item is not None,
                )
                if target is not None:
                    part["correct"] = item is not None and cat.titles[item] == target
            out.append(part)
        return out
