"""Choosing K distinct negatives from an example's candidate list.

Every draw goes through a ``torch.Generator`` seeded from ``(seed, epoch, example index)``,
so the negatives are the same for the same config and seed whatever the number of data
workers or processes, and are re-drawn each epoch.

Strategies:
    random:     uniform without replacement (the paper's).
    popularity: without replacement, weighted by ``count + 1`` where ``count`` is how often
                the item is a target in the training data.
    hard:       the K candidates the reference scores highest (needs reference scores).
    tempered:   without replacement from ``softmax(score / temperature)`` (Gumbel top-k);
                temperature → 0 is ``hard``, → ∞ is ``random``.
    on_policy:  the K candidates the current policy scores highest (needs the policy's
                scores; ties broken by a seeded random order, see ``docs/negatives.md``).
    on_policy_beam: all-item training only: the policy's top K catalogue items by constrained
                beam search (:mod:`sdpo_lightning.training.beam_negatives`; not drawn here).

These are the draws; which examples get them, and with whose scores, is decided where the
policy and the reference are at hand (:mod:`sdpo_lightning.training.negatives`). The data
module only carries the settings (:class:`NegativeSampling`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

STRATEGIES = ("random", "popularity", "hard", "tempered", "on_policy", "on_policy_beam")
#: the strategies that rank candidates by the reference's scores
REFERENCE_STRATEGIES = ("hard", "tempered")
#: the strategies that rank candidates by the policy's own (current) scores
POLICY_STRATEGIES = ("on_policy", "on_policy_beam")
_MASK = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class NegativeSampling:
    """How K negatives are drawn: the data module's ``num_negatives``, ``negative_sampling``,
    ``temperature`` and ``seed`` settings (:attr:`RecDataModule.sampling
    <sdpo_lightning.data.datamodule.RecDataModule.sampling>`).

    Args:
        strategy: one of :data:`STRATEGIES` (training; validation always draws ``random``).
        k: negatives per example.
        seed: seeds every draw, with the epoch and the example index.
        temperature: softmax temperature of ``tempered``.
        refresh_steps: ``on_policy`` / ``on_policy_beam``: a row's policy scores (beams) are
            reused until they are this many optimizer steps old (1: every batch, the current
            policy).
        beam_width: ``on_policy_beam``: live beams per row (``None``: K + 1).
    """

    strategy: str = "random"
    k: int = 3
    seed: int = 0
    temperature: float = 1.0
    refresh_steps: int = 1
    beam_width: int | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"negative_sampling must be one of {STRATEGIES}, got {self.strategy!r}"
            )
        if not (isinstance(self.refresh_steps, int) and self.refresh_steps >= 1):
            raise ValueError(
                f"on_policy_refresh_steps must be a positive integer, got {self.refresh_steps!r}"
            )

    @property
    def needs_reference(self) -> bool:
        """Whether the strategy ranks candidates by the reference's scores."""
        return self.strategy in REFERENCE_STRATEGIES

    @property
    def needs_policy(self) -> bool:
        """Whether the strategy ranks candidates by the policy's own scores."""
        return self.strategy in POLICY_STRATEGIES


def example_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded by a fixed mix of seed, epoch and example index."""
    mixed = ((seed * 1_000_003 + epoch) * 1_000_033 + index) & _MASK
    return torch.Generator().manual_seed(mixed)


def target_popularity(targets: Iterable[str]) -> Counter:
    """How often each title is a target (the ``popularity`` strategy's counts)."""
    return Counter(targets)


def _gumbel_top_k(logits: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Sample ``k`` distinct indices without replacement from ``softmax(logits)``."""
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return torch.topk(logits.double() + gumbel, k).indices


def sample_negatives(
    n_candidates: int,
    target_index: int,
    k: int,
    strategy: str = "random",
    generator: torch.Generator | None = None,
    weights: Sequence[float] | None = None,
    scores: Sequence[float] | torch.Tensor | None = None,
    temperature: float = 1.0,
) -> list[int]:
    """Indices of ``k`` distinct negatives (never the target).

    Args:
        n_candidates: size of the candidate list.
        target_index: index of the target, excluded.
        k: number of negatives.
        strategy: one of :data:`STRATEGIES`.
        generator: the seeded generator (see :func:`example_generator`).
        weights: per-candidate popularity counts (``popularity``).
        scores: per-candidate reference log-likelihoods (``hard``, ``tempered``), or the
            policy's (``on_policy``).
        temperature: softmax temperature of ``tempered``.

    Returns:
        ``k`` candidate indices, in draw order (``hard``: best first).
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown negative sampling strategy {strategy!r}; choose from {STRATEGIES}"
        )
    pool = torch.tensor([i for i in range(n_candidates) if i != target_index], dtype=torch.long)
    if k > len(pool):
        raise ValueError(f"asked for {k} negatives but only {len(pool)} non-target candidates")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if strategy == "random":
        order = torch.randperm(len(pool), generator=generator)[:k]
        return pool[order].tolist()
    if strategy == "popularity":
        if weights is None:
            raise ValueError("the popularity strategy needs per-candidate weights")
        w = torch.as_tensor(weights, dtype=torch.float64)[pool] + 1.0
        return pool[_gumbel_top_k(torch.log(w), k, generator)].tolist()
    if scores is None:
        whose = "the policy's" if strategy in POLICY_STRATEGIES else "reference"
        raise ValueError(f"the {strategy} strategy needs {whose} scores of every candidate")
    s = torch.as_tensor(scores, dtype=torch.float64)[pool]
    if strategy == "on_policy":
        # best first; equal scores in a seeded random order (the same for a seed, epoch, row)
        tiebreak = torch.randperm(len(pool), generator=generator).tolist()
        order = sorted(range(len(pool)), key=lambda i: (-float(s[i]), tiebreak[i]))[:k]
        return pool[torch.tensor(order, dtype=torch.long)].tolist()
    if strategy == "hard":
        # stable: ties go to the earlier candidate
        order = sorted(range(len(pool)), key=lambda i: (-float(s[i]), i))[:k]
        return pool[torch.tensor(order)].tolist()
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return pool[_gumbel_top_k(s / temperature, k, generator)].tolist()
