"""Shared fixtures: a small synthetic dataset with its offline tokenizer, tiny model configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GGUF = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LASTFM = SHARED / "data" / "lastfm"

TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
)


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
    from sdpo_lightning.modeling.models import load_tokenizer

    return load_tokenizer(None, tokenizer_path=str(synthetic_dir / "tokenizer"))


@pytest.fixture()
def count_builds(monkeypatch):
    """Counts the reference passes (``score_dataset`` calls) made by ``ReferenceCache.build``."""
    import sdpo_lightning.scoring.reference_cache as rc

    calls: list[int] = []
    real = rc.score_dataset

    def counting(module, dataset, *args, **kwargs):
        calls.append(len(dataset))
        return real(module, dataset, *args, **kwargs)

    monkeypatch.setattr(rc, "score_dataset", counting)
    return calls


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


def tiny_config(tmp: Path, synthetic_dir: Path, name: str, **model) -> Path:
    """Write a tiny-LLaMA LoRA run config on the synthetic data; ``model`` overrides (by field
    name, e.g. ``objective="sft", beta=2``: regrouped by ``grouped_kwargs`` into
    ``model.objective.name`` and ``model.objective.beta``)."""
    from sdpo_lightning.training.module_args import grouped_kwargs

    cfg = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(tmp / name),
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 4,
            "limit_val_batches": 1,
            "val_check_interval": 2,
            "limit_test_batches": 2,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
            "enable_model_summary": False,
        },
        "model": grouped_kwargs(
            {
                "model_name_or_path": None,
                "tokenizer_path": str(synthetic_dir / "tokenizer"),
                "tiny_config": TINY,
                "lora": {
                    "r": 4,
                    "alpha": 8,
                    "dropout": 0.0,
                    "target_modules": ["q_proj", "v_proj"],
                },
                "learning_rate": 1e-2,
                "max_new_tokens": 6,
                "num_negatives": 3,
                "eval_protocols": ["generation", "ranking"],
                **model,
            }
        ),
        "data": {
            "train_file": str(synthetic_dir / "train.json"),
            "val_file": str(synthetic_dir / "valid.json"),
            "test_file": str(synthetic_dir / "test.json"),
            "batch_size": 2,
            "eval_batch_size": 4,
            "max_length": 256,
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
