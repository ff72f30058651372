"""``model.objective.sft_weight`` (λ): the preference loss plus λ times the chosen completion's token-mean
NLL, logged as ``train/loss/preference`` and ``train/loss/sft``; λ = 0 is the plain objective."""

from __future__ import annotations

import pytest
import torch

from sdpo_lightning.cli import cli_main
from sdpo_lightning.training.module import SDPOModule
from sdpo_lightning.training.module_args import ModelArgs, ObjectiveArgs
from tests.conftest import tiny_config
from tests.integration.test_cli import _metrics


def _first(rows: list[dict], key: str) -> float:
    return next(float(r[key]) for r in rows if r.get(key))


def test_sft_weight_adds_the_chosen_nll_to_the_preference_loss(tmp_path, synthetic_dir):
    """At the first step (same weights, same batch and negatives) the λ = 0.5 run's loss is
    its logged preference loss + 0.5 · its logged NLL, and the preference part equals the
    plain run's loss."""
    runs = {}
    for name, lam in (("plain", 0.0), ("nll", 0.5)):
        cli_main(
            [
                "fit",
                "-c",
                str(tiny_config(tmp_path, synthetic_dir, name, objective="sdpo", sft_weight=lam)),
                "--trainer.max_steps",
                "1",
            ]
        )
        runs[name] = _metrics(tmp_path / name)
    plain, nll = runs["plain"], runs["nll"]
    pref, sft = _first(nll, "train/loss/preference"), _first(nll, "train/loss/sft")
    assert sft > 0
    torch.testing.assert_close(_first(nll, "train/loss"), pref + 0.5 * sft, rtol=0, atol=1e-5)
    torch.testing.assert_close(pref, _first(plain, "train/loss"), rtol=0, atol=1e-5)
    assert "train/loss/sft" not in plain[0]  # λ = 0: the plain objective, nothing extra logged


@pytest.mark.parametrize("bad", [-0.1, float("nan")])
def test_sft_weight_must_be_non_negative(bad):
    with pytest.raises(ValueError, match="sft_weight must be >= 0"):
        SDPOModule(
            source=ModelArgs(tiny_config={}, tokenizer_path="unused"),
            objective=ObjectiveArgs(sft_weight=bad),
        )
