"""Picking each example's K negatives, where the policy and the reference are at hand.

The data module delivers every candidate of every example (the ``candidate_*`` keys of
:mod:`sdpo_lightning.data.collate`) and carries the sampling settings
(:class:`~sdpo_lightning.data.negatives.NegativeSampling`: ``data.negative_sampling``,
``data.num_negatives``, ``data.temperature``, ``data.seed``). The LightningModule picks the
negatives of every training and validation batch with a :class:`NegativeSelector` and puts the
chosen completion and the negatives into the batch
(:func:`~sdpo_lightning.data.collate.select_completions`).

A selector answers one question, ``select(batch, k, epoch)`` → ``(B, K)`` candidate indices
(distinct, never the target, among the example's real candidates). The strategies of
:mod:`sdpo_lightning.data.negatives` are the selectors here (:func:`make_selector`); every draw
is seeded by ``(seed, epoch, example index)``, so the negatives are the same for a seed and an
epoch whatever the number of workers or processes. Another strategy is another selector: e.g.
on-policy negatives (the policy's own top-scored non-target candidates, refreshed on a
schedule) would hold a scorer of the policy and implement the same ``select``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from sdpo_lightning.data.collate import negative_indices
from sdpo_lightning.data.negatives import NegativeSampling

#: the fixed "epoch" of validation negatives: drawn once, the same every validation
VAL_EPOCH = -1

#: ``scores(batch)`` → ``(B, M)`` a score of every candidate (e.g. the reference's
#: log-likelihoods, from the reference cache)
CandidateScores = Callable[[dict[str, Any]], torch.Tensor]


class NegativeSelector(abc.ABC):
    """Chooses the K negatives of each example of a batch.

    Attributes:
        needs_reference: whether :meth:`select` reads the reference's scores (the module then
            opens the reference cache before the first step, and builds it in full where the
            reference's weights would be gone after one).
    """

    needs_reference: ClassVar[bool] = False

    @abc.abstractmethod
    def select(self, batch: dict[str, Any], k: int, epoch: int) -> torch.Tensor:
        """``(B, K)`` candidate indices of the negatives of a collated batch.

        Args:
            batch: a collated batch with every candidate (``index``, ``target_index``,
                ``candidate_mask``, ``candidate_popularity``, ...), on the model's device.
            k: negatives per example.
            epoch: the training epoch (validation: :data:`VAL_EPOCH`).
        """


@dataclasses.dataclass(frozen=True)
class RandomNegatives(NegativeSelector):
    """Uniform without replacement (the paper's; validation's always)."""

    seed: int = 0

    def select(self, batch: dict[str, Any], k: int, epoch: int) -> torch.Tensor:
        return negative_indices(batch, k, "random", self.seed, epoch)


@dataclasses.dataclass(frozen=True)
class PopularityNegatives(NegativeSelector):
    """Without replacement, weighted by how often each candidate is a training target, + 1."""

    seed: int = 0

    def select(self, batch: dict[str, Any], k: int, epoch: int) -> torch.Tensor:
        return negative_indices(batch, k, "popularity", self.seed, epoch)


@dataclasses.dataclass(frozen=True)
class HardNegatives(NegativeSelector):
    """The K candidates the reference scores highest (ties: the earlier candidate).

    Args:
        scores: every candidate's reference score of a batch, ``(B, M)``.
        seed: seeds the per-example generators (``hard`` itself draws nothing).
    """

    scores: CandidateScores
    seed: int = 0
    needs_reference: ClassVar[bool] = True

    def select(self, batch: dict[str, Any], k: int, epoch: int) -> torch.Tensor:
        return negative_indices(batch, k, "hard", self.seed, epoch, self.scores(batch))


@dataclasses.dataclass(frozen=True)
class TemperedNegatives(NegativeSelector):
    """Without replacement from ``softmax(reference score / temperature)`` (Gumbel top-k):
    temperature → 0 is :class:`HardNegatives`, → ∞ is :class:`RandomNegatives`.

    Args:
        scores: every candidate's reference score of a batch, ``(B, M)``.
        seed: seeds every draw, with the epoch and the example index.
        temperature: the softmax temperature (> 0).
    """

    scores: CandidateScores
    seed: int = 0
    temperature: float = 1.0
    needs_reference: ClassVar[bool] = True

    def select(self, batch: dict[str, Any], k: int, epoch: int) -> torch.Tensor:
        scores = self.scores(batch)
        return negative_indices(batch, k, "tempered", self.seed, epoch, scores, self.temperature)


def make_selector(sampling: NegativeSampling,
                  reference_scores: CandidateScores | None = None) -> NegativeSelector:
    """The selector of the data's training strategy.

    Args:
        sampling: the settings (``RecDataModule.sampling``).
        reference_scores: the reference's score of every candidate of a batch (``hard`` and
            ``tempered``; the module's ``reference_candidate_scores``).

    Raises:
        ValueError: ``hard`` / ``tempered`` without ``reference_scores``.
    """
    if sampling.strategy == "random":
        return RandomNegatives(sampling.seed)
    if sampling.strategy == "popularity":
        return PopularityNegatives(sampling.seed)
    if reference_scores is None:
        raise ValueError(f"the {sampling.strategy} strategy needs reference scores")
    if sampling.strategy == "hard":
        return HardNegatives(reference_scores, sampling.seed)
    return TemperedNegatives(reference_scores, sampling.seed, sampling.temperature)


def validation_selector(sampling: NegativeSampling) -> NegativeSelector:
    """The selector of validation batches: random, with the data's seed (and :data:`VAL_EPOCH`),
    so validation losses compare across epochs and runs."""
    return RandomNegatives(sampling.seed)


def negatives_for(datamodule: Any, split: str, indices: Sequence[int], epoch: int,
                  selector: NegativeSelector | None = None) -> torch.Tensor:
    """The negatives a split's examples get in an epoch (for inspection and tests).

    Args:
        datamodule: a set-up :class:`~sdpo_lightning.data.datamodule.RecDataModule`.
        split: ``fit`` (the data's strategy) or another split (random).
        indices: example indices of the split.
        epoch: the epoch the negatives are drawn for.
        selector: the selector to ask (default: the data's; ``hard`` / ``tempered`` need one
            made with reference scores).

    Returns:
        ``(len(indices), K)`` candidate indices.
    """
    sampling: NegativeSampling = datamodule.sampling
    if selector is None:
        selector = make_selector(sampling) if split == "fit" else validation_selector(sampling)
    return selector.select(datamodule.collated(split, indices), sampling.k, epoch)
