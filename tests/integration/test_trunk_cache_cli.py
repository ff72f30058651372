"""``model.scoring.trunk_cache: true`` end to end: with LoRA on the top layer of the 2-layer tiny LLaMA,
``sdpo fit`` gives the same per-step losses (SFT and S-DPO with a live reference) and
``sdpo test`` the same ranking scores as without the cache."""

from __future__ import annotations

import json

import pytest
import torch

from sdpo_lightning.cli import cli_main
from tests.integration.test_cached_reference import _assert_same_losses, _fit, small_dir  # noqa: F401

TOP_LORA = {
    "r": 4,
    "alpha": 8,
    "dropout": 0.0,
    "target_modules": ["q_proj", "v_proj", "up_proj"],
    "layers_to_transform": [1],
}


def test_sft_and_sdpo_losses_equal_with_and_without_trunk_cache(tmp_path, small_dir):  # noqa: F811
    for objective in ("sft", "sdpo"):
        plain = _fit(
            tmp_path,
            small_dir,
            f"{objective}_plain",
            objective=objective,
            lora=TOP_LORA,
            val_ranking=True,
        )
        cached = _fit(
            tmp_path,
            small_dir,
            f"{objective}_trunk",
            objective=objective,
            lora=TOP_LORA,
            val_ranking=True,
            trunk_cache=True,
        )
        if objective == "sdpo":  # losses, rewards and log-probs of the preference step
            _assert_same_losses(plain, cached)
        a = [float(r["train/loss"]) for r in plain if r.get("train/loss")]
        b = [float(r["train/loss"]) for r in cached if r.get("train/loss")]
        assert a and len(a) == len(b)
        torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=0, atol=1e-5)
        va = [float(r["val/rank/mrr"]) for r in plain if r.get("val/rank/mrr")]
        vb = [float(r["val/rank/mrr"]) for r in cached if r.get("val/rank/mrr")]
        assert va and va == vb


def test_ranking_scores_equal_in_test(tmp_path, small_dir):  # noqa: F811
    root = tmp_path / "fit"
    _fit(tmp_path, small_dir, "fit", objective="sft", lora=TOP_LORA)
    out = {}
    for flag in (False, True):
        cli_main(
            [
                "test",
                "-c",
                str(tmp_path / "fit.yaml"),
                "--model.source.init_adapter",
                str(root / "export"),
                "--model.scoring.trunk_cache",
                str(flag).lower(),
                "--model.eval.eval_protocols",
                "[ranking]",
                "--model.output.output_dir",
                str(tmp_path / f"test_{flag}"),
            ]
        )
        rows = [
            json.loads(line) for line in (tmp_path / f"test_{flag}" / "predictions.jsonl").open()
        ]
        out[flag] = torch.tensor([r["scores"] for r in rows])
    torch.testing.assert_close(
        out[True], out[False], rtol=0, atol=2e-4
    )  # scores are rounded to 1e-4


def test_eval_trunk_dir_gives_the_same_test_and_is_read_by_a_later_test(tmp_path, small_dir):  # noqa: F811
    """``sdpo test --model.scoring.eval_trunk_dir``: the first test writes the file, the second reads it;
    both give the plain test's answers and ranks (constrained generation + ranking)."""
    root = tmp_path / "fit"
    _fit(tmp_path, small_dir, "fit", objective="sft", lora=TOP_LORA)
    runs = {}
    for name, extra in (
        ("plain", []),
        ("first", ["--model.scoring.eval_trunk_dir", str(tmp_path / "trunk")]),
        ("later", ["--model.scoring.eval_trunk_dir", str(tmp_path / "trunk")]),
    ):
        cli_main(
            [
                "test",
                "-c",
                str(tmp_path / "fit.yaml"),
                "--model.source.init_adapter",
                str(root / "export"),
                "--model.eval.constrained",
                "true",
                "--model.output.output_dir",
                str(tmp_path / name),
                *extra,
            ]
        )
        runs[name] = [json.loads(line) for line in (tmp_path / name / "predictions.jsonl").open()]
        if name == "first":
            (path,) = (tmp_path / "trunk").glob("trunk-*.pt")
            stamp = path.stat().st_mtime_ns
    assert path.stat().st_mtime_ns == stamp  # the later test computed no row, wrote nothing
    for name in ("first", "later"):
        for a, b in zip(runs[name], runs["plain"], strict=False):
            assert (a["generated"], a["target_rank"]) == (b["generated"], b["target_rank"])
            assert a["scores"] == pytest.approx(b["scores"], abs=2e-4)  # rounded to 1e-4
