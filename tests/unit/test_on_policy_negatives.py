"""On-policy negatives (``data.negative_sampling: on_policy``): the policy's own top-scored
non-target candidates, ties in a seeded order, refreshed every ``refresh_steps`` optimizer steps
(only the rows that are due are scored), what is logged of them, and — with the reference cached —
the same reference log-probs, hence the same loss, as a live reference pass over the chosen
negatives."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sdpo_lightning.data.collate import make_collate, negative_indices
from sdpo_lightning.data.negatives import NegativeSampling, example_generator, sample_negatives
from sdpo_lightning.scoring.reference_cache import eval_mode
from sdpo_lightning.training.negatives import (
    OnPolicyNegatives,
    make_selector,
    negative_ranks,
    rows_of,
)
from sdpo_lightning.training.objective_call import objective_loss
from tests.unit.test_reference_cache import make, small_dir  # noqa: F401  (fixture)


# ---------------------------------------------------------------------------- the draw
def test_on_policy_draw_is_best_first_and_never_the_target():
    scores = torch.tensor([0.0, 5.0, -1.0, 4.0, 3.0, 9.0])
    got = sample_negatives(6, 5, 3, "on_policy", example_generator(0, 0, 0), scores=scores)
    assert got == [1, 3, 4]  # the target (5) scores highest and is skipped


def test_ties_are_broken_by_a_seeded_order():
    flat = torch.zeros(20)

    def draw(seed, epoch, row):
        return sample_negatives(
            20,
            0,
            5,
            "on_policy",  # noqa: E731
            example_generator(seed, epoch, row),
            scores=flat,
        )

    assert draw(3, 1, 7) == draw(3, 1, 7)  # same seed, epoch, row: same negatives
    assert len({tuple(draw(s, 0, 7)) for s in range(6)}) > 1  # the seed decides among equals
    assert all(0 not in draw(s, 0, 7) for s in range(6))
    with pytest.raises(ValueError, match="on_policy strategy needs the policy's scores"):
        sample_negatives(20, 0, 5, "on_policy", example_generator(0, 0, 0))


def test_negative_ranks_count_higher_scores_and_ties_against_the_target():
    scores = torch.tensor([[3.0, 1.0, 2.0, 3.0, 0.0], [0.0, 5.0, 4.0, 0.0, 0.0]])
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = negative_ranks(scores, mask, torch.tensor([0, 1]), torch.tensor([[3, 2], [2, 0]]))
    assert out["negative_rank"].tolist() == [[1, 3], [2, 3]]
    assert out["target_rank"].tolist() == [2, 1]  # row 0: tied with candidate 3, counted against it


# ---------------------------------------------------------------------------- the selector
def _batch(n_rows: int = 4, m: int = 6) -> dict:
    return {
        "index": torch.arange(10, 10 + n_rows),
        "target_index": torch.arange(n_rows) % m,
        "candidate_mask": torch.ones(n_rows, m, dtype=torch.bool),
        "candidate_popularity": torch.zeros(n_rows, m),
        "candidates": [[f"c{j}" for j in range(m)] for _ in range(n_rows)],
    }


class _Policy:
    """A stand-in policy: a fixed score per (example index, candidate) plus a drift per call,
    recording which rows it was asked to score."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, batch):
        self.calls.append(batch["index"].tolist())
        g = torch.Generator().manual_seed(0)
        table = torch.randn(100, 6, generator=g)
        return table[batch["index"]] + len(self.calls)  # (B, M)


def test_the_selector_takes_the_policys_top_k_and_reports_them():
    policy = _Policy()
    selector = make_selector(NegativeSampling("on_policy", k=2, seed=4), policy_scores=policy)
    assert isinstance(selector, OnPolicyNegatives) and not selector.needs_reference
    batch = _batch()
    got = selector.select(batch, 2, epoch=0)
    scores = _Policy()(batch)
    assert torch.equal(got, negative_indices(batch, 2, "on_policy", 4, 0, scores))
    ranks = negative_ranks(scores, batch["candidate_mask"], batch["target_index"], got)
    target_top1 = (ranks["target_rank"] == 1).float().mean()
    stats = selector.stats()
    assert set(stats) == {"mean_rank", "target_top1", "target_rank", "refreshed"}
    assert stats["target_top1"] == pytest.approx(float(target_top1)) and stats["refreshed"] == 1.0
    # the policy's best non-target candidates: ranks 1..3 (the target may sit among them)
    assert 1.5 <= stats["mean_rank"] <= 2.5
    with pytest.raises(ValueError, match="on_policy strategy needs the policy's scores"):
        make_selector(NegativeSampling("on_policy"))
    with pytest.raises(ValueError, match="on_policy_refresh_steps must be a positive integer"):
        NegativeSampling("on_policy", refresh_steps=0)


