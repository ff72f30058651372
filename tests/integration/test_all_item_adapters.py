"""The all-item study's committed adapters reproduce their rows (slow: about 5-10 min each on CPU).

``sdpo test`` with ``benchmarks/quality/adapters/all_item_<dataset>_<run>`` on the study's test
rows (rebuilt by the runner's own seeded split from ``../shared``) must return the committed
per-row top-10 lists of ``benchmarks/quality/results/all_item/<dataset>/<run>/``, hence the same
summary. Run with ``pytest -m slow tests/integration/test_all_item_adapters.py``.

The committed rows were computed with ATen's AVX-512 kernels (torch 2.13.0, x86-64); on another
kernel path two items within rounding of each other may swap places, so there up to
:data:`MAX_CHANGED` of the rows may differ and HR@10 may move by as much.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdpo_lightning.evaluation.report import read_predictions
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks" / "quality"))
import all_item_study  # noqa: E402

RESULTS_CAPABILITY = "AVX512"
MAX_CHANGED = 0.01
ADAPTERS = REPO / "benchmarks" / "quality" / "adapters"
RESULTS = all_item_study.RESULTS
CASES = sorted(p.name for p in ADAPTERS.glob("all_item_*") if p.is_dir())


@pytest.mark.slow
@pytest.mark.parametrize("adapter", CASES)
def test_all_item_adapter_reproduces_its_row(
    adapter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, run = adapter.removeprefix("all_item_").split("_", 1)
    if not all_item_study.GGUF.is_file():
        pytest.skip("needs ../shared (SmolLM2 GGUF and the data)")
    # the runner's seeded split, written to tmp_path (the committed split.json / users untouched)
    monkeypatch.setattr(all_item_study, "RESULTS", tmp_path / "results")
    files, catalogue, _ = all_item_study.split(dataset, tmp_path, 42, 2000, 256, 400)
    want_summary = json.loads((RESULTS / dataset / run / "summary.json").read_text())
    assert want_summary["n_examples"] == len(json.loads(files["test"].read_text()))
    # the committed command (results/all_item/<dataset>/<run>/command.txt), run on this split
    # with the committed adapter: $OUT is the runner's work directory
    cmd = shlex.split(
        (RESULTS / dataset / run / "command.txt").read_text().replace("$OUT", str(tmp_path))
    )
    assert cmd[:2] == ["sdpo", "test"]
    cmd = [sys.executable, "-m", "sdpo_lightning", *cmd[1:]]
    cmd = [
        str(REPO.parent / "shared") + c.removeprefix("../shared")
        if c.startswith("../shared")
        else c
        for c in cmd
    ]
    cmd += [
        "--model.source.init_adapter",
        str(ADAPTERS / adapter),
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
    ]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def lists(path: Path) -> list[tuple[int, tuple[str, ...]]]:
        return sorted((r["index"], tuple(r["all_item"]["items"])) for r in read_predictions(path))

    got, want = lists(tmp_path / "run" / "predictions.jsonl"), lists(RESULTS / dataset / run / "predictions.jsonl")  # fmt: skip
    got_m = json.loads((tmp_path / "run" / "summary.json").read_text())["protocols"]["all_item"]
    want_m = want_summary["protocols"]["all_item"]
    if torch.backends.cpu.get_cpu_capability() == RESULTS_CAPABILITY:
        assert got == want
        assert got_m == want_m
        return
    assert [i for i, _ in got] == [i for i, _ in want]
    changed = sum(a != b for a, b in zip(got, want, strict=True))
    assert changed <= MAX_CHANGED * len(want)
    assert abs(got_m["hr@10"]["value"] - want_m["hr@10"]["value"]) <= MAX_CHANGED
