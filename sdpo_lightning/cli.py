"""``sdpo fit|validate|test|predict`` — LightningCLI around SDPOModule and RecDataModule."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from sdpo_lightning.data.datamodule import RecDataModule
from sdpo_lightning.module import SDPOModule


class SDPOCLI(LightningCLI):
    """LightningCLI with the project's defaults.

    * ``model.num_negatives`` is passed on to ``data.num_negatives``;
    * unless a logger is configured, runs log to CSV (``<root>/csv``) and TensorBoard
      (``<root>/tb``), where ``<root>`` is ``trainer.default_root_dir``;
    * a rich progress bar and a checkpoint callback keeping ``<root>/checkpoints/last.ckpt``
      are added unless the config has callbacks of those kinds.
    """

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("model.num_negatives", "data.num_negatives")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        config = self._get(self.config_init, "trainer", default={})
        root = config.get("default_root_dir") or os.getcwd()
        if config.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = [
                CSVLogger(root, name="csv"),
                TensorBoardLogger(root, name="tb", default_hp_metric=False),
            ]
        callbacks = list(config.get("callbacks") or [])
        extra = []
        if config.get("enable_checkpointing", True) is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            extra.append(ModelCheckpoint(dirpath=os.path.join(root, "checkpoints"), save_last=True))
        if not any(isinstance(c, RichProgressBar) for c in callbacks) and config.get("enable_progress_bar", True) is not False:
            extra.append(RichProgressBar(leave=True))
        if extra:
            config["callbacks"] = callbacks + extra
        return super().instantiate_trainer(**kwargs)


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of the ``sdpo`` command (``args=None`` reads ``sys.argv``)."""
    SDPOCLI(
        SDPOModule,
        RecDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    cli_main()
