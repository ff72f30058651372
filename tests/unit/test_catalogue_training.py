"""All-item training rows (``data.train_protocol: all_item``): history-only prompts, candidates =
the target + M catalogue draws that are never the target or a history item, uniform or
popularity-weighted, the same for a (seed, epoch, row) and re-drawn per epoch (the training
sampler hands the dataset its epoch); validation: one fixed draw; the negative selectors apply
unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdpo_lightning.data.catalogue import load_catalogue
from sdpo_lightning.data.catalogue_training import (
    CatalogueDataset,
    catalogue_generator,
    draw_catalogue_items,
)
from sdpo_lightning.data.datamodule import RecDataModule
from sdpo_lightning.data.negatives import NegativeSampling
from sdpo_lightning.data.prepare.cli import main as prepare_main
from sdpo_lightning.errors import ConfigError
from sdpo_lightning.training.negatives import make_selector

M = 12


@pytest.fixture(scope="module")
def catalogue(synthetic_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("catalogue") / "catalogue.json"
    files = [str(synthetic_dir / f"{s}.json") for s in ("train", "valid", "test")]
    assert prepare_main(["catalogue", *files, "--out", str(out)]) == 0
    return out


def _dm(synthetic_dir, tokenizer, catalogue, **kw) -> RecDataModule:
    args = dict(
        train_file=str(synthetic_dir / "train.json"),
        val_file=str(synthetic_dir / "valid.json"),
        batch_size=4,
        num_negatives=3,
        seed=5,
        max_length=256,
        train_protocol="all_item",
        catalogue_file=str(catalogue),
        catalogue_candidates=M,
    )
    dm = RecDataModule(**{**args, **kw})
    dm.connect(tokenizer)
    dm.setup("fit")
    return dm


def test_draws_exclude_and_repeat_for_a_seed():
    exclude = [0, 3, 7]
    a = draw_catalogue_items(20, exclude, 10, catalogue_generator(1, 0, 4))
    assert a == draw_catalogue_items(20, exclude, 10, catalogue_generator(1, 0, 4))
    assert len(set(a)) == 10 and not set(a) & set(exclude)
    assert a != draw_catalogue_items(20, exclude, 10, catalogue_generator(1, 1, 4))  # next epoch
    assert sorted(draw_catalogue_items(20, exclude, 17, catalogue_generator(1, 0, 4))) == [
        i for i in range(20) if i not in exclude
    ]  # all that is left
    with pytest.raises(
        ValueError, match="catalogue_candidates 18 is more than the 17 catalogue items left"
    ):
        draw_catalogue_items(20, exclude, 18, catalogue_generator(1, 0, 4))


def test_popularity_draws_favour_popular_items():
    pop = torch.zeros(50, dtype=torch.long)
    pop[:5] = 1000
    hits = sum(
        len(set(draw_catalogue_items(50, [], 5, catalogue_generator(0, 0, r), pop)) & set(range(5)))
        for r in range(40)
    )
    assert hits > 0.8 * 40 * 5  # uniform would give 40 * 5 * 5 / 50 = 20


def test_rows_hold_the_target_and_catalogue_draws_never_the_history(
    synthetic_dir, tokenizer, catalogue
):
    dm = _dm(synthetic_dir, tokenizer, catalogue)
    train = dm.datasets["fit"]
    assert isinstance(train, CatalogueDataset) and isinstance(
        dm.datasets["validate"], CatalogueDataset
    )
    titles = set(load_catalogue(catalogue).titles)
    for i in range(0, len(train), 37):
        ex, item = train.examples[i], train[(i, 2)]
        cands = item["candidates"]
        assert cands[0] == ex.target and item["target_index"] == 0 and len(cands) == M + 1
        assert len(set(cands)) == M + 1 and set(cands) <= titles
        assert not set(cands[1:]) & (set(ex.history) | {ex.target})
        assert item["candidates"] == train[(i, 2)]["candidates"]  # same (seed, epoch, row)
        assert "Choose" not in item["prompt"] and ex.history[-1] in item["prompt"]  # history only
    moved = sum(train[(i, 0)]["candidates"] != train[(i, 1)]["candidates"] for i in range(20))
    assert moved == 20  # re-drawn each epoch
    val = dm.datasets["validate"]
    assert val[3]["candidates"] == val[3]["candidates"]  # one fixed draw
    other = _dm(synthetic_dir, tokenizer, catalogue, seed=6).datasets["fit"]
    assert other[(0, 0)]["candidates"] != train[(0, 0)]["candidates"]  # the seed decides


def test_the_training_loader_hands_the_epoch_and_selectors_apply(
    synthetic_dir, tokenizer, catalogue
):
    dm = _dm(synthetic_dir, tokenizer, catalogue, catalogue_sampling="popularity")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(3)
    batch = next(iter(loader))
    i = int(batch["index"][0])
    assert batch["candidates"][0] == dm.datasets["fit"][(i, 3)]["candidates"]
    assert batch["candidate_input_ids"].shape[:2] == (4, M + 1)
    negatives = make_selector(NegativeSampling("random", k=3, seed=5)).select(batch, 3, 3)
    assert negatives.shape == (4, 3) and not (negatives == 0).any()  # never the target (index 0)


def test_settings_are_checked(synthetic_dir, tokenizer, catalogue):
    with pytest.raises(ConfigError, match="set data.catalogue_file"):
        RecDataModule(train_protocol="all_item")
    with pytest.raises(
        ValueError, match=r"catalogue_candidates \(2\) must be >= num_negatives \(3\)"
    ):
        RecDataModule(
            train_protocol="all_item", catalogue_file=str(catalogue), catalogue_candidates=2
        )
    with pytest.raises(ValueError, match="train_protocol must be"):
        RecDataModule(train_protocol="all_items")


def test_the_reference_cache_key_names_the_catalogue_rows(synthetic_dir, tokenizer, catalogue):
    from sdpo_lightning.scoring.reference_cache import data_identity

    rows = _dm(synthetic_dir, tokenizer, catalogue)
    plain = RecDataModule(train_file=str(synthetic_dir / "train.json"), seed=5, max_length=256)
    plain.connect(tokenizer)
    ident = data_identity(rows, "fit")
    assert ident["train_protocol"] == "all_item" and ident["catalogue_candidates"] == M
    assert ident["templates"] != data_identity(plain, "fit")["templates"]  # history-only prompts
    assert "train_protocol" not in data_identity(plain, "fit")  # candidate-list keys unchanged
