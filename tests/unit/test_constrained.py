"""Constrained decoding: the candidate trie, and greedy generation that can only name candidates."""

from __future__ import annotations

import torch

from sdpo_lightning.evaluation.constrained import (
    CandidateTrie,
    candidate_sequences,
    prefix_allowed_tokens_fn,
)
from sdpo_lightning.evaluation.parsing import parse_answer


def test_trie_allows_only_continuations():
    trie = CandidateTrie([[5, 6, 1], [5, 7, 1], [8, 1]])
    assert trie.allowed([]) == [5, 8]
    assert trie.allowed([5]) == [6, 7]
    assert trie.allowed([5, 7]) == [1]
    assert trie.allowed([5, 7, 1]) == []  # complete
    assert trie.allowed([9]) == []  # left the trie


def test_candidate_sequences_unpads():
    ids = torch.tensor([[[5, 6, 1], [8, 1, 0]]])
    mask = torch.tensor([[[1, 1, 1], [1, 1, 0]]])
    assert candidate_sequences(ids, mask) == [[[5, 6, 1], [8, 1]]]


def test_prefix_fn_reads_tokens_after_the_prompt():
    fn = prefix_allowed_tokens_fn([[[5, 6, 1]], [[8, 1]]], prompt_length=3, fallback_token_id=0)
    assert fn(0, torch.tensor([9, 9, 9])) == [5]
    assert fn(0, torch.tensor([9, 9, 9, 5])) == [6]
    assert fn(1, torch.tensor([9, 9, 9, 8, 1])) == [0]  # finished: only the fallback (EOS/pad)


def test_constrained_greedy_generation_always_names_one_candidate(tokenizer):
    """A random tiny LLaMA generates junk freely, but constrained it can only emit a title."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    titles = ["Quiet Raven", "Iron Drum", "Paper Cloud"]
    cands = [
        tokenizer(" " + t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for t in titles
    ]
    prompt = torch.tensor(
        [tokenizer("Pick one: Quiet Raven, Iron Drum, Paper Cloud\nAnswer:")["input_ids"]]
    )
    fn = prefix_allowed_tokens_fn([cands], prompt.shape[1], tokenizer.eos_token_id)
    out = model.generate(
        prompt,
        max_new_tokens=8,
        do_sample=False,
        prefix_allowed_tokens_fn=fn,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    text = tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True)
    parsed = parse_answer(text, titles)
    assert parsed.valid and parsed.item in titles
