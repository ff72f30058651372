"""RecDataModule: loading, batching, completion selection and determinism."""

from __future__ import annotations

import torch

from sdpo_lightning.data.collate import negative_indices, select_completions
from sdpo_lightning.data.datamodule import RecDataModule
from sdpo_lightning.training.negatives import negatives_for


def _dm(synthetic_dir, tokenizer, **kw) -> RecDataModule:
    dm = RecDataModule(
        train_file=str(synthetic_dir / "train.json"),
        val_file=str(synthetic_dir / "valid.json"),
        test_file=str(synthetic_dir / "test.json"),
        batch_size=4,
        num_negatives=3,
        **kw,
    )
    dm.tokenizer = tokenizer
    return dm


def test_batches_have_documented_shapes(synthetic_dir, tokenizer):
    dm = _dm(synthetic_dir, tokenizer)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    b, p = batch["prompt_input_ids"].shape
    assert b == 4 and batch["prompt_attention_mask"].shape == (b, p)
    assert batch["candidate_input_ids"].shape[:2] == (b, 20)
    # left-padded prompts: the last column is always a real token
    assert batch["prompt_attention_mask"][:, -1].all()
    # every candidate completion ends with EOS where its mask ends
    lengths = batch["candidate_attention_mask"].sum(-1)  # (B, M)
    last = batch["candidate_input_ids"].gather(2, (lengths - 1).unsqueeze(-1)).squeeze(-1)
    assert (last == tokenizer.eos_token_id).all()
    for i in range(b):
        t = batch["target_index"][i]
        assert batch["candidates"][i][t] == batch["target"][i]


def test_select_completions_puts_the_chosen_first(synthetic_dir, tokenizer):
    dm = _dm(synthetic_dir, tokenizer)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    neg = negative_indices(batch, 3, "random", seed=0, epoch=0)
    out = select_completions(batch, neg)
    n, c = out["completion_input_ids"].shape[1:]
    assert n == 4 and out["completion_index"][:, 0].tolist() == batch["target_index"].tolist()
    for i in range(4):
        for j, cand in enumerate(out["completion_index"][i].tolist()):
            m = int(batch["candidate_attention_mask"][i, cand].sum())
            assert torch.equal(
                out["completion_input_ids"][i, j, :m], batch["candidate_input_ids"][i, cand, :m]
            )
            assert int(out["completion_attention_mask"][i, j].sum()) == m
    assert (out["completion_index"][:, 1:] != out["completion_index"][:, :1]).all()


def test_same_config_and_seed_same_prompts_and_negatives(synthetic_dir, tokenizer):
    a, b, c = (_dm(synthetic_dir, tokenizer, seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup("fit")
    idx = list(range(12))
    assert [a.datasets["fit"][i]["prompt"] for i in idx] == [
        b.datasets["fit"][i]["prompt"] for i in idx
    ]
    assert torch.equal(negatives_for(a, "fit", idx, epoch=2), negatives_for(b, "fit", idx, epoch=2))
    assert not torch.equal(
        negatives_for(a, "fit", idx, epoch=2), negatives_for(a, "fit", idx, epoch=3)
    )
    assert not torch.equal(
        negatives_for(a, "fit", idx, epoch=2), negatives_for(c, "fit", idx, epoch=2)
    )


def test_popularity_counts_training_targets(synthetic_dir, tokenizer):
    import json

    dm = _dm(synthetic_dir, tokenizer, negative_sampling="popularity")
    dm.setup("fit")
    targets = [r["trueSelection"] for r in json.loads((synthetic_dir / "train.json").read_text())]
    item = dm.datasets["fit"][0]
    assert item["popularity"] == [float(targets.count(c)) for c in item["candidates"]]
    assert dm.datasets["validate"][0]["popularity"] == [0.0] * 20  # only training counts are used


def test_test_split_needs_a_file(synthetic_dir, tokenizer):
    import pytest

    dm = RecDataModule(train_file=str(synthetic_dir / "train.json"))
    dm.tokenizer = tokenizer
    with pytest.raises(ValueError, match=r"no test file configured \(data.test_file\)"):
        dm.setup("test")
