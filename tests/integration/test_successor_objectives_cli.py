"""``sdpo fit -c <config> --model.objective.name <name>`` trains with every successor objective
(DMPO, IPO, IPO-K, SimPO, softmax SimPO, DynamicPO) on the tiny in-code LLaMA and the synthetic
data: a few steps through the real CLI, a finite loss at every step, and weights that moved. The
reference-free objectives (SimPO, softmax SimPO) run no reference pass at all, live or cached."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from sdpo_lightning.cli import cli_main
from tests.conftest import tiny_config
from tests.integration.test_cli import _metrics


@pytest.fixture()
def reference_calls(monkeypatch, count_builds):
    """Counts every way the module reaches the reference: its per-step reference log-probs
    (``_reference_for``), the adapter-off context of a LoRA reference (``reference_mode``), a
    frozen full copy's scorer (``reference_scorer``), and the reference cache (built, opened, or
    rows scored by ``score_dataset``)."""
    import sdpo_lightning.scoring.reference_cache as rc
    import sdpo_lightning.training.module as module

    calls: dict[str, int] = {
        "_reference_for": 0,
        "reference_mode": 0,
        "reference_scorer": 0,
        "ReferenceCache": 0,
    }

    def counted(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    cls = module.SDPOModule
    monkeypatch.setattr(cls, "_reference_for", counted("_reference_for", cls._reference_for))
    monkeypatch.setattr(cls, "reference_scorer", counted("reference_scorer", cls.reference_scorer))
    monkeypatch.setattr(module, "reference_mode", counted("reference_mode", module.reference_mode))
    monkeypatch.setattr(
        rc.ReferenceCache, "__init__", counted("ReferenceCache", rc.ReferenceCache.__init__)
    )
    return calls


def _fit(tmp_path, synthetic_dir, name: str, k: int, reference: str) -> list[dict]:
    run = f"{name}_{reference}"
    cfg = tiny_config(
        tmp_path, synthetic_dir, run, objective="sdpo", num_negatives=3, reference=reference
    )
    cli_main(
        [
            "fit",
            "-c",
            str(cfg),
            "--model.objective.name",
            name,
            "--model.objective.num_negatives",
            str(k),
            "--trainer.max_steps",
            "3",
        ]
    )
    return _metrics(tmp_path / run)


def _assert_trained(tmp_path, run: str, rows: list[dict]) -> None:
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert val and all(math.isfinite(v) for v in val)
    # LoRA's B matrices start at zero: any non-zero one has moved
    weights = load_file(str(tmp_path / run / "export" / "adapter_model.safetensors"))
    lora_b = [w for key, w in weights.items() if "lora_B" in key]
    assert lora_b and any(torch.count_nonzero(w) > 0 for w in lora_b)
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.parametrize("name, k", [("dmpo", 3), ("ipo", 1), ("ipo_k", 3), ("dynamicpo", 3)])
def test_reference_objectives_train(
    tmp_path, synthetic_dir, reference_calls, count_builds, name, k
):
    """Reference-based successors train from the command line (reference: cached); the
    reference is read (the control of the reference-free test below)."""
    rows = _fit(tmp_path, synthetic_dir, name, k, "cached")
    _assert_trained(tmp_path, f"{name}_cached", rows)
    assert count_builds or reference_calls["reference_mode"] > 0  # rows scored by the reference
    assert reference_calls["_reference_for"] > 0 and reference_calls["ReferenceCache"] > 0
    assert any(r.get("train/rewards/margins") for r in rows)


@pytest.mark.parametrize("reference", ["live", "cached"])
@pytest.mark.parametrize("name, k", [("simpo", 1), ("softmax_simpo", 3)])
def test_reference_free_objectives_train_without_a_reference_pass(
    tmp_path, synthetic_dir, reference_calls, count_builds, name, k, reference
):
    """SimPO and softmax SimPO train, and no reference log-prob is computed or cached, whatever
    ``scoring.reference`` says."""
    rows = _fit(tmp_path, synthetic_dir, name, k, reference)
    _assert_trained(tmp_path, f"{name}_{reference}", rows)
    assert not any(reference_calls.values()) and not count_builds, reference_calls
    assert not (tmp_path / f"{name}_{reference}" / "reference_cache").exists()
