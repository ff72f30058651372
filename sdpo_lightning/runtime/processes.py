"""The process group seen by the reference cache and the evaluator: rank, world size, collectives.

:class:`Processes` is the small protocol those collaborators read instead of a Lightning
``Trainer``: :class:`SingleProcess` is the one-process group (no trainer, tests, benchmarks),
:class:`TrainerProcesses` reads a trainer and its strategy, and :func:`processes_of` picks one.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Processes(Protocol):
    """Rank, world size and the collectives of the processes running together."""

    @property
    def world_size(self) -> int:
        """Number of processes."""
        ...

    @property
    def global_rank(self) -> int:
        """This process's rank, ``0 .. world_size - 1``."""
        ...

    @property
    def is_global_zero(self) -> bool:
        """Whether this process has global rank 0 (the one that writes files)."""
        ...

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
        """Every process's ``decision`` combined: logical and (``all``) or or."""
        ...

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` of every process stacked → ``(world_size, *tensor.shape)``."""
        ...

    def barrier(self, name: str | None = None) -> None:
        """Wait until every process gets here."""
        ...


class SingleProcess:
    """The group of one process: decisions are its own, gathers stack one tensor."""

    world_size = 1
    global_rank = 0
    is_global_zero = True

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
        """``decision`` itself."""
        return decision

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor[None]`` → ``(1, *tensor.shape)``."""
        return tensor.unsqueeze(0)

    def barrier(self, name: str | None = None) -> None:
        """Nothing to wait for."""


class TrainerProcesses:
    """The processes of a Lightning ``Trainer``, read from it (and its strategy) on each use.

    Args:
        trainer: the trainer (anything with ``world_size``, ``global_rank``,
            ``is_global_zero`` and a ``strategy`` with the collectives).
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    @property
    def world_size(self) -> int:
        """The trainer's world size."""
        return self.trainer.world_size

    @property
    def global_rank(self) -> int:
        """The trainer's global rank."""
        return self.trainer.global_rank

    @property
    def is_global_zero(self) -> bool:
        """Whether the trainer is global rank 0."""
        return self.trainer.is_global_zero

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
        """The strategy's reduction of ``decision``."""
        return self.trainer.strategy.reduce_boolean_decision(decision, all=all)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The strategy's all-gather → ``(world_size, *tensor.shape)``."""
        return self.trainer.strategy.all_gather(tensor)

    def barrier(self, name: str | None = None) -> None:
        """The strategy's barrier."""
        self.trainer.strategy.barrier(name)


SINGLE_PROCESS = SingleProcess()


def processes_of(trainer: Any | None) -> Processes:
    """The processes of ``trainer``, or the single process when there is none."""
    return SINGLE_PROCESS if trainer is None else TrainerProcesses(trainer)
