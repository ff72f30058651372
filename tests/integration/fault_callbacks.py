"""Test-only callbacks that simulate faults in a real ``sdpo fit`` process: killed from
outside (SIGKILL) mid-epoch or in the middle of the export, held at a step until told to go on,
or failing with a bug."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


def _sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class SigkillAtStep(Callback):
    """SIGKILL this process when the training batch of global step ``step`` is about to run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            _sigkill()


class SigkillDuringExport(Callback):
    """SIGKILL this process inside ``SDPOModule.export``: after the weights are written,
    while the tokenizer is being saved (callbacks' ``on_fit_end`` runs before the module's)."""

    def on_fit_end(self, trainer, pl_module) -> None:
        tokenizer = pl_module.tokenizer
        real = tokenizer.save_pretrained

        def save_then_die(directory, *args, **kwargs):
            assert any(Path(directory).glob("*.safetensors")), "the weights should be written first"
            real(directory, *args, **kwargs)
            _sigkill()

        tokenizer.save_pretrained = save_then_die


class HoldAtStep(Callback):
    """At global step ``step``, create ``ready`` and wait (at most ``timeout`` s) for ``go``."""

    def __init__(self, step: int, ready: str, go: str, timeout: float = 300.0) -> None:
        self.step, self.ready, self.go, self.timeout = step, Path(ready), Path(go), timeout

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        self.ready.touch()
        deadline = time.monotonic() + self.timeout
        while not self.go.exists() and time.monotonic() < deadline:
            time.sleep(0.2)


class RaiseAtStep(Callback):
    """A stand-in for a bug: raises ``ZeroDivisionError`` at global step ``step``."""

    def __init__(self, step: int = 0) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            1 / 0
