"""Prompt templates, seeded template choice, tokenization and the truncation policy."""

from __future__ import annotations

import pytest

from sdpo_lightning.data.prompts import PRESETS, PromptBuilder, resolve_templates
from sdpo_lightning.data.records import validate_example


def _example(n_hist=10):
    hist = [f"Quiet Raven {i}" for i in range(n_hist)]
    return validate_example(hist, ["Iron Drum", "Paper Cloud", "Glass Magnet"], "Paper Cloud")


def test_presets_and_user_templates():
    assert set(PRESETS) == {"movies", "music", "books"}
    assert resolve_templates("music") == PRESETS["music"]
    assert resolve_templates("H: {history} C: {candidates}") == ["H: {history} C: {candidates}"]
    with pytest.raises(ValueError, match="unknown prompt preset 'film'"):
        resolve_templates("film")
    with pytest.raises(ValueError, match="lacks the {candidates} placeholder"):
        resolve_templates(["only {history}"])


def test_render_fills_history_and_candidates():
    pb = PromptBuilder("Seen {history}. Pick from {candidates}.", separator=" | ")
    ex = _example(2)
    assert (
        pb.render(ex, 0)
        == "Seen Quiet Raven 0 | Quiet Raven 1. Pick from Iron Drum | Paper Cloud | Glass Magnet."
    )


def test_template_choice_is_seeded_per_example():
    a = PromptBuilder("movies", seed=3)
    b = PromptBuilder("movies", seed=3)
    c = PromptBuilder("movies", seed=4)
    picks_a = [a.template_for(i) for i in range(50)]
    assert picks_a == [b.template_for(i) for i in range(50)]
    assert set(picks_a) == set(PRESETS["movies"])  # both templates get used
    assert picks_a != [c.template_for(i) for i in range(50)]


def test_completion_ids_are_title_then_eos_and_independent_of_prompt(tokenizer):
    pb = PromptBuilder("movies")
    enc = pb.encode(_example(), 0, tokenizer, max_length=512)
    target = enc.candidate_ids[enc.target_index]
    assert target[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(target[:-1]) == " Paper Cloud"
    assert enc.prompt_ids[0] == tokenizer.bos_token_id
    # the same title has the same ids in another example with another prompt
    other = validate_example(["Iron Drum"], ["Paper Cloud", "Glass Magnet"], "Glass Magnet")
    enc2 = pb.encode(other, 1, tokenizer, max_length=512)
    assert enc2.candidate_ids[0] == target


def test_truncation_drops_oldest_history_first(tokenizer):
    pb = PromptBuilder("movies")
    ex = _example(10)
    full = pb.encode(ex, 0, tokenizer, max_length=4096)
    assert full.history_used == 10
    budget = len(full.prompt_ids) + max(len(c) for c in full.candidate_ids) - 5
    cut = pb.encode(ex, 0, tokenizer, max_length=budget)
    assert 1 <= cut.history_used < 10
    assert len(cut.prompt_ids) + max(len(c) for c in cut.candidate_ids) <= budget
    kept = ex.history[-cut.history_used :]
    assert cut.prompt == pb.render(ex, 0, kept)  # the most recent items stay
    assert "Quiet Raven 0," not in cut.prompt and "Quiet Raven 9" in cut.prompt
    for title in ex.candidates:  # the candidate list is never cut
        assert title in cut.prompt


def test_does_not_fit_is_a_clear_error(tokenizer):
    pb = PromptBuilder("movies")
    with pytest.raises(
        ValueError, match=r"train.json, record 0: prompt needs \d+ tokens with one history item"
    ):
        pb.encode(_example(3), 0, tokenizer, max_length=20, source="train.json")


def test_auto_completion_prefix_follows_the_tokenizer(tokenizer):
    """Byte-level BPE needs the space before the title; SentencePiece adds it itself."""
    assert PromptBuilder("movies").resolve_prefix(tokenizer) == " "

    class SentencePieceLike:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [7]}

        def convert_ids_to_tokens(self, ids):
            return ["\u2581x"]

    assert PromptBuilder("movies").resolve_prefix(SentencePieceLike()) == ""
    assert PromptBuilder("movies", completion_prefix="|").resolve_prefix(tokenizer) == "|"
