"""Lazy tokenization and compact records give exactly the eager path's ids, prompts and errors."""

from __future__ import annotations

import json

import pytest

from sdpo_lightning.data.compact import load_compact
from sdpo_lightning.data.datamodule import RecDataModule
from sdpo_lightning.data.prompts import PromptBuilder
from sdpo_lightning.data.readers import load_examples
from sdpo_lightning.data.records import DataFormatError


def _eager(path, tokenizer, templates, max_length, seed=0):
    """Today's eager path: every example read by load_examples and encoded in order."""
    examples = load_examples(path, min_candidates=4).examples
    prompts = PromptBuilder(templates, seed)
    title_ids: dict = {}
    return (
        examples,
        prompts,
        [prompts.encode(ex, i, tokenizer, max_length, title_ids) for i, ex in enumerate(examples)],
    )


@pytest.mark.parametrize("templates", ["movies", "After {history} which of {candidates}?\nAnswer:"])
def test_lazy_ids_equal_eager_ids_with_truncation(synthetic_dir, tokenizer, templates):
    path = synthetic_dir / "train.json"
    _, _, full = _eager(path, tokenizer, templates, 10_000)
    lengths = sorted(len(e.prompt_ids) for e in full)
    max_length = lengths[len(lengths) // 2] + max(len(c) for e in full for c in e.candidate_ids)
    examples, prompts, eager = _eager(path, tokenizer, templates, max_length)
    truncated = [
        i
        for i, (e, x) in enumerate(zip(eager, examples, strict=False))
        if e.history_used < len(x.history)
    ]
    assert len(truncated) > 5 and len(truncated) < len(eager)  # the budget really cuts some rows

    dm = RecDataModule(
        train_file=str(path), prompt_templates=templates, max_length=max_length, num_negatives=3
    )
    dm.tokenizer = tokenizer
    dm.setup("fit")
    ds = dm.datasets["fit"]
    assert len(ds) == len(eager)
    picks = sorted(set(truncated[:6] + list(range(0, len(eager), max(1, len(eager) // 8)))))
    if templates == "movies":  # the seeded per-example choice uses both templates among the picks
        assert {prompts.template_for(i) for i in picks} == set(prompts.templates)
    for _ in range(2):  # the second access starts from the remembered history length
        for i in picks:
            item, want = ds[i], eager[i]
            assert item["prompt_ids"] == want.prompt_ids, i
            assert item["candidate_ids"] == want.candidate_ids, i
            assert item["prompt"] == want.prompt and item["target_index"] == want.target_index, i
            assert ds.encoded[i].history_used == want.history_used, i
            assert (
                list(item["candidates"]) == list(examples[i].candidates)
                and item["target"] == examples[i].target
            )


def test_lazy_setup_tokenizes_nothing_and_a_too_long_row_fails_on_access(
    synthetic_dir, tokenizer, monkeypatch
):
    calls = []
    real = PromptBuilder.encode
    monkeypatch.setattr(
        PromptBuilder, "encode", lambda self, *a, **k: calls.append(a[1]) or real(self, *a, **k)
    )
    dm = RecDataModule(
        train_file=str(synthetic_dir / "train.json"),
        val_file=str(synthetic_dir / "valid.json"),
        max_length=20,
    )
    dm.tokenizer = tokenizer
    dm.setup("fit")
    assert calls == []
    with pytest.raises(
        ValueError, match=r"train.json, record 3: prompt needs \d+ tokens .* over max_length=20"
    ):
        dm.datasets["fit"][3]


def test_compact_records_equal_load_examples_and_keep_its_errors(synthetic_dir, tmp_path):
    path = synthetic_dir / "valid.json"
    compact, skipped = load_compact(path, min_candidates=4)
    want = load_examples(path, min_candidates=4).examples
    assert skipped == [] and len(compact) == len(want) and list(compact) == want
    assert compact.head(3)[2] == want[2] and len(compact.head(3)) == 3
    rows = json.loads(path.read_text())[:4]
    rows[1]["trueSelection"] = "not a candidate"
    for suffix, text in (
        (".json", json.dumps(rows, indent=1)),
        (".jsonl", "\n".join(map(json.dumps, rows))),
    ):
        bad = tmp_path / f"bad{suffix}"
        bad.write_text(text)
        label = "record 1" if suffix == ".json" else "line 2"
        with pytest.raises(
            DataFormatError, match=f"bad{suffix}, {label}: target 'not a candidate' is not among"
        ):
            load_compact(bad)
        lenient, skipped = load_compact(bad, lenient=True)
        assert len(lenient) == 3 and skipped[0][0] == label
    broken = tmp_path / "broken.json"
    broken.write_text(
        json.dumps(json.loads(path.read_text())[:4])[:-40]
    )  # cut inside the last record
    with pytest.raises(
        DataFormatError, match=r"broken.json: malformed JSON .* at line 1, column \d+"
    ):
        load_compact(broken)
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(DataFormatError, match="expected a JSON list of records, got dict"):
        load_compact(tmp_path / "obj.json")
    (tmp_path / "empty.json").write_text(" [ ] ")
    with pytest.raises(DataFormatError, match="no valid records"):
        load_compact(tmp_path / "empty.json")
