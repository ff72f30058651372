"""``benchmarks/onpolicy_refresh.py`` runs end to end on a few rows and prints its table
(slow: it generates the quickstart synthetic data first)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "onpolicy_refresh.py"


@pytest.mark.slow
def test_onpolicy_refresh_benchmark_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("onpolicy_refresh", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--rows", "16", "--batch", "8", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in (
        "train step",
        "on_policy refresh",
        "on_policy_beam refresh (beam search",
        "on_policy_beam refresh (exact",
    ):
        assert name in out
