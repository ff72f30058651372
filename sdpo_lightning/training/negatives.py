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
epoch whatever the number of workers or processes. :class:`OnPolicyNegatives` holds a scorer
of the current policy (the module's ``policy_candidate_scores``) and a step counter: the
policy's own top-scored non-target candidates, refreshed every ``refresh_steps`` optimizer
steps (``docs/negatives.md``). A selector may report what it chose (:meth:`NegativeSelector.stats`);
the module logs it as ``train/negatives/<name>``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from sdpo_lightning.data.collate import negative_indices
from sdpo_lightning.data.negatives import NegativeSampling
from sdpo_lightning.evaluation.metrics import rank_of_target

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

    def propose(self, batch: dict[str, Any], k: int, epoch: int) -> dict[str, Any]:
        """The batch whose candidates :meth:`select` picks from (called just before it); by
        default the batch itself. A selector that brings its own candidates (e.g. the policy's
        top catalogue items) returns the batch with them in place of the drawn ones."""
        return batch

    def stats(self) -> dict[str, float]:
        """What the last :meth:`select` chose, as named numbers (logged by the module as
        ``train/negatives/<name>``); none by default."""
        return {}


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


def rows_of(batch: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """The sub-batch of the given rows: tensors and lists indexed on their first dimension.

    Args:
        batch: a collated batch of ``B`` rows.
        rows: ``(R,)`` row positions in ``batch``.
    """
    keep = rows.tolist()
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if (
            isinstance(value, torch.Tensor)
            and value.dim() > 0
            and value.shape[0] == len(batch["index"])
        ):
            out[key] = value[rows.to(value.device)]
        elif isinstance(value, list) and len(value) == len(batch["index"]):
            out[key] = [value[i] for i in keep]
        else:
            out[key] = value
    return out


def negative_ranks(
    scores: torch.Tensor,
    candidate_mask: torch.Tensor,
    target_index: torch.Tensor,
    negatives: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Where the negatives and the target stand in a ranking of each row's candidates.

    Args:
        scores: ``(B, M)`` every candidate's score (e.g. the policy's log-likelihood).
        candidate_mask: ``(B, M)`` real candidates.
        target_index: ``(B,)``.
        negatives: ``(B, K)`` the chosen negatives' candidate indices.

    Returns:
        ``negative_rank (B, K)``: 1 + the number of real candidates scored strictly higher;
        ``target_rank (B,)``: 1 + the number of other real candidates scored at least as high
        (ties count against the target, as in evaluation).
    """
    s = scores.float().masked_fill(~candidate_mask.bool(), float("-inf"))  # (B, M)
    neg = torch.gather(s, 1, negatives.to(s.device))  # (B, K)
    higher = (s.unsqueeze(1) > neg.unsqueeze(2)).sum(-1)  # (B, K)
    return {
        "negative_rank": higher + 1,
        "target_rank": rank_of_target(s, target_index.to(s.device)),
    }


class OnPolicyNegatives(NegativeSelector):
    """The K non-target candidates the current policy scores highest (its own mistakes).

    Scores are the policy's summed completion log-likelihoods of every candidate (the module's
    ``policy_candidate_scores``: no gradient, dropout off). A row's scores are reused until they
    are ``refresh_steps`` optimizer steps old (``step()`` - the step they were computed at);
    with ``refresh_steps=1`` every batch is scored by the current policy, only the rows whose
    scores are due are scored otherwise. Equal scores are ordered by a random permutation
    seeded by ``(seed, epoch, example index)``.

    Args:
        scores: the policy's score of every candidate of a batch, ``(B, M)``.
        step: the current optimizer step (the module's ``global_step``).
        seed: seeds the tie-breaking order.
        refresh_steps: how many optimizer steps a row's scores are reused for (>= 1).

    After each :meth:`select`, :meth:`stats` gives the mean rank of the negatives under the
    policy (``mean_rank``, 1 = its top candidate), how often the target was the policy's
    top-1 (``target_top1``), the target's mean rank (``target_rank``) and the share of rows
    scored afresh (``refreshed``).
    """

    needs_reference: ClassVar[bool] = False

    def __init__(
        self,
        scores: CandidateScores,
        step: Callable[[], int],
        seed: int = 0,
        refresh_steps: int = 1,
    ) -> None:
        if not (isinstance(refresh_steps, int) and refresh_steps >= 1):
            raise ValueError(
                f"on_policy_refresh_steps must be a positive integer, got {refresh_steps!r}"
            )
        self.scores, self.step, self.seed, self.refresh_steps = scores, step, seed, refresh_steps
        self._cache: dict[
            int, tuple[int, torch.Tensor]
        ] = {}  # example index -> (step, (M,) scores)
        self._stats: dict[str, float] = {}

    def policy_scores(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """``(B, M)`` policy scores of the batch's rows (fresh or reused) on the CPU, and how
        many rows were scored now."""
        step = int(self.step())
        if self.refresh_steps == 1:
            return self.scores(batch).detach().float().cpu(), len(batch["index"])
        index = batch["index"].tolist()
        m = batch["candidate_mask"].shape[1]
        due = [
            i
            for i, row in enumerate(index)
            if row not in self._cache or step - self._cache[row][0] >= self.refresh_steps
        ]
        if due:
            fresh = self.scores(rows_of(batch, torch.tensor(due))).detach().float().cpu()  # (R, M)
            for j, i in enumerate(due):
                self._cache[index[i]] = (step, fresh[j])
        out = torch.full(
            (len(index), m), float("-inf")
        )  # (B, M); columns past a row's candidates unused
        for i, row in enumerate(index):
            cached = self._cache[row][1][:m]
            out[i, : len(cached)] = cached
        return out, len(due)

    def select(self, batch: dict[str, Any], k: int, epoch: int) -> torch.Tensor:
        scores, n_scored = self.policy_scores(batch)  # (B, M)
        negatives = negative_indices(batch, k, "on_policy", self.seed, epoch, scores)  # (B, K)
        mask, target = batch["candidate_mask"].cpu(), batch["target_index"].cpu()
        ranks = negative_ranks(scores, mask, target, negatives)
        self._stats = {
            "mean_rank": float(ranks["negative_rank"].float().mean()),
            "target_top1": float((ranks["target_rank"] == 1).float().mean()),
            "target_rank": float(ranks["target_rank"].float().mean()),
            "refreshed": n_scored / max(1, len(batch["index"])),
        }
        return negatives

    def stats(self) -> dict[str, float]:
        return dict(self._stats)


def make_selector(
    sampling: NegativeSampling,
    reference_scores: CandidateScores | None = None,
    policy_scores: CandidateScores | None = None,
    step: Callable[[], int] | None = None,
) -> NegativeSelector:
    """The selector of the data's training strategy.

    Args:
        sampling: the settings (``RecDataModule.sampling``).
        reference_scores: the reference's score of every candidate of a batch (``hard`` and
            ``tempered``; the module's ``reference_candidate_scores``).
        policy_scores: the current policy's score of every candidate of a batch
            (``on_policy``; the module's ``policy_candidate_scores``).
        step: the current optimizer step (``on_policy``'s refresh schedule; default: always 0).

    Raises:
        ValueError: ``hard`` / ``tempered`` without ``reference_scores``, ``on_policy``
            without ``policy_scores``.
    """
    if sampling.strategy == "random":
        return RandomNegatives(sampling.seed)
    if sampling.strategy == "popularity":
        return PopularityNegatives(sampling.seed)
    if sampling.strategy == "on_policy_beam":
        raise ValueError(
            "the on_policy_beam strategy searches the catalogue: the module builds its selector "
            "(data.train_protocol all_item)"
        )
    if sampling.strategy == "on_policy":
        if policy_scores is None:
            raise ValueError("the on_policy strategy needs the policy's scores of every candidate")
        return OnPolicyNegatives(
            policy_scores, step or (lambda: 0), sampling.seed, sampling.refresh_steps
        )
    if reference_scores is None:
        raise ValueError(f"the {sampling.strategy} strategy needs reference scores")
    if sampling.strategy == "hard":
        return HardNegatives(reference_scores, sampling.seed)
    return TemperedNegatives(reference_scores, sampling.seed, sampling.temperature)


def validation_selector(sampling: NegativeSampling) -> NegativeSelector:
    """The selector of validation batches: random, with the data's seed (and :data:`VAL_EPOCH`),
    so validation losses compare across epochs and runs."""
    return RandomNegatives(sampling.seed)


def negatives_for(
    datamodule: Any,
    split: str,
    indices: Sequence[int],
    epoch: int,
    selector: NegativeSelector | None = None,
) -> torch.Tensor:
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
