"""Faults as a user meets them: a fit killed with SIGKILL mid-epoch resumes to the same
adapter; a fit killed during export leaves nothing ``--model.source.init_adapter`` accepts; two runs
on one ``default_root_dir`` are refused, and a killed run's lock does not block the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sdpo_lightning.cli import cli_main
from tests.conftest import REPO, tiny_config

CALLBACKS = "tests.integration.fault_callbacks"


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("SDPO_DEBUG", None)
    cmd = [sys.executable, "-m", "sdpo_lightning", *args]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _run(*args: str, timeout: int = 300) -> subprocess.Popen:
    """``sdpo *args`` in a subprocess, waited for; ``.stdout`` / ``.stderr`` hold its output."""
    proc = _spawn(*args)
    proc.stdout, proc.stderr = proc.communicate(timeout=timeout)
    return proc


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def _user_error(capsys, *args: str) -> str:
    """Run ``sdpo`` in-process, expect exit status 2; return its one error line."""
    with pytest.raises(SystemExit) as exc:
        cli_main(list(args))
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_sigkill_mid_epoch_then_resume_from_last_gives_the_same_adapter(tmp_path, synthetic_dir):
    """Epochs of 5 steps, a checkpoint every 3 steps; killed at step 8, the run resumes from
    the step-6 checkpoint, one step into its second epoch."""

    def common(root: Path) -> list[str]:
        return [
            "--trainer.max_steps",
            "10",
            "--trainer.limit_train_batches",
            "5",
            "--trainer.max_epochs",
            "2",
            "--trainer.val_check_interval",
            "1.0",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={root / 'checkpoints'}",
            "--trainer.callbacks.every_n_train_steps=3",
            "--trainer.callbacks.save_last=true",
        ]

    full = tiny_config(tmp_path, synthetic_dir, "full", objective="sdpo")
    cli_main(["fit", "-c", str(full), *common(tmp_path / "full")])

    crash = tiny_config(tmp_path, synthetic_dir, "crash", objective="sdpo")
    proc = _run(
        "fit",
        "-c",
        str(crash),
        *common(tmp_path / "crash"),
        f"--trainer.callbacks+={CALLBACKS}.SigkillAtStep",
        "--trainer.callbacks.step=8",
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (tmp_path / "crash" / "export").exists()
    last = torch.load(
        tmp_path / "crash" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert last["global_step"] == 6 and last["epoch"] == 1  # mid-epoch: 1 of epoch 2's 5 steps done

    cli_main(["fit", "-c", str(crash), *common(tmp_path / "crash"), "--ckpt_path", "last"])
    a, b = _adapter(tmp_path / "full" / "export"), _adapter(tmp_path / "crash" / "export")
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_sigkill_during_export_leaves_no_adapter_that_loads(tmp_path, synthetic_dir, capsys):
    cfg = tiny_config(tmp_path, synthetic_dir, "run", objective="sft")
    proc = _run(
        "fit",
        "-c",
        str(cfg),
        "--trainer.max_steps",
        "2",
        f"--trainer.callbacks+={CALLBACKS}.SigkillDuringExport",
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    export = tmp_path / "run" / "export"
    assert not export.exists()
    (partial,) = (tmp_path / "run").glob(
        ".export.partial-*"
    )  # weights and tokenizer written, not sealed
    assert (partial / "adapter_model.safetensors").is_file() and (
        partial / "tokenizer.json"
    ).is_file()

    stage2 = tiny_config(tmp_path, synthetic_dir, "stage2", objective="sdpo")
    line = _user_error(capsys, "fit", "-c", str(stage2), "--model.source.init_adapter", str(export))
    assert line == f"sdpo: error: init_adapter {str(export)!r}: no such directory"
    line = _user_error(
        capsys, "fit", "-c", str(stage2), "--model.source.init_adapter", str(partial)
    )
    assert "incomplete export" in line and str(partial) in line

    # the next export of the same path completes it and clears the leftover
    cli_main(["fit", "-c", str(cfg), "--trainer.max_steps", "2"])
    assert (export / "export_complete.json").is_file() and not partial.exists()


def test_second_run_on_the_same_root_is_refused_while_the_first_runs(
    tmp_path, synthetic_dir, capsys
):
    cfg = tiny_config(tmp_path, synthetic_dir, "shared", objective="sdpo")
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = _spawn(
        "fit",
        "-c",
        str(cfg),
        f"--trainer.callbacks+={CALLBACKS}.HoldAtStep",
        "--trainer.callbacks.step=1",
        f"--trainer.callbacks.ready={ready}",
        f"--trainer.callbacks.go={go}",
    )
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first run never reached step 1"
            time.sleep(0.2)
        line = _user_error(capsys, "fit", "-c", str(cfg))
        assert line == (
            f"sdpo: error: {tmp_path / 'shared'} is in use by another run (pid {first.pid}); "
            "wait for it to end or set another trainer.default_root_dir"
        )
    finally:
        go.touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert (tmp_path / "shared" / "export" / "export_complete.json").is_file()


def test_a_killed_runs_lock_does_not_block_the_next_run(tmp_path, synthetic_dir):
    cfg = tiny_config(tmp_path, synthetic_dir, "stale", objective="sdpo")
    proc = _run(
        "fit",
        "-c",
        str(cfg),
        f"--trainer.callbacks+={CALLBACKS}.SigkillAtStep",
        "--trainer.callbacks.step=1",
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (tmp_path / "stale" / ".sdpo.lock").read_text().strip() == str(
        proc.pid
    )  # the file stays, unlocked
    cli_main(["fit", "-c", str(cfg), "--trainer.max_steps", "2"])
    assert (tmp_path / "stale" / "export" / "export_complete.json").is_file()
