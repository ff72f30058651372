"""``sdpo fit --data.negative_sampling on_policy`` trains through the real CLI on the tiny
in-code LLaMA: a few S-DPO steps with the policy's own negatives (refreshed every 2 steps, the
reference cached), finite losses, and what the negatives were logged as ``train/negatives/...``."""

from __future__ import annotations

import math

import pytest

from sdpo_lightning.cli import cli_main
from tests.conftest import tiny_config
from tests.integration.test_cli import _metrics


def test_on_policy_negatives_train_from_the_command_line(tmp_path, synthetic_dir):
    cfg = tiny_config(
        tmp_path, synthetic_dir, "on_policy", objective="sdpo", num_negatives=3, reference="cached"
    )
    cli_main(
        [
            "fit",
            "-c",
            str(cfg),
            "--data.negative_sampling",
            "on_policy",
            "--data.on_policy_refresh_steps",
            "2",
            "--trainer.max_steps",
            "3",
        ]
    )
    rows = _metrics(tmp_path / "on_policy")
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    for name in ("mean_rank", "target_top1", "target_rank", "refreshed"):
        values = [
            float(r[f"train/negatives/{name}"]) for r in rows if r.get(f"train/negatives/{name}")
        ]
        assert len(values) == 3 and all(math.isfinite(v) for v in values), (name, values)
    ranks = [
        float(r["train/negatives/mean_rank"]) for r in rows if r.get("train/negatives/mean_rank")
    ]
    assert all(1.0 <= v <= 3.0 for v in ranks)  # K = 3 best non-target: ranks 1..4, mean at most 3
    assert (tmp_path / "on_policy" / "export" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("sampling", ["on_policy", "on_policy_beam"])
def test_all_item_training_with_on_policy_negatives(tmp_path, synthetic_dir, sampling):
    """``data.train_protocol all_item``: history-only prompts, completions drawn from the
    catalogue (here 8 per row); negatives: the policy's top 3 of them (``on_policy``) or its top
    catalogue items by constrained beam search (``on_policy_beam``)."""
    from sdpo_lightning.data.prepare.cli import main as prepare_main

    catalogue = tmp_path / "catalogue.json"
    files = [str(synthetic_dir / f"{s}.json") for s in ("train", "valid", "test")]
    assert prepare_main(["catalogue", *files, "--out", str(catalogue)]) == 0
    cfg = tiny_config(
        tmp_path, synthetic_dir, "all_item", objective="sdpo", num_negatives=3, reference="cached"
    )
    cli_main(
        [
            "fit",
            "-c",
            str(cfg),
            "--data.train_protocol",
            "all_item",
            "--data.catalogue_file",
            str(catalogue),
            "--data.catalogue_candidates",
            "8",
            "--data.negative_sampling",
            sampling,
            "--trainer.max_steps",
            "3",
        ]
    )
    rows = _metrics(tmp_path / "all_item")
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    assert [r for r in rows if r.get("train/negatives/target_top1")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert val and all(math.isfinite(v) for v in val)
