"""``benchmarks/beam_search.py`` runs end to end with the tiny model on a few LastFM rows and
prints its table; both decoders return the same items (slow: it loads SmolLM2's tokenizer and
scores every catalogue item of one row)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import GGUF, LASTFM, require_shared

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "beam_search.py"


@pytest.mark.slow
def test_beam_search_benchmark_runs(tmp_path, capsys):
    require_shared(GGUF)
    require_shared(LASTFM / "valid.json")
    spec = importlib.util.spec_from_file_location("beam_search_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out_json = tmp_path / "result.json"
    argv = ["--tiny", "--dataset", "lastfm", "--rows", "4", "--batch", "4", "--exact-rows", "1"]
    assert bench.main([*argv, "--work-dir", str(tmp_path), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "| ours (`constrained_beam_search`) | 4 |" in out and "generate(num_beams=10)" in out
    result = json.loads(out_json.read_text())
    assert result["overlap"] == 1.0 and result["identical"] == 4 and result["exact_rows"] == 1
