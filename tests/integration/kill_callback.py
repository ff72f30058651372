"""A test-only callback that kills the process hard (``os._exit``) when a training batch is
about to run at a given global step, to simulate a crash midway through ``fit``."""

from __future__ import annotations

import os

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os._exit(17)
