"""The protocol table of the one-pass evaluator and the Evaluator without a LightningModule.

A protocol registered in ``evaluator.PROTOCOLS`` runs over the same shared pass as the built-in
ones (one packed forward for all of them) and leaves their outputs as they were; the Evaluator
takes a plain :class:`EvalModel` (a tiny LLaMA, its tokenizer, a plain ranking callable) and
writes its reports for the single process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sdpo_lightning.data.collate import make_collate
from sdpo_lightning.data.datamodule import RecDataModule
from sdpo_lightning.evaluation import evaluator
from sdpo_lightning.evaluation.evaluator import (
    EvalModel,
    Evaluator,
    PassProtocol,
    SharedPass,
    one_pass_outputs,
    run_protocols,
)
from sdpo_lightning.modeling.models import build_policy
from sdpo_lightning.runtime.processes import SINGLE_PROCESS
from sdpo_lightning.scoring.logps import CompletionLogps, completion_logps
from tests.conftest import TINY


@pytest.fixture(scope="module")
def setup(synthetic_dir, tokenizer, tmp_path_factory) -> tuple[EvalModel, dict[str, Any]]:
    """A tiny LLaMA (no LightningModule) and a left-padded test batch of 5 rows."""
    out = tmp_path_factory.mktemp("protocols")
    rows = json.loads((synthetic_dir / "test.json").read_text())[:5]
    (out / "test.json").write_text(json.dumps(rows))
    model = build_policy(None, tokenizer, tiny_config=TINY, init_seed=3).eval()
    dm = RecDataModule(
        test_file=str(out / "test.json"),
        eval_batch_size=5,
        max_length=256,
        prompt_templates="music",
    )
    dm.tokenizer = tokenizer
    dm.setup("test")
    ds = dm.datasets["test"]
    batch = make_collate(tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    return EvalModel(model, tokenizer, max_new_tokens=6), batch


def _count_packed(monkeypatch) -> list[dict[str, Any]]:
    """Record the keyword arguments of every packed forward the evaluator runs."""
    calls: list[dict[str, Any]] = []
    real = evaluator.packed_forward

    def counting(*args: Any, **kwargs: Any):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluator, "packed_forward", counting)
    return calls


def test_a_registered_protocol_runs_over_the_shared_pass(setup, monkeypatch):
    ctx, batch = setup
    want = run_protocols(ctx, batch, ["ranking", "free_generation"])
    seen: list[SharedPass] = []

    def first_token(shared: SharedPass) -> torch.Tensor:
        """A dummy protocol: the greedy first answer token of each row → (B,)."""
        seen.append(shared)
        return shared.packed.logits[:, 0].argmax(-1)

    entry = PassProtocol(first_token, packed="required")
    monkeypatch.setitem(evaluator.PROTOCOLS, "first_token", entry)
    calls = _count_packed(monkeypatch)
    got = run_protocols(ctx, batch, ["free_generation", "first_token", "ranking"])
    assert len(calls) == 1 and calls[0]["use_cache"]  # one packed pass, with the prompt cache
    assert list(got) == ["ranking", "free_generation", "first_token"]  # the table's order
    (shared,) = seen
    assert shared.packed is not None and shared.p_ids.shape[0] == len(batch["index"])
    assert got["first_token"].shape == (len(batch["index"]),)
    torch.testing.assert_close(got["ranking"].logps, want["ranking"].logps, rtol=0, atol=0)
    assert got["free_generation"] == want["free_generation"]
    assert not ctx.model.training  # restored (it was in eval mode)


def test_an_optional_protocol_alone_gets_no_packed_pass(setup, monkeypatch):
    ctx, batch = setup
    seen: list[SharedPass] = []
    monkeypatch.setitem(
        evaluator.PROTOCOLS,
        "prompt_width",
        PassProtocol(lambda shared: seen.append(shared) or shared.p_ids.shape[1]),
    )
    calls = _count_packed(monkeypatch)
    out = run_protocols(ctx, batch, ["prompt_width"])
    assert calls == [] and seen[0].packed is None
    assert out["prompt_width"] == int(batch["prompt_attention_mask"].sum(-1).max())
    with pytest.raises(KeyError, match="unknown evaluation protocols"):
        run_protocols(ctx, batch, ["beam"])


def test_evaluator_takes_plain_callables_and_writes_its_reports(setup, tmp_path):
    """No LightningModule: an EvalModel with a plain ranking callable, the single process."""
    ctx, batch = setup

    def score(b: dict[str, Any]) -> CompletionLogps:
        ids, mask = b["candidate_input_ids"], b["candidate_attention_mask"]
        return completion_logps(
            ctx.model,
            b["prompt_input_ids"],
            b["prompt_attention_mask"],
            ids,
            mask,
            mode="shared_prefix",
        )

    plain = EvalModel(ctx.model, ctx.tokenizer, max_new_tokens=6, constrained=True, score=score)
    one = Evaluator("test", ["generation", "ranking"])
    ref = Evaluator("test", ["generation", "ranking"], one_pass=False)
    new, old = one.update(plain, batch), ref.update(plain, batch)
    texts, scores = one_pass_outputs(plain, batch, True, True)
    assert [r["generated"] for r in new] == texts == [r["generated"] for r in old]
    assert [r["target_rank"] for r in new] == [r["target_rank"] for r in old]
    for a, b in zip(new, old, strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=2e-4)
    assert scores.logps.shape == batch["candidate_mask"].shape
    meta = {
        "run": "plain",
        "method": "none",
        "dataset": "synthetic",
        "data_file": None,
        "model": "tiny-llama",
    }
    summary = one.write_reports(tmp_path, meta, SINGLE_PROCESS)
    assert summary["run"] == "plain" and summary["n_examples"] == len(batch["index"])
    written = json.loads(Path(tmp_path, "summary.json").read_text())
    assert written["predictions"] == "predictions.jsonl"
    lines = Path(tmp_path, "predictions.jsonl").read_text().splitlines()
    assert [json.loads(x)["index"] for x in lines] == batch["index"].tolist()
    path = ref.write_prediction_file(tmp_path / "predict")
    assert path is not None and path.is_file()


def test_the_reference_path_needs_a_ranking_scorer(setup):
    ctx, batch = setup
    with pytest.raises(ValueError, match="EvalModel.score"):
        Evaluator("test", ["ranking"], one_pass=False).update(ctx, batch)
