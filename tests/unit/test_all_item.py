"""The all-item protocol's parts: history-only prompts, one batch through AllItemProtocol (top N
against brute-force scoring, the history rule, free generation), the metrics from records (by
hand), the summary and sdpo-report, the logged metrics."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from sdpo_lightning.data.catalogue import Catalogue
from sdpo_lightning.data.prompts import (
    HISTORY_PRESETS,
    PRESETS,
    PromptBuilder,
    history_preset_of,
    resolve_templates,
)
from sdpo_lightning.data.records import DataFormatError
from sdpo_lightning.evaluation.all_item import AllItemProtocol
from sdpo_lightning.evaluation.all_item_metrics import all_item_values, per_example_value
from sdpo_lightning.evaluation.beam_search import completion_sequences
from sdpo_lightning.evaluation.bootstrap import bootstrap_statistic_ci
from sdpo_lightning.evaluation.metrics import AllItemMetrics
from sdpo_lightning.evaluation.report import (
    all_item_values_by_index,
    build_summary,
    comparison_table,
    write_predictions,
    write_summary,
)
from sdpo_lightning.scoring.logps import completion_logps

TITLES = [
    "Heat",
    "Heat Wave",
    "Quiet Raven",
    "Iron Drum",
    "Paper Cloud",
    "Glacier",
    "Tide Secret",
    "Avenue",
    "Zenith",
    "Reef Final Distant",
]


# ---------------------------------------------------------------------------- prompts
def test_history_only_presets():
    for domain in PRESETS:
        for t in resolve_templates(domain, history_only=True):
            assert "{history}" in t and "{candidates}" not in t and t.endswith("Answer:")
        assert history_preset_of(domain) == domain and history_preset_of(PRESETS[domain]) == domain
    assert resolve_templates("movies") == PRESETS["movies"]  # the candidate-list ones unchanged
    assert history_preset_of(["{history} {candidates}"]) is None
    with pytest.raises(ValueError, match="has a \\{candidates\\} placeholder"):
        resolve_templates("Pick from {candidates} after {history}", history_only=True)
    with pytest.raises(ValueError, match="unknown history-only prompt preset 'games'"):
        resolve_templates("games", history_only=True)
    assert resolve_templates("After {history}:", history_only=True) == ["After {history}:"]


def test_encode_history_drops_the_oldest_items(tokenizer):
    builder = PromptBuilder("music", seed=1, history_only=True)
    text, ids, used = builder.encode_history(["Heat", "Iron Drum", "Zenith"], 3, tokenizer, 512, 5)
    assert (
        used == 3
        and "Heat, Iron Drum, Zenith" in text
        and text
        in HISTORY_PRESETS["music"][0].format(history="Heat, Iron Drum, Zenith")
        + HISTORY_PRESETS["music"][1].format(history="Heat, Iron Drum, Zenith")
    )
    full = len(ids)
    _, short, used = builder.encode_history(
        ["Heat", "Iron Drum", "Zenith"], 3, tokenizer, full + 5 - 2, 5
    )
    assert used < 3 and len(short) + 5 <= full + 3
    with pytest.raises(DataFormatError, match="record 4: empty history"):
        builder.encode_history([], 4, tokenizer, 512, 5)


# ---------------------------------------------------------------------------- one batch
@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


def _protocol(tokenizer, **kw):
    cat = Catalogue(TITLES, popularity=[5, 0, 1, 2, 3, 0, 0, 4, 1, 2], source="cat.json")
    return AllItemProtocol(
        cat, tokenizer, PromptBuilder("movies", history_only=True), 256, source="test.json", **kw
    )


def test_one_batch_matches_brute_force_with_history_excluded(model, tokenizer):
    proto = _protocol(tokenizer, top_n=4, beam_width=len(TITLES), max_new_tokens=6)
    batch = {
        "index": torch.tensor([0, 1]),
        "history": [["Heat", "Zenith"], ["Glacier"]],
        "target": ["Heat Wave", "Zenith"],
    }
    parts = proto.run(model, batch)
    p_ids, p_mask, texts = proto.encode(batch["history"], [0, 1])
    seqs = completion_sequences(TITLES, tokenizer, " ")
    C = max(map(len, seqs))
    ids = torch.full((2, len(seqs), C), tokenizer.pad_token_id)
    mask = torch.zeros((2, len(seqs), C), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[:, i, : len(s)], mask[:, i, : len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        logps = completion_logps(model, p_ids, p_mask, ids, mask, mode="shared_prefix").logps
    for b, hist in enumerate(batch["history"]):
        allowed = [i for i in range(len(TITLES)) if TITLES[i] not in hist]
        want = sorted(allowed, key=lambda i: (-float(logps[b, i]), i))[:4]
        part = parts[b]
        assert part["items"] == [TITLES[i] for i in want] and part["prompt"] == texts[b]
        assert part["scores"] == pytest.approx([float(logps[b, i]) for i in want], abs=1e-3)
        target = batch["target"][b]
        assert part["target_rank"] == (
            part["items"].index(target) + 1 if target in part["items"] else None
        )
        assert part["popularity"] == [proto.catalogue.popularity[i] for i in want]
        assert part["target_popularity"] == proto.catalogue.popularity[TITLES.index(target)]
        assert isinstance(part["generated"], str) and part["valid"] == (part["parsed"] is not None)
        assert part["correct"] == (part["parsed"] == target)
    assert proto.meta()["n_items"] == 10 and proto.meta()["total_popularity"] == 18


def test_a_target_outside_the_catalogue_names_file_and_record(model, tokenizer):
    proto = _protocol(tokenizer, top_n=2)
    batch = {"index": torch.tensor([7]), "history": [["Heat"]], "target": ["Nowhere"]}
    with pytest.raises(
        DataFormatError,
        match="test.json, record 7: target 'Nowhere' is not in the catalogue cat.json",
    ):
        proto.run(model, batch)
    with pytest.raises(ValueError, match="larger than the catalogue"):
        _protocol(tokenizer, top_n=11)


def test_predict_rows_without_a_target(model, tokenizer):
    proto = _protocol(tokenizer, top_n=3, free_generation=False)
    (part,) = proto.run(
        model, {"index": torch.tensor([0]), "history": [["Heat"]], "target": [None]}
    )
    assert len(part["items"]) == 3 and "target_rank" not in part and "generated" not in part


# ---------------------------------------------------------------------------- metrics
def _records():
    """Four rows over a 10-item catalogue (total popularity 18), top 3."""
    rows = [
        (["A", "B", "C"], 1, [5, 0, 1], 5, True, True),
        (["B", "D", "E"], 3, [0, 2, 3], 3, True, False),
        (["A", "C", "F"], None, [5, 1, 0], 4, False, False),
        (["A", "B", "D"], 2, [5, 0, 2], 0, False, False),
    ]
    return [
        {
            "index": i,
            "all_item": {
                "items": it,
                "scores": [-1.0, -2.0, -3.0],
                "target_rank": r,
                "popularity": pop,
                "target_popularity": tp,
                "valid": v,
                "correct": c,
            },
        }
        for i, (it, r, pop, tp, v, c) in enumerate(rows)
    ]


def test_all_item_metrics_by_hand():
    values = all_item_values(_records(), {"n_items": 10, "total_popularity": 18, "top_n": 3})
    assert list(values) == [
        "hr@1",
        "mrr",
        "valid_ratio",
        "generation_hr@1",
        "coverage@3",
        "popularity@3",
        "target_popularity",
        "popularity_lift@3",
        "novelty@3",
        "target_novelty",
    ]
    assert values["hr@1"].tolist() == [1, 0, 0, 0] and "hr@5" not in values  # k <= top_n only
    assert values["mrr"].tolist() == pytest.approx([1, 1 / 3, 0, 1 / 2])
    assert values["valid_ratio"].mean() == 0.5 and values["generation_hr@1"].mean() == 0.25
    assert values["coverage@3"].value() == pytest.approx(6 / 10)  # A..F
    assert values["popularity@3"].tolist() == pytest.approx([2, 5 / 3, 2, 7 / 3])
    assert values["popularity_lift@3"].value() == pytest.approx((2 + 5 / 3 + 2 + 7 / 3) / 4 / 3)
    info = lambda p: -math.log2((p + 1) / 28)  # noqa: E731
    assert values["novelty@3"][0] == pytest.approx((info(5) + info(0) + info(1)) / 3)
    assert values["target_novelty"].tolist() == pytest.approx([info(5), info(3), info(4), info(0)])
    wide = all_item_values(_records(), {"n_items": 10, "total_popularity": 18, "top_n": 20})
    assert wide["hr@20"].tolist() == [1, 1, 0, 1] and wide["ndcg@5"][1] == pytest.approx(0.5)
    assert per_example_value(_records()[1]["all_item"], "ndcg@10") == pytest.approx(0.5)
    bare = [{"index": 0, "all_item": {"items": ["A"], "scores": [0.0], "target_rank": 1}}]
    assert set(all_item_values(bare)) == {"hr@1", "mrr"}  # no catalogue, popularity, generation


def test_all_item_metrics_of_a_missed_target_raise_no_warning():
    """Row 2's target is outside the top N (rank None → 0): its NDCG gain is 0, computed
    without a division by log2(1) = 0 (numpy's RuntimeWarning, an error here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wide = all_item_values(_records(), {"n_items": 10, "total_popularity": 18, "top_n": 20})
    assert wide["ndcg@5"][2] == 0.0


def test_coverage_interval_resamples_rows_like_bootstrap_ci():
    values = all_item_values(_records(), {"n_items": 10, "total_popularity": 18, "top_n": 3})
    cov = values["coverage@3"]
    value, lo, hi = bootstrap_statistic_ci(cov.n, cov.fn, n_boot=500, seed=0, row_cost=cov.row_cost)
    assert value == pytest.approx(0.6) and 0.3 <= lo <= hi <= 0.6  # resampling repeats rows


def test_summary_report_and_paired_values(tmp_path):
    recs = _records()
    meta = {
        "run": "r",
        "method": "A",
        "dataset": "d",
        "model": "m",
        "catalogue": {"n_items": 10, "total_popularity": 18, "top_n": 3},
    }
    summary = build_summary(recs, meta, n_boot=200)
    block = summary["protocols"]["all_item"]
    assert block["hr@1"]["value"] == 0.25 and block["coverage@3"]["value"] == pytest.approx(0.6)
    assert block["coverage@3"]["n"] == 4 and summary["catalogue"]["n_items"] == 10
    assert "generation" not in summary["protocols"]
    for name, method, rows in (
        ("a", "A", recs),
        ("b", "B", [dict(r, all_item={**r["all_item"], "target_rank": 1}) for r in recs]),
    ):
        write_predictions(tmp_path / name, rows)
        write_summary(tmp_path / name, build_summary(rows, {**meta, "method": method}, n_boot=200))
    assert all_item_values_by_index(tmp_path / "a" / "predictions.jsonl", "hr@1") == {
        0: 1.0,
        1: 0.0,
        2: 0.0,
        3: 0.0,
    }
    table = comparison_table(
        [tmp_path / "a" / "summary.json", tmp_path / "b" / "summary.json"],
        baseline_last=True,
        n_boot=500,
        protocol="all_item",
        metrics=["hr@1", "mrr", "coverage@3"],
    )
    assert "| Method | d HR@1 | d MRR | d Coverage@3 | Rel.Ipv d |" in table
    assert "| A | 0.2500 | 0.4583 | 0.6000 | +300.00% (p=" in table
    assert "Rel.Ipv: relative HR@1 (all_item) improvement of B over each row." in table


def test_logged_metrics_equal_the_summary():
    recs = _records()
    m = AllItemMetrics(top_n=3)
    parts = [r["all_item"] for r in recs]
    m.update(
        torch.tensor([p["target_rank"] or 0 for p in parts]),
        torch.tensor([p["valid"] for p in parts]),
        torch.tensor([p["correct"] for p in parts]),
    )
    got = {k: float(v) for k, v in m.compute().items()}
    values = all_item_values(recs, {"top_n": 3})
    assert set(got) == {"hr@1", "mrr", "valid_ratio", "generation_hr@1"}
    for name, v in got.items():
        assert v == pytest.approx(float(np.mean(values[name])), abs=1e-6), name
    wide = AllItemMetrics(top_n=20)
    wide.update(torch.tensor([1, 3, 0, 2]))
    got = {k: float(v) for k, v in wide.compute().items()}
    assert got["hr@5"] == 0.75 and got["ndcg@5"] == pytest.approx((1 + 0.5 + 1 / math.log2(3)) / 4)
    assert "valid_ratio" not in got and json.dumps(got)


def test_eval_settings_are_checked():
    from sdpo_lightning.training.module_args import EvalArgs

    assert EvalArgs(eval_protocols=["all_item"], catalogue_file="c.json").top_n == 20
    for kwargs, message in (
        ({"eval_protocols": ["all_item"]}, "needs catalogue_file"),
        ({"top_n": 0}, "top_n must be >= 1"),
        ({"top_n": 10, "beam_width": 4}, "beam_width must be >= top_n"),
        ({"beam_length_penalty": -0.5}, "beam_length_penalty must be"),
        ({"kv_sharing": "copy"}, "kv_sharing must be one of"),
    ):
        with pytest.raises(ValueError, match=message):
            EvalArgs(**kwargs)
