"""Tests of answer parsing (generation protocol; README.md, "Metrics")."""

from __future__ import annotations

import unicodedata

import pytest

from sdpo_lightning.evaluation.parsing import (
    ParsedAnswer,
    answer_scope,
    normalize_title,
    parse_answer,
)

CANDS = [
    "Muse",
    "Muse (band)",
    "Queen",
    "Queen + Paul Rodgers",
    "Blue",
    "Bad Boys Blue",
    "Beyoncé",
    "Sigur Rós",
    "Dio",
    "Céline Dion",
    "!!!",
    "大塚愛",
]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Muse  ", "muse"),
        ('"Muse".', "muse"),
        ("“Muse”", "muse"),
        ("MUSE\t(band)", "muse (band)"),
        ("Muse (band)", "muse (band)"),  # brackets are kept
        ("ＭＵＳＥ", "muse"),  # NFKC fullwidth
        ("Guns N’ Roses", "guns n' roses"),
        ("!!!", "!!!"),  # punctuation-only title is not emptied
        ("", ""),
    ],
)
def test_normalize_title(raw: str, expected: str) -> None:
    assert normalize_title(raw) == expected


def test_normalize_nfc_nfd_equal() -> None:
    nfc, nfd = unicodedata.normalize("NFC", "Beyoncé"), unicodedata.normalize("NFD", "Beyoncé")
    assert nfc != nfd
    assert normalize_title(nfc) == normalize_title(nfd) == "beyoncé"


def test_answer_scope() -> None:
    assert answer_scope("\n\n  Muse\nQueen\n") == "  Muse"
    assert answer_scope("Muse</s>Queen", stop=["</s>"]) == "Muse"
    assert answer_scope("Muse\nQueen", first_line=False) == "Muse\nQueen"
    assert answer_scope("   \n \n") == ""


@pytest.mark.parametrize(
    ("text", "item"),
    [
        ("Muse", "Muse"),
        ("Muse (band)", "Muse (band)"),  # "Muse" inside the longer span is no hit
        ("I choose Muse (band).", "Muse (band)"),
        ("  muse \n", "Muse"),
        ('"MUSE"!', "Muse"),
        ("The answer is: muse.", "Muse"),
        ("Bad Boys Blue", "Bad Boys Blue"),
        ("Queen + Paul Rodgers", "Queen + Paul Rodgers"),
        ("Céline Dion", "Céline Dion"),  # "Dio" is not a word-bounded hit inside "Dion"
        ("Sigur Ros", None),  # accents are not removed
        ("SIGUR RÓS", "Sigur Rós"),
        (unicodedata.normalize("NFD", "Beyoncé"), "Beyoncé"),
        ("Muse\nQueen\nBlue", "Muse"),  # continuation lines are junk
        ("!!!", "!!!"),
        ("I like !!!.", "!!!"),
        ("大塚愛です", "大塚愛"),  # no word boundaries in CJK text
        ("Bluetones", None),  # "Blue" needs a word boundary
    ],
)
def test_single_candidate(text: str, item: str | None) -> None:
    parsed = parse_answer(text, CANDS)
    assert parsed.item == item
    assert parsed.valid is (item is not None)
    assert parsed.matches == ((item,) if item else ())


def test_two_candidates_invalid() -> None:
    parsed = parse_answer("Muse or Queen", CANDS)
    assert parsed == ParsedAnswer(item=None, valid=False, matches=("Muse", "Queen"))
    # a separate "Muse" outside the "Muse (band)" span still counts
    parsed = parse_answer("Muse (band), not Muse", CANDS)
    assert parsed == ParsedAnswer(item=None, valid=False, matches=("Muse (band)", "Muse"))


def test_repeated_candidate_is_one_candidate() -> None:
    assert parse_answer("Muse, Muse, MUSE", CANDS) == ParsedAnswer("Muse", True, ("Muse",))


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "I don't know", "</s>Muse"])
def test_empty_or_no_candidate_invalid(text: str) -> None:
    parsed = parse_answer(text, CANDS, stop=["</s>"])
    assert parsed.item is None and not parsed.valid and parsed.matches == ()


def test_prompt_repetition_invalid() -> None:
    history = ["Radiohead", "Coldplay"]
    prompt = (
        f"After listening to {', '.join(history)}, which artist do you think the person "
        f"will listen to next from {', '.join(CANDS)}?"
    )
    parsed = parse_answer(prompt, CANDS)
    assert not parsed.valid and parsed.item is None
    assert set(parsed.matches) == set(CANDS)
    assert parsed.matches[:3] == ("Muse", "Muse (band)", "Queen")  # order of appearance


def test_full_text_scope() -> None:
    assert parse_answer("Muse\nQueen", CANDS).item == "Muse"
    assert not parse_answer("Muse\nQueen", CANDS, first_line=False).valid


def test_identically_normalized_candidates() -> None:
    parsed = parse_answer("queen", ["Queen", "QUEEN", "Muse"])
    assert parsed == ParsedAnswer("Queen", True, ("Queen",))


def test_parsed_answer_frozen() -> None:
    parsed = parse_answer("Muse", CANDS)
    with pytest.raises(AttributeError):
        parsed.item = "Queen"  # type: ignore[misc]
