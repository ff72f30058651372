"""History trimming: the search for how many recent items fit gives exactly the prompts of the
earlier one-item-at-a-time loop, with a logarithmic number of tokenizer calls."""

from __future__ import annotations

import random

import pytest

from sdpo_lightning.data.prompts import PromptBuilder
from sdpo_lightning.data.records import DataFormatError, Example, validate_example
from tests.conftest import GGUF, require_shared

TITLES = [
    "Quiet Raven",
    "Star Wars (1977)",
    "Amélie",
    "Se7en",
    "Dr. Strangelove, or: How I",
    "!!!",
    "M*A*S*H",
    "Toy Story 2",
    "Léon: The Professional",
    "8½",
    "Rush Hour 3",
    "東京物語",
    "Naïve ‘quoted’ — dash",
    "x",
    "The The",
]


def reference_encode(
    pb: PromptBuilder,
    ex: Example,
    index: int,
    tok,
    max_length: int,
    items=None,
    source: str = "data",
) -> tuple[str, list[int], int]:
    """The trimming loop as it was: drop the oldest item and tokenize again until it fits."""
    pb.resolve_prefix(tok)
    longest = max(
        len(tok(pb.completion_text(c), add_special_tokens=False)["input_ids"]) + 1
        for c in ex.candidates
    )
    hist = list(ex.history)
    while True:
        if items is None:
            prompt = pb.render(ex, index, hist)
            ids = list(tok(prompt)["input_ids"])
        else:
            prompt, ids = pb._hybrid_ids(ex, index, hist, tok, items, source)
        if len(ids) + longest <= max_length:
            return prompt, ids, len(hist)
        if len(hist) <= 1:
            raise ValueError(
                f"{source}, record {index}: prompt needs {len(ids)} tokens with one history item "
                f"plus {longest} for the longest completion, over max_length={max_length}; the "
                "candidate list and completions are never cut — raise max_length or shorten the "
                "template"
            )
        hist = hist[1:]


def _examples(seed: int, n: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        hist = [
            rng.choice(TITLES) + ("" if rng.random() < 0.5 else f" {rng.randrange(99)}")
            for _ in range(rng.randint(1, 40))
        ]
        cands = rng.sample(TITLES, 4)
        out.append(validate_example(hist, cands, cands[rng.randrange(4)]))
    return out


def _same_as_reference(pb: PromptBuilder, tok, examples: list[Example], lengths, items=None) -> int:
    checked = 0
    for i, ex in enumerate(examples):
        for max_length in lengths:
            try:
                want = reference_encode(pb, ex, i, tok, max_length, items, "f.json")
            except ValueError as err:
                with pytest.raises(DataFormatError) as got:
                    pb.encode(ex, i, tok, max_length, source="f.json", items=items)
                assert str(got.value) == str(err)
                continue
            enc = pb.encode(ex, i, tok, max_length, source="f.json", items=items)
            assert (enc.prompt, enc.prompt_ids, enc.history_used) == want
            checked += 1
    return checked


@pytest.mark.parametrize("templates", ["movies", "music", "{candidates} then {history}:"])
def test_trimming_equals_the_item_by_item_loop(tokenizer, templates):
    pb = PromptBuilder(templates, seed=3)
    lengths = (20, 60, 90, 130, 200, 400, 4096)
    assert _same_as_reference(pb, tokenizer, _examples(0, 25), lengths) > 50


def test_trimming_equals_the_loop_on_hybrid_prompts(tokenizer):
    from tests.unit.test_hybrid import table

    t = table()
    rng = random.Random(1)
    examples = []
    for _ in range(10):
        hist = [rng.choice(t.titles + TITLES) for _ in range(rng.randint(1, 30))]
        examples.append(validate_example(hist, t.titles[:4], t.titles[2]))
    assert _same_as_reference(PromptBuilder("music"), tokenizer, examples, (60, 120, 250), t) > 10


def test_trimming_equals_the_loop_with_a_pretrained_tokenizer():
    from sdpo_lightning.modeling.models import load_tokenizer

    tok = load_tokenizer(str(require_shared(GGUF)))
    pb = PromptBuilder("movies")
    assert _same_as_reference(pb, tok, _examples(2, 12), (40, 90, 150, 300)) > 10


class CountingTokenizer:
    """Wraps a tokenizer, counting calls and the characters tokenized."""

    def __init__(self, tok) -> None:
        self.tok, self.calls, self.chars = tok, 0, 0

    def __call__(self, text, **kwargs):
        self.calls += 1
        self.chars += len(text)
        return self.tok(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_a_10k_item_history_costs_a_logarithmic_number_of_tokenizer_calls(tokenizer):
    hist = [f"{TITLES[i % len(TITLES)]} {i}" for i in range(10_000)]
    ex = validate_example(hist, ["Iron Drum", "Paper Cloud"], "Paper Cloud")
    tok = CountingTokenizer(tokenizer)
    pb = PromptBuilder("movies")
    enc = pb.encode(ex, 0, tok, max_length=256)
    assert 1 <= enc.history_used < 100
    # 2 completions + the whole history once + a galloping and a binary search over <= 64 items
    assert tok.calls <= 2 + 1 + 2 * 8
    full = len(pb.render(ex, 0))
    assert tok.chars < 2 * full  # the long prompt once, then short ones only
    assert enc.prompt == pb.render(ex, 0, hist[-enc.history_used :])
    # the 256-token budget is met and one more item would not fit
    longest = max(len(c) for c in enc.candidate_ids)
    assert len(enc.prompt_ids) + longest <= 256
    one_more = tokenizer(pb.render(ex, 0, hist[-enc.history_used - 1 :]))["input_ids"]
    assert len(one_more) + longest > 256
