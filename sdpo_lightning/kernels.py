"""Pinned CPU kernel paths: the same float results on every x86-64 machine.

One intra-op thread fixes the *order* of float reductions, but not *which* vector kernels
compute them. On the CPU, three libraries choose their code path from the instructions the
processor has, each changing the rounding of the results:

* ATen (PyTorch's own kernels) picks ``default`` / ``avx2`` / ``avx512`` at start-up; the
  vector width changes the order of reductions inside a kernel, and even the random
  normal draws of weight initialisation take another code path under ``avx2``;
* MKL (the BLAS of the x86-64 wheels) picks an instruction set per call
  (its *conditional numerical reproducibility* setting ``MKL_CBWR`` pins it);
* oneDNN picks its ISA at start-up (``ONEDNN_MAX_CPU_ISA`` caps it).

MKL's vector math (which ATen calls for ``torch.sqrt`` on float tensors) is not pinned by
``MKL_CBWR``: its last bit differs between processors. The optimizer therefore runs fused
(``torch.optim.AdamW(fused=True)``, whose square root is exact); see docs/reproducibility.md.

A tiny model trained for a few epochs turns last-bit differences into a different model, so
the demo runs with all of them pinned to their portable paths (:data:`PINNED`). Every
setting is read when a library loads, so :func:`reexec_pinned` starts the program again
with the pinned environment before anything is computed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Literal

KernelSetting = Literal["pinned", "native"]

#: The environment of the pinned setting: portable code paths everywhere, one thread.
PINNED: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "DNNL_MAX_CPU_ISA": "SSE41",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

#: Marks a process started again by :func:`reexec_pinned` (guards against a loop).
_MARK = "SDPO_KERNELS_PINNED"


def pinned_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: ``os.environ``) with :data:`PINNED` applied."""
    env = dict(os.environ if base is None else base)
    env.update(PINNED)
    return env


def is_pinned(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``env`` (default: ``os.environ``) holds every pinned setting."""
    env = os.environ if env is None else env
    return all(env.get(k) == v for k, v in PINNED.items())


def reexec_pinned(setting: KernelSetting = "pinned") -> None:
    """Make sure this process runs with ``setting``'s kernels; returns when it does.

    ``"native"`` leaves the environment as it is (each library picks its fastest path).
    ``"pinned"`` returns at once when the environment is already pinned; otherwise it
    replaces the process with the same command line under :func:`pinned_env` (libraries
    read these settings when they load).

    Raises:
        RuntimeError: If the pinned environment did not survive a restart.
    """
    if setting == "native" or is_pinned():
        return
    if os.environ.get(_MARK):
        raise RuntimeError(
            "could not pin the CPU kernels: the restarted process lost its "
            f"environment ({', '.join(sorted(PINNED))})"
        )
    env = pinned_env()
    env[_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def describe() -> str:
    """One line naming the kernel paths in use (``torch`` must be importable)."""
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    state = "pinned" if is_pinned() else "native"
    return (
        f"CPU kernels: {state} (ATen {cap}, MKL_CBWR={os.environ.get('MKL_CBWR', 'auto')}, "
        f"threads {torch.get_num_threads()})"
    )
