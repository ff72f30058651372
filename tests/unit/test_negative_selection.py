"""Negative selection lives with the model, not the data: the selectors of each strategy draw
exactly what ``negative_indices`` draws, the module picks a batch's negatives (training: its
selector and the epoch; validation: random, fixed), an assigned selector replaces the data's
strategy, and the data module gets its tokenizer through ``connect``, never from the module."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden

import sdpo_lightning
from sdpo_lightning.data.collate import negative_indices, select_completions
from sdpo_lightning.data.datamodule import RecDataModule
from sdpo_lightning.data.negatives import NegativeSampling
from sdpo_lightning.training.negatives import (
    VAL_EPOCH,
    HardNegatives,
    NegativeSelector,
    PopularityNegatives,
    RandomNegatives,
    TemperedNegatives,
    make_selector,
    negatives_for,
)


@pytest.fixture(scope="module")
def dm(synthetic_dir, tokenizer) -> RecDataModule:
    dm = RecDataModule(
        train_file=str(synthetic_dir / "train.json"),
        val_file=str(synthetic_dir / "valid.json"),
        batch_size=4,
        num_negatives=3,
        seed=5,
    )
    dm.connect(tokenizer)
    dm.setup("fit")
    return dm


def _scores(batch):
    """A fixed score of every candidate (a stand-in for the reference's)."""
    g = torch.Generator().manual_seed(int(batch["index"].sum()))
    return torch.randn(batch["candidate_mask"].shape, generator=g)


@pytest.mark.parametrize("strategy", ["random", "popularity", "hard", "tempered"])
def test_each_strategys_selector_draws_what_negative_indices_draws(dm, strategy):
    batch = dm.collated("fit", list(range(8)))
    sampling = NegativeSampling(strategy, k=3, seed=5, temperature=0.7)
    selector = make_selector(sampling, _scores)
    assert isinstance(selector, NegativeSelector)
    assert selector.needs_reference == (strategy in ("hard", "tempered"))
    for epoch in (0, 1, VAL_EPOCH):
        scores = _scores(batch) if strategy in ("hard", "tempered") else None
        want = negative_indices(batch, 3, strategy, 5, epoch, scores, 0.7)
        assert torch.equal(selector.select(batch, 3, epoch), want)


def test_make_selector_types_and_errors():
    assert make_selector(NegativeSampling("random", seed=1)) == RandomNegatives(1)
    assert make_selector(NegativeSampling("popularity", seed=1)) == PopularityNegatives(1)
    assert isinstance(make_selector(NegativeSampling("hard"), _scores), HardNegatives)
    assert make_selector(NegativeSampling("tempered", temperature=2.0), _scores).temperature == 2.0
    assert isinstance(make_selector(NegativeSampling("tempered"), _scores), TemperedNegatives)
    with pytest.raises(ValueError, match="hard strategy needs reference scores"):
        make_selector(NegativeSampling("hard"))
    with pytest.raises(ValueError, match="negative_sampling must be one of"):
        NegativeSampling("self_play")


def test_the_data_module_carries_the_settings_and_picks_nothing(dm):
    assert dm.sampling == NegativeSampling("random", k=3, seed=5, temperature=1.0)
    assert not is_overridden("on_after_batch_transfer", dm)  # Lightning calls the module's
    batch = dm.collated("fit", [0, 1])
    assert "completion_input_ids" not in batch and batch["candidate_input_ids"].shape[:2] == (2, 20)
    assert torch.equal(
        negatives_for(dm, "validate", [0, 1], VAL_EPOCH),
        RandomNegatives(5).select(dm.collated("validate", [0, 1]), 3, VAL_EPOCH),
    )


def test_the_data_package_never_reads_the_module():
    data = Path(sdpo_lightning.__file__).parent / "data"
    hits = [
        str(p) for p in data.rglob("*.py") if "lightning_module" in p.read_text(encoding="utf-8")
    ]
    assert hits == []


def test_setup_needs_a_connected_tokenizer(synthetic_dir):
    dm = RecDataModule(train_file=str(synthetic_dir / "train.json"))
    with pytest.raises(RuntimeError, match=r"dm.connect\(tokenizer, item_table\)"):
        dm.setup("fit")


class _Recording(NegativeSelector):
    """A stand-in for another strategy (e.g. on-policy negatives): the last candidates."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def select(self, batch, k, epoch):
        self.calls.append((k, epoch))
        n = batch["candidate_mask"].sum(1)
        return torch.stack([torch.arange(int(m) - k, int(m)) for m in n])


def test_the_module_picks_negatives_with_its_selectors(dm, synthetic_dir):
    from sdpo_lightning.training.module import SDPOModule
    from sdpo_lightning.training.module_args import ModelArgs, ObjectiveArgs
    from tests.conftest import TINY

    source = ModelArgs(tokenizer_path=str(synthetic_dir / "tokenizer"), tiny_config=TINY)
    module = SDPOModule(source=source, objective=ObjectiveArgs(name="sft", num_negatives=3))
    trainer = SimpleNamespace(
        datamodule=dm, training=True, validating=False, sanity_checking=False, current_epoch=2
    )
    module._trainer = trainer
    module.setup("fit")
    assert module.sampling == dm.sampling
    batch = dm.collated("fit", [3, 4, 5])
    want = select_completions(batch, negative_indices(batch, 3, "random", 5, 2))
    got = module.on_after_batch_transfer(batch, 0)
    assert torch.equal(got["completion_index"], want["completion_index"])
    assert torch.equal(got["completion_input_ids"], want["completion_input_ids"])

    trainer.training, trainer.validating = False, True  # validation: random, the fixed epoch
    val = dm.collated("validate", [0, 1])
    assert torch.equal(
        module.on_after_batch_transfer(val, 0)["completion_index"][:, 1:],
        negative_indices(val, 3, "random", 5, VAL_EPOCH),
    )
    trainer.validating = False  # test / predict batches keep every candidate only
    assert "completion_index" not in module.on_after_batch_transfer(val, 0)

    module.negative_selector = recording = _Recording()  # another strategy, same interface
    module.setup("fit")
    trainer.training = True
    got = module.on_after_batch_transfer(batch, 0)
    assert recording.calls == [(3, 2)]
    assert got["completion_index"][:, 1:].tolist() == [[17, 18, 19]] * 3
