"""On-policy catalogue negatives (``data.negative_sampling: on_policy_beam``, all-item training):
the negatives are the first K non-target items of the policy's own top K + 1 over the whole
catalogue (history excluded) — checked against scoring every catalogue item —, the row's
candidates become (target, negatives) with a new token digest, the cached reference of them
equals a live one, and rows are searched again only when due."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdpo_lightning.data.collate import make_collate
from sdpo_lightning.data.prepare.cli import main as prepare_main
from sdpo_lightning.errors import ConfigError
from sdpo_lightning.scoring.reference_cache import eval_mode
from sdpo_lightning.training.beam_negatives import CatalogueBeamNegatives
from tests.unit.test_on_policy_negatives import _trainer
from tests.unit.test_reference_cache import make


@pytest.fixture(scope="module")
def catalogue(synthetic_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("catalogue") / "catalogue.json"
    files = [str(synthetic_dir / f"{s}.json") for s in ("train", "valid", "test")]
    assert prepare_main(["catalogue", *files, "--out", str(out)]) == 0
    return out


def _setup(synthetic_dir, catalogue, tmp_path, **data):
    module, dm = make(
        synthetic_dir,
        synthetic_dir,
        model={"objective": "sdpo", "num_negatives": 3},
        data={
            "negative_sampling": "on_policy_beam",
            "num_negatives": 3,
            "train_protocol": "all_item",
            "catalogue_file": str(catalogue),
            "catalogue_candidates": 5,
            "prompt_templates": "music",
            **data,
        },
    )
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a policy that differs from the reference
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    module._trainer = _trainer(dm, tmp_path)
    module.setup("fit")
    return module, dm


def test_negatives_are_the_policys_top_catalogue_items(synthetic_dir, catalogue, tmp_path):
    module, dm = _setup(synthetic_dir, catalogue, tmp_path, on_policy_beam_width=1000)
    selector = module._selectors["train"]
    assert isinstance(selector, CatalogueBeamNegatives)
    batch = make_collate(module.tokenizer.pad_token_id)([dm.datasets["fit"][i] for i in (0, 5)])
    got = module.on_after_batch_transfer(batch, 0)
    cat = dm.catalogue
    n = len(cat)
    for b in range(2):  # brute force: every catalogue item scored after the row's prompt
        seqs = [selector.trie.sequence(i) for i in range(n)]
        c = max(map(len, seqs))
        ids = torch.full((1, n, c), module.tokenizer.pad_token_id)
        mask = torch.zeros((1, n, c), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[0, i, : len(s)], mask[0, i, : len(s)] = torch.tensor(s), 1
        row = {
            "prompt_input_ids": batch["prompt_input_ids"][b : b + 1],
            "prompt_attention_mask": batch["prompt_attention_mask"][b : b + 1],
        }
        with torch.no_grad(), eval_mode(module.policy):
            scores = module.score(row, ids, mask, mode="shared_prefix").logps[0]  # (n,)
        for t in batch["history"][b]:
            scores[cat.index[t]] = float("-inf")
        top = [int(i) for i in torch.argsort(scores, descending=True, stable=True)[:4]]
        target = cat.index[batch["target"][b]]
        want = [cat.titles[i] for i in top if i != target][:3]
        assert got["candidates"][b] == [batch["target"][b], *want]
    assert got["completion_index"][:, 1:].tolist() == [[1, 2, 3]] * 2
    assert got["target_index"].tolist() == [0, 0]
    assert not torch.equal(got["token_digest"], batch["token_digest"])
    assert set(got["negative_stats"]) == {
        "target_top1",
        "target_in_beams",
        "mean_rank",
        "refreshed",
    }

    cached = module._reference_for(got)  # the cache re-scores the rows (their digest changed)
    with eval_mode(module.policy):
        live = module.reference_logps(
            got, got["completion_input_ids"], got["completion_attention_mask"]
        )
    torch.testing.assert_close(cached, live, rtol=0, atol=1e-4)


def test_rows_are_searched_again_only_when_due(synthetic_dir, catalogue, tmp_path):
    module, dm = _setup(synthetic_dir, catalogue, tmp_path, on_policy_refresh_steps=2)
    selector = module._selectors["train"]
    calls = []
    real = selector.beams
    selector.beams = lambda batch, k: calls.append(batch["index"].tolist()) or real(batch, k)
    collate = make_collate(module.tokenizer.pad_token_id)
    batch = collate([dm.datasets["fit"][i] for i in (0, 1)])
    module.on_after_batch_transfer(batch, 0)
    module._trainer.global_step = 1
    module.on_after_batch_transfer(collate([dm.datasets["fit"][i] for i in (1, 2)]), 0)
    assert calls == [[0, 1], [2]]
    module._trainer.global_step = 2
    module.on_after_batch_transfer(batch, 0)
    assert calls[-1] == [0, 1]


def test_on_policy_beam_needs_all_item_training(synthetic_dir):
    from sdpo_lightning.data.datamodule import RecDataModule

    with pytest.raises(ConfigError, match="on_policy_beam searches the catalogue"):
        RecDataModule(
            train_file=str(synthetic_dir / "train.json"), negative_sampling="on_policy_beam"
        )
