"""The reference cache with a plain scorer: no LightningModule, only a ``score(batch)`` callable,
an identity and the processes (:class:`~sdpo_lightning.scoring.reference_cache.ReferenceSource`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sdpo_lightning.data.collate import make_collate
from sdpo_lightning.data.datamodule import RecDataModule
from sdpo_lightning.runtime.processes import SINGLE_PROCESS, TrainerProcesses, processes_of
from sdpo_lightning.scoring.reference_cache import ReferenceCache, ReferenceSource, score_dataset

N_TRAIN, N_VAL = 7, 3


@pytest.fixture()
def dm(synthetic_dir, tokenizer, tmp_path) -> RecDataModule:
    """The first rows of the synthetic train and validation splits."""
    for name, n in (("train.json", N_TRAIN), ("valid.json", N_VAL)):
        rows = json.loads((synthetic_dir / name).read_text())[:n]
        (tmp_path / name).write_text(json.dumps(rows))
    dm = RecDataModule(
        train_file=str(tmp_path / "train.json"),
        val_file=str(tmp_path / "valid.json"),
        batch_size=2,
        eval_batch_size=3,
        max_length=256,
        prompt_templates="music",
    )
    dm.tokenizer = tokenizer
    dm.setup("fit")
    return dm


def _expected(index: torch.Tensor, m: int) -> torch.Tensor:
    """What a :class:`Scorer` gives the rows ``index`` → (B, m)."""
    return -(index[:, None].float() * 100 + torch.arange(m).float())


class Scorer:
    """A plain scorer: a fixed table of the row index and the candidate position; counts rows."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        self.rows += batch["index"].tolist()
        return _expected(batch["index"], batch["candidate_mask"].shape[1])  # (B, M)


def test_full_build_with_a_plain_callable_and_a_changed_identity(dm, tmp_path):
    score = Scorer()
    source = ReferenceSource.from_score(score, identity={"reference": "fixed table"})
    cache = ReferenceCache.build(source, dm, tmp_path / "cache")
    assert sorted(score.rows) == sorted([*range(N_TRAIN), *range(N_VAL)])
    for split, n in (("fit", N_TRAIN), ("validate", N_VAL)):
        table = cache.tables[split]
        m = table.shape[1]
        mask = torch.stack([torch.arange(m) < dm.datasets[split].n_candidates(i) for i in range(n)])
        want = _expected(torch.arange(n), m).masked_fill(~mask, float("-inf"))
        assert torch.equal(table, want)
    again = ReferenceCache.build(source, dm, tmp_path / "cache")  # the same key: read back
    assert {s["hit"] for s in again.stats.values()} == {True}
    assert len(score.rows) == N_TRAIN + N_VAL
    other = ReferenceSource.from_score(score, identity={"reference": "another"})
    ReferenceCache.build(other, dm, tmp_path / "cache", splits=("fit",))
    assert len(score.rows) == 2 * N_TRAIN + N_VAL  # another identity, another key: scored again
    assert len(list((tmp_path / "cache").glob("fit-*.pt"))) == 2
    assert torch.equal(
        score_dataset(source, dm.datasets["fit"], 4, dm.tokenizer.pad_token_id), cache.tables["fit"]
    )


def test_lazy_fill_flush_and_reopen_with_a_plain_callable(dm, tmp_path):
    score = Scorer()
    source = ReferenceSource.from_score(score, identity={"reference": "fixed table"})
    cache = ReferenceCache.open(source, dm, tmp_path)
    batch = make_collate(dm.tokenizer.pad_token_id)([dm.datasets["fit"][i] for i in (4, 1)])
    got = cache.scores_for(source, "fit", batch)
    assert score.rows == [4, 1]
    assert torch.equal(got[:, :3], _expected(torch.tensor([4, 1]), 3))
    cache.scores_for(source, "fit", batch)  # known rows: not scored again
    assert score.rows == [4, 1]
    cache.flush(source)
    (path,) = Path(tmp_path).glob("fit-*.pt")
    reopened = ReferenceCache.open(source, dm, tmp_path)
    assert reopened.filled["fit"].nonzero().flatten().tolist() == [1, 4]
    assert torch.equal(reopened.lookup("fit", [4, 1]), got)


def test_processes_of_a_trainer_read_it_on_each_use():
    class Strategy:
        def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
            return not decision

        def all_gather(self, t: torch.Tensor) -> torch.Tensor:
            return torch.stack([t, t])

    class Trainer:
        world_size, global_rank, is_global_zero, strategy = 2, 1, False, Strategy()

    trainer = Trainer()
    procs = processes_of(trainer)
    assert isinstance(procs, TrainerProcesses) and processes_of(None) is SINGLE_PROCESS
    assert (procs.world_size, procs.global_rank, procs.is_global_zero) == (2, 1, False)
    trainer.global_rank = 0
    assert procs.global_rank == 0
    assert procs.reduce_boolean_decision(True, all=False) is False
    assert procs.all_gather(torch.ones(3)).shape == (2, 3)
    assert SINGLE_PROCESS.all_gather(torch.ones(3)).shape == (1, 3)
    assert SINGLE_PROCESS.reduce_boolean_decision(True, all=False) is True
