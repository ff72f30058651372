"""``sdpo-baseline fit|validate|test -c configs/baselines/<model>_<data>.yaml``: LightningCLI
for the sequential recommenders (GRU4Rec, Caser, SASRec).

The model is a :class:`~.seqrec_module.SeqRecModule` subclass chosen by ``model.class_path``;
``data.num_items`` and ``data.max_len`` are linked into the model. Unless configured
otherwise, the trainer keeps the checkpoint with the best ``val/hr@1`` (selection split
carved from the training file) and logs CSV under ``default_root_dir``. After ``fit`` the
best checkpoint is tested: the report (``summary.json`` + ``predictions.jsonl``) of the
test file goes to ``model.init_args.report_dir`` (default: ``trainer.default_root_dir``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from sdpo_lightning.baselines.seqrec_data import SeqRecDataModule
from sdpo_lightning.baselines.seqrec_module import SeqRecModule

__all__ = ["SeqRecCLI", "seqrec_main"]

SUBCOMMANDS = ("fit", "validate", "test")


class SeqRecCLI(LightningCLI):
    """LightningCLI with the data → model links and test-after-fit."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("data.max_len", "model.init_args.max_len")
        parser.link_arguments("data.num_items", "model.init_args.num_items", apply_on="instantiate")

    def after_fit(self) -> None:
        """Test the best checkpoint (by ``val/hr@1``) and write its report."""
        ckpt = self.trainer.checkpoint_callback
        path = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        self.trainer.test(
            self.model, datamodule=self.datamodule, ckpt_path=path or None, weights_only=False
        )


def seqrec_main(args: Sequence[str] | None = None) -> SeqRecCLI:
    """Run the CLI on ``args`` (default ``sys.argv[1:]``)."""
    best = ModelCheckpoint(
        monitor="val/hr@1", mode="max", save_top_k=1, filename="best-{epoch}", save_last=False
    )
    return SeqRecCLI(
        SeqRecModule,
        SeqRecDataModule,
        subclass_mode_model=True,
        args=list(args) if args is not None else None,
        trainer_defaults={
            "callbacks": [best],
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "deterministic": True,
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 10,
        },
        save_config_kwargs={"overwrite": True},
    )