def test_rows_are_rescored_only_when_their_scores_are_due():
    policy, step = _Policy(), {"now": 0}
    selector = OnPolicyNegatives(policy, lambda: step["now"], seed=0, refresh_steps=3)
    batch = _batch()
    selector.select(batch, 2, 0)
    assert policy.calls == [[10, 11, 12, 13]]
    step["now"] = 2
    selector.select(rows_of(batch, torch.tensor([1, 3])), 2, 0)  # scored at step 0: reused
    assert len(policy.calls) == 1 and selector.stats()["refreshed"] == 0.0
    step["now"] = 3
    wider = _batch(6)  # rows 14, 15 are new; 10..13 are 3 steps old: all due
    selector.select(wider, 2, 0)
    assert policy.calls[-1] == [10, 11, 12, 13, 14, 15]
    step["now"] = 4
    mixed = dict(_batch(2), index=torch.tensor([11, 40]))
    selector.select(mixed, 2, 0)
    assert policy.calls[-1] == [40] and selector.stats()["refreshed"] == 0.5
    every = OnPolicyNegatives(
        policy, lambda: 0, refresh_steps=1
    )  # 1: every batch, even the same step
    n = len(policy.calls)
    every.select(batch, 2, 0)
    every.select(batch, 2, 0)
    assert len(policy.calls) == n + 2


# ---------------------------------------------------------------------------- in the module
def _trainer(dm, root):
    strategy = SimpleNamespace(
        reduce_boolean_decision=lambda d, all=True: d,
        all_gather=lambda t: t[None],
        barrier=lambda *a, **k: None,
    )
    return SimpleNamespace(
        datamodule=dm,
        training=True,
        validating=False,
        sanity_checking=False,
        testing=False,
        predicting=False,
        current_epoch=0,
        global_step=0,
        default_root_dir=str(root),
        world_size=1,
        global_rank=0,
        is_global_zero=True,
        strategy=strategy,
    )


def test_module_negatives_are_the_policys_and_the_cached_reference_equals_a_live_one(
    synthetic_dir, small_dir, tmp_path
):
    module, dm = make(
        synthetic_dir,
        small_dir,
        model={"objective": "sdpo", "num_negatives": 3},
        data={"negative_sampling": "on_policy", "num_negatives": 3},
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the policy away from the reference (LoRA B starts at zero)
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    module._trainer = _trainer(dm, tmp_path)
    module.setup("fit")
    assert isinstance(module._selectors["train"], OnPolicyNegatives)
    batch = make_collate(module.tokenizer.pad_token_id)([dm.datasets["fit"][i] for i in (0, 4, 9)])
    module.policy.train()
    got = module.on_after_batch_transfer(batch, 0)
    assert module.policy.training  # eval mode only while scoring

    with torch.no_grad(), eval_mode(module.policy):  # the policy's own ranking, from scratch
        policy_scores = module.score(
            batch,
            batch["candidate_input_ids"],
            batch["candidate_attention_mask"],
            mode="shared_prefix",
        ).logps
    want = negative_indices(batch, 3, "on_policy", 0, 0, policy_scores)
    assert torch.equal(got["completion_index"][:, 1:].cpu(), want)
    assert set(got["negative_stats"]) == {"mean_rank", "target_top1", "target_rank", "refreshed"}

    cached = module._reference_for(got)  # (B, 1 + K) gathered from the cache's (B, M) table
    with eval_mode(module.policy):
        live = module.reference_logps(
            got, got["completion_input_ids"], got["completion_attention_mask"]
        )
    torch.testing.assert_close(cached, live, rtol=0, atol=1e-4)
    with torch.no_grad(), eval_mode(module.policy):
        scored = module.score(got, got["completion_input_ids"], got["completion_attention_mask"])
    obj = module.hparams.objective
    loss_cached = objective_loss(obj, scored.logps, scored.n_tokens, cached).losses
    loss_live = objective_loss(obj, scored.logps, scored.n_tokens, live).losses
    torch.testing.assert_close(loss_cached, loss_live, rtol=0, atol=1e-4)
    assert not torch.allclose(scored.logps, live)  # the policy really differs from the reference


def test_zero3_refuses_policy_negatives_whose_forwards_differ_between_processes(
    synthetic_dir, small_dir, tmp_path, monkeypatch
):
    from sdpo_lightning.errors import ConfigError
    from sdpo_lightning.training import strategies

    monkeypatch.setattr(
        strategies, "zero3_config", lambda trainer: {"zero_optimization": {"stage": 3}}
    )
    module, dm = make(
        synthetic_dir,
        small_dir,
        model={"objective": "sdpo", "num_negatives": 3},
        data={"negative_sampling": "on_policy", "num_negatives": 3, "on_policy_refresh_steps": 2},
    )
    module._trainer = _trainer(dm, tmp_path)
    with pytest.raises(
        ConfigError, match="under DeepSpeed ZeRO-3 the processes would run different forwards"
    ):
        module.setup("fit")
    dm.hparams.on_policy_refresh_steps = 1  # one scoring pass per batch on every process: allowed
    module.setup("fit")
    assert isinstance(module._selectors["train"], OnPolicyNegatives)
