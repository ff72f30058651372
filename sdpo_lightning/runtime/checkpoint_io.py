"""Checkpoint reading that names the file and the cause when a checkpoint cannot be read.

Lightning reads ``--ckpt_path`` deep inside ``Trainer.fit`` / ``test``; a truncated or
corrupted file then surfaces as a ``RuntimeError`` from torch's zip reader (or an
``UnpicklingError``, ``EOFError``, ...) far from the option that caused it.
:class:`ReadableCheckpointIO` wraps the strategy's checkpoint IO and turns any failure to
read into one :class:`~sdpo_lightning.errors.CheckpointError` naming the path.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from sdpo_lightning.errors import CheckpointError, UserError, one_line


def unreadable(path: Any, err: BaseException) -> CheckpointError:
    """The :class:`CheckpointError` for a checkpoint file that ``torch.load`` failed on."""
    cause = one_line(err).split(". ")[0][:200]
    return CheckpointError(
        f"cannot read checkpoint {os.fspath(path)}: it is truncated, corrupted or not a checkpoint "
        f"({type(err).__name__}: {cause})"
    )


class ReadableCheckpointIO(CheckpointIO):
    """Delegates to ``inner``; a checkpoint that cannot be read raises :class:`CheckpointError`.

    Args:
        inner: the checkpoint IO the strategy had (``TorchCheckpointIO`` by default).
    """

    def __init__(self, inner: CheckpointIO) -> None:
        self.inner = inner

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not os.path.exists(path):
            raise CheckpointError(f"checkpoint {os.fspath(path)} does not exist")
        try:
            checkpoint = self.inner.load_checkpoint(
                path, map_location=map_location, weights_only=weights_only
            )
        except (UserError, MemoryError):
            raise
        except Exception as err:  # torch's zip reader, pickle, EOF, ... all mean "unreadable"
            raise unreadable(path, err) from err
        if not isinstance(checkpoint, dict):
            raise CheckpointError(
                f"{os.fspath(path)} is not a Lightning checkpoint (holds a {type(checkpoint).__name__})"
            )
        return checkpoint

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


def install(strategy: Any) -> None:
    """Wrap ``strategy``'s checkpoint IO (once) in :class:`ReadableCheckpointIO`."""
    from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

    io = strategy.checkpoint_io
    if not isinstance(io, (ReadableCheckpointIO, _WrappingCheckpointIO)):  # async IO: left as is
        strategy.checkpoint_io = ReadableCheckpointIO(io)
