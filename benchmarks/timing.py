"""Timing and memory helpers shared by the benchmarks (``step_cost.py``, ``trl_dpo.py``,
``scaling.py``): peak resident memory from ``/proc/self/status`` and a timed-repeat loop."""

from __future__ import annotations

import ctypes
import gc
import re
import time
from pathlib import Path
from typing import Any


def _status_mb() -> dict[str, float]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) / 1024 for k in ("VmRSS", "VmHWM")}


def reset_peak() -> bool:
    """Free what can be freed and reset the kernel's peak-RSS mark; False if not possible."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def timed(step, zero_grad, repeats: int, budget: float) -> dict[str, Any]:
    """Run ``step`` up to ``repeats`` times (stop once ``budget`` seconds are spent, after one
    at least); wall times, loss and peak memory."""
    zero_grad()
    can_reset = reset_peak()
    before = _status_mb()["VmRSS"]
    seconds, cpu, losses, start = [], [], [], time.perf_counter()
    for _ in range(repeats):
        zero_grad()
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step())
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if time.perf_counter() - start > budget:
            break
    peak = _status_mb()["VmHWM"]
    import torch

    return {
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "loss": losses[0],
        "losses": losses,
        "rss_before_mb": before,
        "peak_rss_mb": peak if can_reset else None,
        "step_mb": peak - before if can_reset else None,
    }
