"""Known user errors, as the console scripts report them: one ``<prog>: error: <message>`` line
naming the file, record or option and the cause, exit status 2, no traceback unless
``SDPO_DEBUG=1`` / ``--debug``; a bug keeps its traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sdpo_lightning.cli import cli_main
from tests.conftest import REPO, record, tiny_config

CALLBACKS = "tests.integration.fault_callbacks"


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.setenv("SDPO_DEBUG", "0")  # restored (unset) afterwards, also after --debug set it


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dir) -> Path:
    """A finished 2-step SFT run (its root: checkpoints/last.ckpt and export/)."""
    tmp = tmp_path_factory.mktemp("trained")
    cli_main(
        [
            "fit",
            "-c",
            str(tiny_config(tmp, synthetic_dir, "sft", objective="sft")),
            "--trainer.max_steps",
            "2",
        ]
    )
    return tmp / "sft"


@pytest.fixture()
def cfg(tmp_path, synthetic_dir) -> Path:
    return tiny_config(tmp_path, synthetic_dir, "run", objective="sdpo")


def _error_line(capsys, *args: str) -> str:
    """Run ``sdpo *args`` in-process; it must exit 2 with exactly one error line and no traceback."""
    with pytest.raises(SystemExit) as exc:
        cli_main(list(args))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("sdpo: error: "), err[-3000:]
    return lines[0]


def _subprocess(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    if not env or "SDPO_DEBUG" not in env:
        full_env.pop("SDPO_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "sdpo_lightning", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ---------------------------------------------------------------------- bad data
def test_target_not_among_candidates(capsys, cfg, write_json):
    bad = write_json([record(), record(target="Z9")], name="bad.json")
    line = _error_line(capsys, "fit", "-c", str(cfg), "--data.train_file", str(bad))
    assert line == f"sdpo: error: {bad}, record 1: target 'Z9' is not among the 4 candidates"


def test_truncated_json(capsys, cfg, tmp_path):
    bad = tmp_path / "cut.json"
    bad.write_text(json.dumps([record(), record()])[:-30])
    line = _error_line(capsys, "fit", "-c", str(cfg), "--data.train_file", str(bad))
    assert line.startswith(f"sdpo: error: {bad}: malformed JSON (")


def test_empty_json(capsys, cfg, tmp_path):
    bad = tmp_path / "empty.json"
    bad.write_text("")
    line = _error_line(capsys, "fit", "-c", str(cfg), "--data.val_file", str(bad))
    assert line == f"sdpo: error: {bad}: malformed JSON (Expecting value at line 1, column 1)"


def test_missing_data_file(capsys, cfg, tmp_path):
    line = _error_line(
        capsys, "fit", "-c", str(cfg), "--data.train_file", str(tmp_path / "nope.json")
    )
    assert line == f"sdpo: error: {tmp_path / 'nope.json'}: file not found"


def test_more_negatives_than_candidates(capsys, cfg, synthetic_dir):
    line = _error_line(capsys, "fit", "-c", str(cfg), "--model.objective.num_negatives", "30")
    assert line == (
        f"sdpo: error: {synthetic_dir / 'train.json'}, record 0: 20 candidates, fewer than the 31 "
        "needed (K+1 for K=30 negatives)"
    )


# ---------------------------------------------------------------------- bad options
def test_beta_nan_on_the_command_line(capsys, cfg):
    line = _error_line(capsys, "fit", "-c", str(cfg), "--model.objective.beta", "nan")
    assert "model.objective.beta" in line and "nan" in line and "sdpo fit --help" in line


@pytest.mark.parametrize("value", [".nan", "-1", ".inf"])
def test_beta_not_finite_positive_in_a_config(capsys, cfg, tmp_path, value):
    extra = tmp_path / "beta.yaml"
    extra.write_text(f"model:\n  objective:\n    beta: {value}\n")
    line = _error_line(capsys, "fit", "-c", str(cfg), "-c", str(extra))
    assert line.startswith(
        "sdpo: error: model.objective.beta: beta must be a finite positive number, got "
    )


def test_unknown_objective(capsys, cfg):
    line = _error_line(capsys, "fit", "-c", str(cfg), "--model.objective.name", "sdpoo")
    assert line == (
        'sdpo: error: Parser key "model.objective.name": Expected a '
        "typing.Literal['sft', 'sdpo', 'dpo', 'dpo_k', 'dmpo', 'ipo', 'ipo_k', "
        "'simpo', 'softmax_simpo', 'dynamicpo']. Got value: sdpoo "
        "(see `sdpo fit --help`)"
    )


@pytest.mark.parametrize(
    "args, moved",
    [
        (("--model.beta", "2"), "model.beta moved to model.objective.beta"),
        (("--model.objective", "sft"), "model.objective moved to model.objective.name"),
        (("--model.scoring=naive",), "model.scoring moved to model.scoring.mode"),
        (("--model.init_adapter", "x"), "model.init_adapter moved to model.source.init_adapter"),
        (
            ("--model.learning_rate", "0.1"),
            "model.learning_rate moved to model.optim.learning_rate",
        ),
    ],
)
def test_flat_key_on_the_command_line_names_its_new_place(capsys, cfg, args, moved):
    line = _error_line(capsys, "fit", "-c", str(cfg), *args)
    assert line == f"sdpo: error: {moved}"


@pytest.mark.parametrize(
    "text, moved",
    [
        ("model:\n  beta: 2\n", "model.beta moved to model.objective.beta"),
        ("model:\n  objective: sdpo\n", "model.objective moved to model.objective.name"),
        (
            "model:\n  eval_protocols: [ranking]\n",
            "model.eval_protocols moved to model.eval.eval_protocols",
        ),
    ],
)
def test_flat_key_in_a_config_file_names_its_new_place(capsys, cfg, tmp_path, text, moved):
    extra = tmp_path / "old.yaml"
    extra.write_text(text)
    line = _error_line(capsys, "fit", "-c", str(cfg), "-c", str(extra))
    assert line == f"sdpo: error: {moved}"


def test_grouped_objective_given_whole_on_the_command_line_is_accepted(capsys, cfg):
    """``--model.objective '{name: sft}'`` is the group as a mapping, not the flat key."""
    with pytest.raises(SystemExit) as exc:
        cli_main(
            ["fit", "-c", str(cfg), "--model.objective", "{name: sft, beta: 2}", "--print_config"]
        )
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["objective"]["name"] == "sft"
    assert printed["model"]["objective"]["beta"] == 2


def test_typo_key_on_the_command_line(capsys, cfg):
    line = _error_line(capsys, "fit", "-c", str(cfg), "--model.betta", "1")
    assert line == "sdpo: error: unrecognized arguments: --model.betta 1 (see `sdpo fit --help`)"


def test_typo_key_in_a_config_file(capsys, cfg, tmp_path):
    extra = tmp_path / "typo.yaml"
    extra.write_text("model:\n  betta: 1\n")
    line = _error_line(capsys, "fit", "-c", str(cfg), "-c", str(extra))
    assert (
        line
        == "sdpo: error: Subcommand 'fit' does not accept option 'model.betta' (see `sdpo fit --help`)"
    )


def test_missing_config_file(capsys, tmp_path):
    line = _error_line(capsys, "fit", "-c", str(tmp_path / "none.yaml"))
    assert f"File does not exist: '{tmp_path / 'none.yaml'}'" in line


# ---------------------------------------------------------------------- models, adapters, checkpoints
def test_model_directory_without_a_model(capsys, cfg, tmp_path):
    (tmp_path / "empty_model").mkdir()
    line = _error_line(
        capsys,
        "fit",
        "-c",
        str(cfg),
        "--model.source.model_name_or_path",
        str(tmp_path / "empty_model"),
    )
    assert line.startswith(
        f"sdpo: error: cannot load the model from '{tmp_path / 'empty_model'}': "
    )


def test_adapter_directory_missing(capsys, cfg, tmp_path):
    line = _error_line(
        capsys, "fit", "-c", str(cfg), "--model.source.init_adapter", str(tmp_path / "nowhere")
    )
    assert line == f"sdpo: error: init_adapter '{tmp_path / 'nowhere'}': no such directory"


def test_adapter_directory_without_config(capsys, cfg, tmp_path):
    (tmp_path / "adapter").mkdir()
    line = _error_line(
        capsys, "fit", "-c", str(cfg), "--model.source.init_adapter", str(tmp_path / "adapter")
    )
    assert line == (
        f"sdpo: error: init_adapter '{tmp_path / 'adapter'}' is not a peft adapter directory "
        "(no adapter_config.json)"
    )


def test_export_with_a_truncated_file_is_refused(capsys, cfg, tmp_path, trained):
    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "export", adapter)
    weights = adapter / "adapter_model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    line = _error_line(capsys, "fit", "-c", str(cfg), "--model.source.init_adapter", str(adapter))
    assert line == (
        f"sdpo: error: init_adapter '{adapter}': incomplete export: adapter_model.safetensors has "
        f"{size // 2} bytes, the export wrote {size}"
    )


def test_peft_adapter_without_marker_truncated_is_refused(capsys, cfg, tmp_path, trained):
    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "export", adapter)
    (adapter / "export_complete.json").unlink()
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    line = _error_line(capsys, "fit", "-c", str(cfg), "--model.source.init_adapter", str(adapter))
    assert line.startswith(
        f"sdpo: error: init_adapter '{adapter}': adapter_model.safetensors is unreadable or truncated"
    )


def test_peft_adapter_without_marker_is_accepted(tmp_path, synthetic_dir, trained):
    """Adapters written by peft alone (or before the marker existed) still load."""
    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "export", adapter)
    (adapter / "export_complete.json").unlink()
    cfg = tiny_config(
        tmp_path, synthetic_dir, "stage2", objective="sdpo", init_adapter=str(adapter)
    )
    cli_main(["fit", "-c", str(cfg), "--trainer.max_steps", "1"])
    assert (tmp_path / "stage2" / "export" / "export_complete.json").is_file()


def test_corrupted_checkpoint_path(capsys, cfg, tmp_path, trained):
    ckpt = tmp_path / "cut.ckpt"
    data = (trained / "checkpoints" / "last.ckpt").read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    line = _error_line(capsys, "fit", "-c", str(cfg), "--ckpt_path", str(ckpt))
    assert line.startswith(
        f"sdpo: error: cannot read checkpoint {ckpt}: it is truncated, corrupted or not a checkpoint ("
    )


def test_corrupted_last_checkpoint(capsys, tmp_path, synthetic_dir, trained):
    """``--ckpt_path last`` resolves to ``<root>/checkpoints/last.ckpt`` inside ``fit``."""
    cfg = tiny_config(tmp_path, synthetic_dir, "again", objective="sft")
    (tmp_path / "again" / "checkpoints").mkdir(parents=True)
    last = tmp_path / "again" / "checkpoints" / "last.ckpt"
    last.write_bytes((trained / "checkpoints" / "last.ckpt").read_bytes()[:1000])
    line = _error_line(capsys, "fit", "-c", str(cfg), "--ckpt_path", "last")
    assert line.startswith(
        f"sdpo: error: cannot read checkpoint {last}: it is truncated, corrupted or not a checkpoint ("
    )


def test_missing_checkpoint_path(capsys, cfg, tmp_path):
    line = _error_line(capsys, "fit", "-c", str(cfg), "--ckpt_path", str(tmp_path / "none.ckpt"))
    assert line == f"sdpo: error: checkpoint {tmp_path / 'none.ckpt'} does not exist"


# ---------------------------------------------------------------------- the real command, debug mode, bugs
def test_console_command_data_error_without_and_with_debug(cfg, write_json):
    bad = write_json([record(target="Z9")], name="bad.json")
    plain = _subprocess("fit", "-c", str(cfg), "--data.train_file", str(bad))
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert (
        plain.stderr.strip().splitlines()[-1]
        == f"sdpo: error: {bad}, record 0: target 'Z9' is not among the 4 candidates"
    )
    for debug in ({"SDPO_DEBUG": "1"}, None):
        extra = () if debug else ("--debug",)
        proc = _subprocess("fit", "-c", str(cfg), "--data.train_file", str(bad), *extra, env=debug)
        assert (
            proc.returncode == 2 and "Traceback" in proc.stderr and "DataFormatError" in proc.stderr
        )
        assert proc.stderr.strip().splitlines()[-1] == plain.stderr.strip().splitlines()[-1]


def test_a_bug_keeps_its_traceback(cfg):
    proc = _subprocess("fit", "-c", str(cfg), f"--trainer.callbacks+={CALLBACKS}.RaiseAtStep")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and proc.stderr.strip().endswith(
        "ZeroDivisionError: division by zero"
    )
    assert "error:" not in proc.stderr
