"""MoRec with a tiny text encoder (a 2-layer LLaMA built in code): mean-pooled title embeddings,
their cache, the projected item table, and the CLI in both protocols (no real model loads)."""

from __future__ import annotations

import json

import pytest
import torch

from sdpo_lightning.baselines.cli import main as baseline_main
from sdpo_lightning.baselines.morec import (
    MoRec,
    embedding_cache_path,
    encode_titles,
    title_embeddings,
)
from sdpo_lightning.data.catalogue import catalogue_from_candidate_lists, write_catalogue
from sdpo_lightning.evaluation.report import read_predictions

TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
)


@pytest.fixture(scope="module")
def tiny_encoder(tokenizer):
    from sdpo_lightning.modeling.models import build_policy

    return build_policy(None, tokenizer, tiny_config=TINY, init_seed=0)


def test_encode_titles_is_the_mean_of_the_last_hidden_layer(tiny_encoder, tokenizer) -> None:
    titles = ["a b c", "d", "e f"]
    emb = encode_titles(titles, tiny_encoder, tokenizer, batch_size=2)
    assert emb.shape == (3, 32) and torch.isfinite(emb).all()
    for i, t in enumerate(titles):  # one title alone, no padding: the same vector
        ids = tokenizer(t, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = tiny_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(emb[i], h.mean(0), rtol=1e-4, atol=1e-5)


def test_title_embeddings_are_cached_by_encoder_and_titles(
    synthetic_dir, tmp_path, monkeypatch
) -> None:
    tok = str(synthetic_dir / "tokenizer")
    titles = ["a b", "c"]
    first = title_embeddings(titles, None, tok, TINY, tmp_path)
    path = embedding_cache_path(tmp_path, titles, None, tok, TINY)
    assert path.exists() and list(tmp_path.iterdir()) == [path]
    import sdpo_lightning.modeling.models as models

    monkeypatch.setattr(models, "build_policy", lambda *a, **k: pytest.fail("cache not used"))
    torch.testing.assert_close(title_embeddings(titles, None, tok, TINY, tmp_path), first)
    assert embedding_cache_path(tmp_path, ["a b", "d"], None, tok, TINY) != path
    assert embedding_cache_path(tmp_path, titles, None, tok, {**TINY, "hidden_size": 16}) != path


def test_item_table_is_the_projection_of_standardised_text(synthetic_dir) -> None:
    model = MoRec(num_items=6, max_len=3, d=8, dropout=0.0, encoder=None, embedding_cache_dir=None)
    emb = torch.randn(6, 32) * 5 + 3
    model.set_text_embeddings(emb)
    table = model.item_table()
    assert table.shape == (6, 8) and torch.all(table[0] == 0)
    z = (emb[2:] - emb[2:].mean(0)) / emb[2:].std(0)
    torch.testing.assert_close(table[2:], model.proj(z))
    logits = model.logits(torch.tensor([[0, 2, 3], [4, 5, 1]]))
    assert logits.shape == (2, 6) and torch.isfinite(logits).all()
    names = {n for n, _ in model.named_parameters()}
    assert "proj.weight" in names and not any(n.startswith("embed") for n in names)
    assert "text_emb" not in model.state_dict()  # recomputed / read from the cache


@pytest.mark.parametrize("protocol", ["candidates", "all_item"])
def test_cli_fit_and_test_with_a_tiny_encoder(protocol, synthetic_dir, tmp_path) -> None:
    train, valid = synthetic_dir / "train.json", synthetic_dir / "valid.json"
    args = [
        "fit",
        "--seed_everything",
        "0",
        "--model=sdpo_lightning.baselines.morec.MoRec",
        "--model.init_args.d",
        "16",
        "--model.init_args.dropout",
        "0.0",
        "--model.init_args.lr",
        "0.01",
        "--model.init_args.encoder",
        "null",
        "--model.init_args.tokenizer_path",
        str(synthetic_dir / "tokenizer"),
        "--model.init_args.tiny_config",
        json.dumps(TINY),
        "--model.init_args.embedding_cache_dir",
        str(tmp_path / "cache"),
        "--data.train_file",
        str(train),
        "--data.test_file",
        str(valid),
        "--data.dataset",
        "toy",
        "--data.max_len",
        "5",
        "--data.batch_size",
        "32",
        "--trainer.max_epochs",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--trainer.logger",
        "false",
    ]
    if protocol == "all_item":
        cat = write_catalogue(
            catalogue_from_candidate_lists([train, valid]), tmp_path / "catalogue.json"
        )
        args += [
            "--data.protocol",
            "all_item",
            "--data.catalogue_file",
            str(cat),
            "--data.top_n",
            "10",
        ]
    assert baseline_main(args) == 0
    s = json.loads((tmp_path / "run/summary.json").read_text())
    assert s["method"] == "MoRec" and s["config"]["encoder"] is None
    recs = read_predictions(tmp_path / "run/predictions.jsonl")
    if protocol == "all_item":
        assert set(s["protocols"]) == {"all_item"} and s["catalogue"]["top_n"] == 10
        assert all(len(r["all_item"]["items"]) == 10 for r in recs)
    else:
        assert 0.0 <= s["protocols"]["ranking"]["hr@1"]["value"] <= 1.0
        assert all(len(r["scores"]) == len(recs[0]["scores"]) for r in recs)
    assert len(list((tmp_path / "cache").iterdir())) == 1
