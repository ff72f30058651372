"""All-item training rows: a history-only prompt and completions drawn from the whole catalogue.

With ``data.train_protocol: all_item`` the training (and validation) rows keep their history and
target but not their candidate list: each row's candidates become ``(target, d_1, ..., d_M)``,
``M = data.catalogue_candidates`` items of ``catalogue.json`` drawn without replacement —
uniformly (``data.catalogue_sampling: uniform``) or weighted by training popularity + 1
(``popularity``) — never the target nor an item of the row's history. The draws are seeded by
``(seed, epoch, example index)`` (validation: one fixed draw), so the same config and seed give
the same rows whatever the number of workers or processes. The prompt is the history-only
template of the data's preset (:data:`~sdpo_lightning.data.prompts.HISTORY_PRESETS`), as in the
all-item evaluation. The rest — collate, scoring, the reference cache, the negative selectors —
applies unchanged: a selector picks the K negatives among the ``M`` draws (``random``: K
uniform catalogue items; ``on_policy``: the policy's top K of the ``M``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from sdpo_lightning.data.catalogue import Catalogue
from sdpo_lightning.data.collate import RecDataset
from sdpo_lightning.data.negatives import example_generator
from sdpo_lightning.data.prompts import EncodedExample
from sdpo_lightning.data.records import Example

CatalogueSampling = Literal["uniform", "popularity"]
CATALOGUE_SAMPLINGS = ("uniform", "popularity")
#: the fixed epoch of validation rows' draws
VAL_DRAW_EPOCH = -1
_SALT = (
    0x5EED_CA7A  # keeps these draws apart from the negative selectors' (same seed, epoch, index)
)


def catalogue_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The CPU generator of one row's catalogue draws (independent of the selectors' draws)."""
    return example_generator(seed ^ _SALT, epoch, index)


def draw_catalogue_items(
    n_items: int,
    exclude: Sequence[int],
    m: int,
    generator: torch.Generator,
    popularity: torch.Tensor | None = None,
) -> list[int]:
    """``m`` distinct catalogue indices, none of them in ``exclude``.

    Args:
        n_items: catalogue size.
        exclude: indices never drawn (the row's target and history).
        m: how many to draw.
        generator: the row's seeded generator (:func:`catalogue_generator`).
        popularity: ``(n_items,)`` training counts: draws weighted by count + 1 (Gumbel top-k);
            ``None``: uniform.

    Raises:
        ValueError: fewer than ``m`` items left after the exclusion.
    """
    banned = torch.zeros(n_items, dtype=torch.bool)
    if len(exclude):
        banned[torch.as_tensor(list(exclude), dtype=torch.long)] = True
    left = int((~banned).sum())
    if m > left:
        raise ValueError(
            f"data.catalogue_candidates {m} is more than the {left} catalogue items left "
            "after a row's target and history"
        )
    u = torch.rand(n_items, generator=generator, dtype=torch.float64)  # (n_items,)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    logits = (
        torch.zeros(n_items, dtype=torch.float64)
        if popularity is None
        else torch.log(popularity.double() + 1.0)
    )
    keys = (logits + gumbel).masked_fill(banned, float("-inf"))
    return torch.topk(keys, m).indices.tolist()


class CatalogueDataset(RecDataset):
    """A split whose rows' candidates are the target and ``m`` catalogue draws, re-drawn per epoch.

    ``dataset[i]`` is row ``i`` with the draws of ``default_epoch``; ``dataset[(i, epoch)]``
    (what the training sampler yields) those of ``epoch``. The prompt is re-fitted to
    ``max_length`` for each draw (the longest drawn completion counts), so nothing depends on
    the order rows are read in.

    Args:
        examples: the records (their own candidate lists are ignored).
        encode: ``encode(example, index) -> EncodedExample`` with history-only templates.
        catalogue: the items to draw from (targets must be in it).
        m: draws per row.
        seed: seeds the draws, with the epoch and the row index.
        sampling: ``uniform`` or ``popularity`` (the catalogue's training popularity).
        default_epoch: the draws of a plain integer index (validation: :data:`VAL_DRAW_EPOCH`).
        popularity: target counts of the training split (for ``popularity`` negatives).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        encode: Callable[[Example, int], EncodedExample],
        catalogue: Catalogue,
        m: int,
        seed: int = 0,
        sampling: CatalogueSampling = "uniform",
        default_epoch: int = 0,
        popularity: dict[str, int] | None = None,
    ) -> None:
        super().__init__(examples, encode, popularity)
        if sampling not in CATALOGUE_SAMPLINGS:
            raise ValueError(
                f"data.catalogue_sampling must be one of {CATALOGUE_SAMPLINGS}, got {sampling!r}"
            )
        if sampling == "popularity" and catalogue.popularity is None:
            raise ValueError(
                f"data.catalogue_sampling popularity: {catalogue.source} has no popularity counts"
            )
        self.catalogue, self.m, self.seed, self.sampling = catalogue, m, seed, sampling
        self.default_epoch = default_epoch
        self._weights = torch.as_tensor(catalogue.popularity) if sampling == "popularity" else None

    def row(self, index: int, epoch: int) -> Example:
        """Row ``index`` with the candidates ``(target, d_1, ..., d_m)`` of ``epoch``."""
        ex = self.examples[index]
        where = self.catalogue.index
        exclude = {where[ex.target]} | {where[t] for t in ex.history if t in where}
        drawn = draw_catalogue_items(
            len(self.catalogue),
            sorted(exclude),
            self.m,
            catalogue_generator(self.seed, epoch, index),
            self._weights,
        )
        titles = self.catalogue.titles
        return dataclasses.replace(ex, candidates=(ex.target, *(titles[j] for j in drawn)))

    def n_candidates(self, index: int) -> int:
        return self.m + 1

    def encode(self, index: int, epoch: int | None = None) -> EncodedExample:
        return self._encode(self.row(index, self.default_epoch if epoch is None else epoch), index)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, self.default_epoch)
        ex = self.row(index, epoch)
        enc = self._encode(ex, index)
        return self._item(index, ex, enc)
