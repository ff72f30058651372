"""The package layout and the old module names: every module that moved into a subpackage is
still importable under its old dotted name (the same module object), so class paths written
into earlier configs and checkpoints resolve; no file is left at the old place."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import sdpo_lightning
from sdpo_lightning import MOVED

PACKAGE = Path(sdpo_lightning.__file__).parent
REPO = PACKAGE.parent
#: the modules kept at the top level of the package
TOP_LEVEL = {"__init__", "__main__", "cli", "config_reference", "demo", "errors", "kernels"}


def test_top_level_holds_only_entry_points_and_shared_helpers():
    assert {p.stem for p in PACKAGE.glob("*.py")} == TOP_LEVEL


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_name_is_the_new_module(old):
    new = importlib.import_module(f"sdpo_lightning.{MOVED[old]}")
    assert importlib.import_module(f"sdpo_lightning.{old}") is new
    assert getattr(sdpo_lightning, old) is new
    assert not (PACKAGE / f"{old}.py").exists()  # an alias, not a shim file


def test_old_class_paths_resolve_to_the_same_classes():
    from jsonargparse.typing import import_object  # how LightningCLI resolves class_path

    from sdpo_lightning.data.datamodule import RecDataModule
    from sdpo_lightning.training.module import SDPOModule
    from sdpo_lightning.training.strategies import CPUDeepSpeedStrategy, SDPODeepSpeedStrategy

    assert import_object("sdpo_lightning.module.SDPOModule") is SDPOModule
    assert import_object("sdpo_lightning.strategies.SDPODeepSpeedStrategy") is SDPODeepSpeedStrategy
    assert import_object("sdpo_lightning.strategies.CPUDeepSpeedStrategy") is CPUDeepSpeedStrategy
    assert import_object("sdpo_lightning.data.datamodule.RecDataModule") is RecDataModule


def test_old_scoring_module_names_come_from_the_scoring_package():
    from sdpo_lightning.scoring import logps

    old = importlib.import_module("sdpo_lightning.scoring")
    for name in logps.__all__:
        assert getattr(old, name) is getattr(logps, name)


def test_old_name_imported_first_loads_the_new_module():
    code = textwrap.dedent("""
        import sys
        from sdpo_lightning.strategies import SDPODeepSpeedStrategy
        import sdpo_lightning.training.strategies as new
        assert sys.modules["sdpo_lightning.strategies"] is new
        assert SDPODeepSpeedStrategy is new.SDPODeepSpeedStrategy
        assert SDPODeepSpeedStrategy.__module__ == "sdpo_lightning.training.strategies"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)


def test_importing_a_new_module_enters_its_old_name_too():
    """Lightning's ``load_from_checkpoint`` looks a checkpoint's ``_class_path`` up in
    ``sys.modules`` without importing it: the old name must be there once the class is."""
    code = textwrap.dedent("""
        import sys
        from lightning.pytorch import LightningModule
        from lightning.pytorch.core.saving import _is_imported_subclass
        assert "sdpo_lightning.module" not in sys.modules
        import sdpo_lightning.training.module as new
        assert sys.modules["sdpo_lightning.module"] is new
        assert _is_imported_subclass("sdpo_lightning.module.SDPOModule", LightningModule)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)


def test_checkpoint_with_the_old_class_path_loads(synthetic_dir, tmp_path):
    """A checkpoint written by LightningCLI in subclass mode names the module's class path and
    instantiator; with the old class path it still loads (in a fresh interpreter)."""
    import torch

    from tests.conftest import TINY

    hparams = {
        "source": {"tokenizer_path": str(synthetic_dir / "tokenizer"), "tiny_config": TINY},
        "objective": {"name": "sft"},
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
        "_class_path": "sdpo_lightning.module.SDPOModule",
    }
    ckpt = tmp_path / "old.ckpt"
    torch.save(
        {"state_dict": {}, "hyper_parameters": hparams, "pytorch-lightning_version": "2.4.0"}, ckpt
    )
    code = textwrap.dedent(f"""
        from sdpo_lightning.training.module import SDPOModule
        module = SDPOModule.load_from_checkpoint({str(ckpt)!r}, weights_only=True)
        assert module.hparams.objective.name == "sft", module.hparams
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)


def test_config_with_the_old_strategy_class_path_parses(tmp_path, capsys):
    from sdpo_lightning.cli import cli_main

    preset = yaml.safe_load((REPO / "configs" / "strategy" / "zero3.yaml").read_text())
    preset["trainer"]["strategy"]["class_path"] = "sdpo_lightning.strategies.SDPODeepSpeedStrategy"
    old = tmp_path / "old_zero3.yaml"
    old.write_text(yaml.safe_dump(preset))
    with pytest.raises(SystemExit) as exc:
        cli_main(
            [
                "fit",
                "-c",
                str(REPO / "configs" / "lastfm" / "sdpo.yaml"),
                "-c",
                str(old),
                "--print_config",
            ]
        )
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["strategy"]["class_path"].endswith("strategies.SDPODeepSpeedStrategy")
    assert printed["trainer"]["strategy"]["init_args"]["stage"] == 3
