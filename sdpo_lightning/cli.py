"""``sdpo fit|validate|test|predict`` — LightningCLI around SDPOModule and RecDataModule."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from sdpo_lightning.data.datamodule import RecDataModule
from sdpo_lightning.errors import ConfigError, UserError, report, strip_debug_flag
from sdpo_lightning.runtime import checkpoint_io
from sdpo_lightning.runtime.run_lock import RunLock, is_secondary_rank
from sdpo_lightning.training.module import SDPOModule
from sdpo_lightning.training.module_args import (
    FLAT_KEYS,
    GROUPS,
    check_flat_keys,
    grouped_kwargs,
    is_flat,
    is_flat_value,
    moved_message,
)

PROG = "sdpo"

log = logging.getLogger(__name__)


class SDPOCLI(LightningCLI):
    """LightningCLI with the project's defaults.

    * ``model.objective.num_negatives`` is passed on to ``data.num_negatives``;
    * the data module is connected to the model's tokenizer and item table
      (:meth:`RecDataModule.connect`) once both are built;
    * a key of the flat ``model:`` layout of earlier versions (``model.beta``), in a config
      file or on the command line, raises :class:`ConfigError` naming its new place
      (``model.objective.beta``); the flat hyperparameters of an old ``--ckpt_path`` are
      regrouped;
    * unless a logger is configured, runs log to CSV (``<root>/csv``) and TensorBoard
      (``<root>/tb``), where ``<root>`` is ``trainer.default_root_dir``;
    * a rich progress bar and a checkpoint callback keeping ``<root>/checkpoints/last.ckpt``
      are added unless the config has callbacks of those kinds;
    * a config error (unknown key, bad value) raises :class:`ConfigError` with jsonargparse's
      message instead of printing the whole usage; so does a ``ValueError`` / ``OSError`` raised
      while the model, data module or trainer is built from the config;
    * ``<root>/.sdpo.lock`` is held from before the model is built to the end of the command
      (global rank 0), so a second run on the same root is refused (:mod:`~sdpo_lightning.runtime.run_lock`);
    * an unreadable ``--ckpt_path`` raises :class:`CheckpointError` (:mod:`~sdpo_lightning.runtime.checkpoint_io`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._held = contextlib.ExitStack()
        with self._held:  # the run lock is released however the command ends
            super().__init__(*args, **kwargs)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        from jsonargparse import ArgumentError

        for p in (parser, *getattr(self, "_subcommand_parsers", {}).values()):
            p.exit_on_error = False  # raise ArgumentError instead of printing the whole usage
        _refuse_flat_model_keys(sys.argv[1:] if args is None else args)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            command = f"{PROG} {self._subcommand_in(args)}".strip()
            message = _name_config_file(str(err), sys.argv[1:] if args is None else args)
            raise ConfigError(f"{message} (see `{command} --help`)") from err

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads the hyperparameters of ``--ckpt_path`` while parsing and applies
        them over the config: name the file when it cannot be read, and warn, naming every
        setting, when they replace the config's model arguments (otherwise e.g.
        ``--model.objective.name sdpo`` would silently train the checkpoint's ``sft``)."""
        from jsonargparse import ArgumentError

        before = self._model_settings()
        try:
            self._apply_ckpt_hparams()
        except UserError:
            raise
        except ArgumentError as err:
            raise ConfigError(
                f"the hyperparameters stored in --ckpt_path do not fit this config: {err}"
            ) from err
        except Exception as err:
            raise checkpoint_io.unreadable(
                self.config[self.config.subcommand].get("ckpt_path"), err
            ) from err
        after = self._model_settings()
        changed = [
            f"model.{k}: {before[k]!r} -> {after[k]!r}"
            for k in sorted(after)
            if k in before and before[k] != after[k]
        ]
        if changed:
            ckpt = self.config[self.config.subcommand].get("ckpt_path")
            log.warning(
                "--ckpt_path %s holds the model arguments it was trained with, and they replace this "
                "config's: %s. To resume its weights and optimizer under the config's model settings, "
                "save a copy of the checkpoint without its 'hyper_parameters' entry "
                "(benchmarks/quality/lastfm_study.py: resume_state); for the weights alone, "
                "--model.source.init_adapter <its export>.",
                ckpt,
                "; ".join(changed),
            )

    def _apply_ckpt_hparams(self) -> None:
        """LightningCLI's reading of ``--ckpt_path``'s hyperparameters over the config, with the
        flat hyperparameters of checkpoints from earlier versions regrouped
        (:func:`~sdpo_lightning.training.module_args.grouped_kwargs`)."""
        import torch

        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        hparams.pop("_class_path", None)
        if not hparams:
            return
        if is_flat(hparams):
            log.info("--ckpt_path %s: hyperparameters of the flat layout regrouped", ckpt_path)
            hparams = grouped_kwargs(hparams)
        self.config = self.parser.parse_object(
            {self.config.subcommand: {"model": hparams}}, self.config
        )

    def _model_settings(self) -> dict[str, Any]:
        """The parsed config's model arguments (plain values, dotted keys below the groups), or
        {} before a subcommand."""
        if not self.config.get("subcommand"):
            return {}
        model = self.config[self.config.subcommand].get("model") or {}
        return _flatten(model.as_dict() if hasattr(model, "as_dict") else dict(model))

    @staticmethod
    def _subcommand_in(args: Any) -> str:
        argv = sys.argv[1:] if args is None else args
        return (
            next((a for a in argv if a in ("fit", "validate", "test", "predict")), "")
            if isinstance(argv, list)
            else ""
        )

    def before_instantiate_classes(self) -> None:
        objective = self._get(self.config, "model", default={}).get("objective") or {}
        if objective.get("name") != "sft" and objective.get("beta") is not None:
            from sdpo_lightning.training.objectives import check_beta

            try:
                check_beta(objective["beta"])
            except ValueError as err:
                raise ConfigError(f"model.objective.beta: {err}") from None
        if self.subcommand is not None and not is_secondary_rank():
            root = (
                self._get(self.config, "trainer", default={}).get("default_root_dir") or os.getcwd()
            )
            self._held.enter_context(RunLock(root))

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (UserError, MisconfigurationException):
            raise
        except (ValueError, OSError) as err:
            raise ConfigError(f"invalid configuration: {err}") from err
        self.datamodule.connect(self.model.tokenizer, self.model.item_table)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments("model.objective.num_negatives", "data.num_negatives")

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
        if (
            not any(isinstance(c, RichProgressBar) for c in callbacks)
            and config.get("enable_progress_bar", True) is not False
        ):
            extra.append(RichProgressBar(leave=True))
        if extra:
            config["callbacks"] = callbacks + extra
        trainer = super().instantiate_trainer(**kwargs)
        checkpoint_io.install(trainer.strategy)
        return trainer


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"objective": {"beta": 1}}`` → ``{"objective.beta": 1}`` (``lora``, ``hybrid`` too)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _refuse_flat_model_keys(argv: Any) -> None:
    """Refuse a ``model`` key of the flat layout of earlier versions, on the command line
    (``--model.beta 2``) or in a ``-c`` config file (``model: {beta: 2}``).

    Raises:
        ConfigError: e.g. ``model.beta moved to model.objective.beta``.
    """
    import yaml

    if not isinstance(argv, list):
        return
    args = [str(a) for a in argv]
    for i, arg in enumerate(args):
        if not arg.startswith("--model."):
            continue
        key, eq, value = arg[len("--model.") :].partition("=")
        if key.startswith("init_args."):
            key = key[len("init_args.") :]
        if key not in FLAT_KEYS:
            continue
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        try:
            parsed = yaml.safe_load(value) if key in GROUPS else value
        except yaml.YAMLError:
            parsed = value
        if is_flat_value(key, parsed):
            raise ConfigError(moved_message(key))
    for path in _config_files(args):
        try:
            with open(path, encoding="utf-8") as f:
                config = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # jsonargparse reports it
        if not isinstance(config, dict):
            continue
        sections = [config, *(v for v in config.values() if isinstance(v, dict))]  # subcommand
        for section in sections:
            check_flat_keys(section.get("model"))


