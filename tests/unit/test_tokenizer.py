"""Tests for the offline byte-level BPE tokenizer (``sdpo_lightning.modeling.tokenizer``)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from sdpo_lightning.data.synthetic import generate_catalogue, generate_dataset, tokenizer_texts
from sdpo_lightning.modeling.tokenizer import load_tokenizer, train_tokenizer

PROMPTS = (
    "This user has watched Quiet Lantern, Silver Tide in the previous. Answer:",
    "After watching [Pine], which movie next?",
    "x",
    "Données 世界 🎉:",
    "Answer: Crimson",
)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return tokenizer_texts(generate_catalogue(n_items=200, n_categories=10, seed=0))


@pytest.fixture(scope="module")
def tok(texts: list[str]):
    return train_tokenizer(texts, vocab_size=1000)


def test_special_tokens_and_bos(tok) -> None:
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    )
    assert [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    with_special = tok("Quiet Lantern").input_ids
    without = tok("Quiet Lantern", add_special_tokens=False).input_ids
    assert with_special == [tok.bos_token_id, *without]
    assert tok.eos_token_id not in with_special
    assert 900 <= len(tok) <= 1000


@pytest.mark.parametrize(
    "text",
    [
        "Crimson Harbor",
        " Crimson Harbor",
        "  two  spaces\tand\ttabs\n",
        "Zebra qxj 123!?",
        "naïve café — Ünïcödé 世界 🎉🙂",
        "",
    ],
)
def test_round_trip(tok, text: str) -> None:
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_token_id, *ids], skip_special_tokens=True) == text


def test_deterministic(texts: list[str], tok) -> None:
    again = train_tokenizer(list(texts), vocab_size=1000)
    assert again.get_vocab() == tok.get_vocab()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert again(PROMPTS[0]).input_ids == tok(PROMPTS[0]).input_ids


def test_completion_ids_independent_of_prompt(tok) -> None:
    """Prompt and completion tokenized separately, ids concatenated: the title's ids are
    the same after any prompt and decode back to the spaced title."""
    completion = " Crimson Harbor"
    comp_ids = tok(completion, add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(comp_ids) == ["ĠCrimson", "ĠHarbor"]
    for prompt in PROMPTS:
        prompt_ids = tok(prompt).input_ids
        full = prompt_ids + comp_ids
        assert full[len(prompt_ids) :] == comp_ids
        assert tok.decode(full[len(prompt_ids) :]) == completion
        assert tok.decode(full, skip_special_tokens=True) == prompt + completion
        # Joint tokenization agrees too when the prompt ends with a non-space character.
        assert tok(prompt + completion).input_ids == full


def test_titles_compact(tok) -> None:
    """Every title word is one token after a space, so titles are short to copy."""
    for item in generate_catalogue(n_items=200, n_categories=10, seed=0):
        ids = tok(f" {item.title}", add_special_tokens=False).input_ids
        assert len(ids) == len(item.title.split()), item.title


def test_prompt_length(tok) -> None:
    """A prompt with 10 history items and 20 candidates stays well under 200 tokens."""
    rows = generate_dataset(None, seed=0, n_users=10)["train"]
    row = next(r for r in rows if len(r["historyList"]) == 10)
    prompt = (
        f"This user has watched {', '.join(row['historyList'])} in the previous. Please "
        "predict the next movie this user will watch. Choose the answer from the "
        f"following 20 movie titles: {', '.join(row['itemList'])}. Answer:"
    )
    assert 80 <= len(tok(prompt).input_ids) <= 200


def test_padding_side(tok) -> None:
    tok.padding_side = "left"
    try:
        batch = tok(["Pine", "Quiet Silver Lantern"], padding=True)
        assert batch.input_ids[0][0] == tok.pad_token_id and batch.attention_mask[0][0] == 0
    finally:
        tok.padding_side = "right"
    batch = tok(["Pine", "Quiet Silver Lantern"], padding=True)
    assert batch.input_ids[0][-1] == tok.pad_token_id


def test_save_and_load_offline(texts: list[str], tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = train_tokenizer(texts, vocab_size=1000, save_dir=tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    for loaded in (
        AutoTokenizer.from_pretrained(str(tmp_path / "tok")),
        load_tokenizer(tmp_path / "tok", padding_side="left"),
    ):
        assert loaded.get_vocab() == saved.get_vocab()
        for prompt in PROMPTS:
            assert loaded(prompt).input_ids == saved(prompt).input_ids
            assert loaded.decode(loaded(prompt).input_ids, skip_special_tokens=True) == prompt
        assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (0, 1, 2)
    assert load_tokenizer(tmp_path / "tok", padding_side="left").padding_side == "left"


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        train_tokenizer([])
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=100)
