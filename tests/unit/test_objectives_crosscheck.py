"""benchmarks/crosscheck/objectives_crosscheck.py runs and every check it can run agrees (the
DynamicPO k-means rows need scikit-learn and are skipped without it)."""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import REPO


def test_crosscheck_agrees(capsys, monkeypatch):
    path = REPO / "benchmarks" / "crosscheck" / "objectives_crosscheck.py"
    spec = importlib.util.spec_from_file_location("objectives_crosscheck", path)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # dataclasses look their module up
    spec.loader.exec_module(script)
    assert script.main(["--rows", "16", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "| softmax_simpo " in out and "| dynamicpo " in out
