"""The lazy reference cache: rows scored on first use equal the full build, the file fills
incrementally and is reused, a row whose token ids changed is re-scored, and simulated
processes merge their rows before the write."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sdpo_lightning.data.collate import make_collate
from sdpo_lightning.scoring.reference_cache import ReferenceCache
from tests.unit.test_reference_cache import N_TRAIN, make, small_dir  # noqa: F401  (fixture)


def _batch(module, dm, rows, split="fit"):
    return make_collate(module.tokenizer.pad_token_id)([dm.datasets[split][i] for i in rows])


def test_rows_are_scored_on_first_use_equal_the_full_build_and_are_reused(
    synthetic_dir, small_dir, tmp_path
):
    module, dm = make(synthetic_dir, small_dir)
    assert (
        module.reference_cache_build_mode() == "lazy"
    )  # LoRA: the reference (adapter off) is at hand every step
    full = ReferenceCache.build(module.reference_source(), dm, tmp_path / "full").tables["fit"]
    cache = ReferenceCache.open(module.reference_source(), dm, tmp_path / "lazy")
    assert cache.stats["fit"]["filled"] == 0 and not cache.filled["fit"].any()
    got = cache.scores_for(
        module.reference_source(), "fit", _batch(module, dm, [7, 2, N_TRAIN - 1])
    )
    torch.testing.assert_close(got, full[[7, 2, N_TRAIN - 1]], rtol=0, atol=1e-5)
    assert torch.isneginf(got[2, 6:]).all()  # the 6-candidate row keeps -inf padding
    assert cache.filled["fit"].nonzero().flatten().tolist() == [2, 7, N_TRAIN - 1]
    assert cache.stats["fit"]["scored"] == 3
    with pytest.raises(KeyError, match="not scored yet"):
        cache.lookup("fit", [0])
    cache.scores_for(
        module.reference_source(), "fit", _batch(module, dm, [2, 7])
    )  # all known: nothing scored
    assert cache.stats["fit"]["scored"] == 3
    cache.flush(module.reference_source())
    files = sorted(p.name.split("-")[0] for p in (tmp_path / "lazy").glob("*.pt"))
    assert files == ["fit"]  # validation had no new rows: no file written

    module2, dm2 = make(synthetic_dir, small_dir)  # a later run
    again = ReferenceCache.open(module2.reference_source(), dm2, tmp_path / "lazy")
    assert again.stats["fit"]["hit"] and again.stats["fit"]["filled"] == 3
    torch.testing.assert_close(again.lookup("fit", [2, 7]), full[[2, 7]], rtol=0, atol=1e-5)
    again.scores_for(module2.reference_source(), "fit", _batch(module2, dm2, [7, 0]))
    assert again.stats["fit"]["scored"] == 1  # only row 0 was new


def test_a_row_whose_token_ids_changed_is_rescored(synthetic_dir, small_dir, tmp_path):
    module, dm = make(synthetic_dir, small_dir)
    cache = ReferenceCache.open(module.reference_source(), dm, tmp_path)
    batch = _batch(module, dm, [1])
    cache.scores_for(module.reference_source(), "fit", batch)
    stale = dict(batch, token_digest=batch["token_digest"] + 1)  # as if the encoding had changed
    cache.scores_for(module.reference_source(), "fit", stale)
    assert cache.stats["fit"]["scored"] == 2
    assert int(cache.digests["fit"][1]) == int(stale["token_digest"][0])


def test_full_fine_tuning_without_a_frozen_copy_builds_in_full(synthetic_dir, small_dir):
    module, _ = make(synthetic_dir, small_dir, model={"lora": None})
    assert module.reference_cache_build_mode() == "full"
    module.hparams.scoring.reference_cache_build = "lazy"
    with pytest.raises(ValueError, match="lazy needs the reference at every step"):
        module.reference_cache_build_mode()


def test_two_simulated_processes_stay_in_step_and_merge_before_the_write(
    synthetic_dir, small_dir, tmp_path
):
    """Rank 0 has rows to score, rank 1 has none: both run one forward (rank 1 a dummy); the
    flush merges both ranks' rows into one file."""
    module, dm = make(synthetic_dir, small_dir)
    caches = {r: ReferenceCache.open(module.reference_source(), dm, tmp_path) for r in (0, 1)}
    forwards = {0: 0, 1: 0}
    caches[1].scores_for(
        module.reference_source(), "fit", _batch(module, dm, [5])
    )  # rank 1 knows row 5 already
    caches[1].dirty.clear()
    decisions = {0: True, 1: False}  # rank 0 has a miss

    def trainer(rank):
        strategy = SimpleNamespace(
            reduce_boolean_decision=lambda d, all=True: any(decisions.values())
        )
        return SimpleNamespace(
            world_size=2, global_rank=rank, is_global_zero=rank == 0, strategy=strategy
        )

    real = module.reference_scorer
    for rank, rows in ((0, [3, 4]), (1, [5])):
        module._trainer = trainer(rank)

        def counting(real=real, rank=rank):
            forwards[rank] += 1
            return real()

        module.reference_scorer = counting
        caches[rank].scores_for(module.reference_source(), "fit", _batch(module, dm, rows))
    assert forwards == {0: 1, 1: 1}  # rank 1 ran a dummy row to stay in step
    assert caches[1].stats["fit"]["scored"] == 1  # only its earlier row 5; the dummy is not stored
    # flush on rank 0 with both ranks' tables gathered
    module._trainer = trainer(0)
    calls = iter(
        [
            (caches[0].tables["fit"], caches[1].tables["fit"]),
            (caches[0].filled["fit"].long(), caches[1].filled["fit"].long()),
            (caches[0].digests["fit"], caches[1].digests["fit"]),
        ]
    )
    module._trainer.strategy.all_gather = lambda t: torch.stack(next(calls))
    module._trainer.strategy.reduce_boolean_decision = lambda d, all=True: (
        d
    )  # only "fit" has new rows
    caches[0].flush(module.reference_source())
    del module.reference_scorer
    module._trainer = None
    assert caches[0].filled["fit"].nonzero().flatten().tolist() == [3, 4, 5]
    reopened = ReferenceCache.open(module.reference_source(), dm, tmp_path)
    torch.testing.assert_close(
        reopened.lookup("fit", [5]), caches[1].lookup("fit", [5]), rtol=0, atol=0
    )
