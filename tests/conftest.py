"""Shared fixtures: a small synthetic dataset with its offline tokenizer, tiny model configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GGUF = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LASTFM = SHARED / "data" / "lastfm"

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)


def require_shared(path: Path) -> Path:
    """Skip (with the reason printed) when ``../shared`` lacks ``path``."""
    if not path.exists():
        reason = f"{path} is absent (../shared not laid out next to the repo)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset (train/valid/test JSON) and its tokenizer under ``tokenizer/``."""
    from sdpo_lightning.data.synthetic import main

    out = tmp_path_factory.mktemp("synthetic")
    assert main(["--out", str(out), "--seed", "0", "--n-users", "40", "--n-items", "80"]) == 0
    return out


@pytest.fixture(scope="session")
def tokenizer(synthetic_dir):
    from sdpo_lightning.models import load_tokenizer

    return load_tokenizer(None, tokenizer_path=str(synthetic_dir / "tokenizer"))


@pytest.fixture()
def write_json(tmp_path):
    """Write a candidate-list file and return its path."""

    def _write(records, name: str = "data.json") -> Path:
        path = tmp_path / name
        if name.endswith(".jsonl"):
            path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        else:
            path.write_text(json.dumps(records))
        return path

    return _write


def record(history=("A", "B"), items=("A2", "B2", "C2", "D2"), target="B2", **extra) -> dict:
    """A valid candidate-list record (overridable)."""
    hist = history if isinstance(history, str) else list(history)
    return {"historyList": hist, "itemList": list(items), "trueSelection": target, **extra}