def _config_files(argv: Any) -> list[str]:
    """The files given with ``-c`` / ``--config`` in ``argv``."""
    if not isinstance(argv, list):
        return []
    files = [b for a, b in zip(argv, argv[1:], strict=False) if a in ("-c", "--config")]
    return files + [a.split("=", 1)[1] for a in argv if str(a).startswith("--config=")]


def _name_config_file(message: str, argv: Any) -> str:
    """``message`` with the YAML parser's ``"<unicode string>"`` replaced by the config file
    that does not parse (jsonargparse parses the file's text, so its name is lost)."""
    import yaml

    if "<unicode string>" not in message:
        return message
    for path in _config_files(argv):
        try:
            with open(path, encoding="utf-8") as f:
                yaml.safe_load(f)
        except (OSError, UnicodeDecodeError):
            continue
        except yaml.YAMLError:
            return message.replace('"<unicode string>"', path).replace("<unicode string>", path)
    return message


#: Errors ``sdpo`` reports in one line: the project's user errors and Lightning's own
#: misconfiguration errors (e.g. more devices than the machine has).
KNOWN_ERRORS = (UserError, MisconfigurationException)


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of the ``sdpo`` command (``args=None`` reads ``sys.argv``).

    A known user error (:data:`KNOWN_ERRORS`) prints ``sdpo: error: <message>`` on stderr
    and exits with status 2 (``SystemExit``); with ``SDPO_DEBUG=1`` or ``--debug`` its
    traceback comes first. Other exceptions propagate with their traceback.
    """
    args = strip_debug_flag(args)
    try:
        SDPOCLI(
            SDPOModule,
            RecDataModule,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except KNOWN_ERRORS as err:
        raise SystemExit(report(PROG, err)) from None


if __name__ == "__main__":
    cli_main()
