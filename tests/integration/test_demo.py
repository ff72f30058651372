"""``make demo`` (the embedded default) learns, and the README shows exactly what it prints.

Runs the real demo (``python -m sdpo_lightning.demo``: synthetic data, SFT, test, S-DPO,
test, baselines) in a temporary directory with the repository's configs — about 3-4 min on
2 cores — and checks that

* the results block equals the README's block between the ``demo-output`` markers
  (the numbers are deterministic: seeded data, seeded training, CPU kernels);
* SFT's ranking HR@1 is at least 0.5 with 5 candidates (chance 0.2) and its ValidRatio at
  least 0.95;
* S-DPO beats SFT on the same rows: both paired-bootstrap intervals lie above 0.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

START, END = "<!-- demo-output:start -->", "<!-- demo-output:end -->"


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    body = text.split(START, 1)[1].split(END, 1)[0]
    return body.strip().removeprefix("```text").removesuffix("```").strip()


def test_demo_learns_and_readme_shows_its_output(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "sdpo_lightning.demo", "--configs", str(REPO / "configs")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    block = (tmp_path / "runs" / "quickstart" / "results.txt").read_text().strip()
    assert block in proc.stdout

    root = tmp_path / "runs" / "quickstart"
    sft = json.loads((root / "sft" / "summary.json").read_text())["protocols"]
    assert sft["ranking"]["hr@1"]["value"] >= 0.5
    assert sft["generation"]["valid_ratio"]["value"] >= 0.95
    paired = re.findall(r"^\s+(generation|ranking) HR@1\s+([+-][\d.]+) \[([+-][\d.]+), ([+-][\d.]+)\]$", block, re.M)
    assert [p[0] for p in paired] == ["generation", "ranking"]
    for _, delta, lo, _hi in paired:
        assert float(delta) > 0 and float(lo) > 0, block

    assert block == readme_block(), "README's demo block differs from what `make demo` prints:\n" + block
