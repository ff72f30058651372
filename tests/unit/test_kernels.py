"""Pinned CPU kernels (``sdpo_lightning.kernels``): the environment, and the restart that
applies it before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys

from sdpo_lightning.kernels import PINNED, is_pinned, pinned_env
from tests.conftest import REPO

_PROBE = (
    "from sdpo_lightning.kernels import reexec_pinned, describe; import sys; "
    "reexec_pinned(sys.argv[1]); import os, torch; "
    "print(os.environ.get('ATEN_CPU_CAPABILITY'), torch.backends.cpu.get_cpu_capability(), sys.argv[1:])"
)


def _run(setting: str, **env: str) -> str:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    for key in PINNED:
        full.pop(key, None)
    full.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, setting, "extra-arg"],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_pinned_env_applies_every_setting_over_the_base() -> None:
    env = pinned_env({"ATEN_CPU_CAPABILITY": "avx512", "HOME": "/x"})
    assert env["HOME"] == "/x" and is_pinned(env)
    assert env["ATEN_CPU_CAPABILITY"] == "default" and env["MKL_CBWR"] == "COMPATIBLE"
    assert not is_pinned({**env, "MKL_CBWR": "AUTO"})


def test_reexec_restarts_with_the_pinned_kernels_and_the_same_arguments() -> None:
    # a capability asked for by the caller is overridden: the pinned path is the portable one
    assert _run("pinned", ATEN_CPU_CAPABILITY="avx2") == "default DEFAULT ['pinned', 'extra-arg']"


def test_native_leaves_the_environment_alone() -> None:
    out = _run("native", ATEN_CPU_CAPABILITY="default")
    assert out == "default DEFAULT ['native', 'extra-arg']"
    assert _run("native").startswith("None ")
