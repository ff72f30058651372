"""Constrained beam search over the catalogue trie: exact against brute-force scoring of every
item when the beam is as wide as the catalogue, the history rule, length normalisation, errors."""

from __future__ import annotations

import pytest
import torch

from sdpo_lightning.evaluation.beam_search import (
    CatalogueTrie,
    completion_sequences,
    constrained_beam_search,
)
from sdpo_lightning.scoring.logps import completion_logps

TITLES = [
    "Heat",
    "Heat Wave",
    "Heat Wave Two",
    "Quiet Raven",
    "Iron Drum",
    "Paper Cloud",
    "Paper Cloud Rising",
    "Glacier",
    "Tide Secret",
    "Reef Final Distant",
    "Avenue",
    "Zenith",
]


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


def _prompts(tokenizer):
    texts = [
        "After watching Heat, Iron Drum, which movie next?\nAnswer:",
        "Zenith\nAnswer:",
        "This user has watched Glacier, Avenue, Quiet Raven, Paper Cloud in the previous.\nAnswer:",
    ]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    P = max(map(len, ids))
    p_ids = torch.full((len(ids), P), tokenizer.pad_token_id)
    p_mask = torch.zeros((len(ids), P), dtype=torch.long)
    for i, x in enumerate(ids):
        p_ids[i, P - len(x) :], p_mask[i, P - len(x) :] = torch.tensor(x), 1
    return p_ids, p_mask


def _brute_force(model, tokenizer, p_ids, p_mask):
    """Every item's summed log-prob (B, M) and token counts, by the packed scorer."""
    seqs = completion_sequences(TITLES, tokenizer, " ")
    C = max(map(len, seqs))
    ids = torch.full((len(seqs), C), tokenizer.pad_token_id)
    mask = torch.zeros((len(seqs), C), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    B = p_ids.shape[0]
    with torch.no_grad():
        out = completion_logps(
            model,
            p_ids,
            p_mask,
            ids.expand(B, -1, -1),
            mask.expand(B, -1, -1),
            mode="shared_prefix",
        )
    return out.logps, out.n_tokens


def _top(scores: torch.Tensor, n: int, exclude=()) -> list[int]:
    order = sorted(
        (i for i in range(len(scores)) if i not in exclude), key=lambda i: (-float(scores[i]), i)
    )
    return order[:n]


def test_trie_prefix_titles_part_at_eos(tokenizer):
    trie = CatalogueTrie.from_titles(TITLES, tokenizer, " ")
    assert trie.n_items == len(TITLES)
    for i in range(len(TITLES)):
        seq = trie.sequence(i)
        assert seq[-1] == tokenizer.eos_token_id and trie.item_of(seq) == i
    heat = trie.sequence(TITLES.index("Heat"))
    assert trie.item_of(heat[:-1]) is None  # "Heat" without EOS is a prefix, not an item
    after = trie.allowed(heat[:-1])
    assert tokenizer.eos_token_id in after and len(after) >= 2  # EOS ends "Heat"; " Wave" goes on
    wave = TITLES.index("Heat Wave"), TITLES.index("Heat Wave Two")
    removed = trie.removed_counts([[], [TITLES.index("Heat")], [TITLES.index("Heat"), *wave]])
    assert trie.allowed(heat[:-1], removed, row=0) == after
    assert tokenizer.eos_token_id not in trie.allowed(heat[:-1], removed, row=1)
    assert trie.allowed(heat[:-1], removed, row=2) == []


def test_trie_refuses_identical_token_ids_and_missing_eos():
    with pytest.raises(ValueError, match="'b'.*same token ids"):
        CatalogueTrie([[5, 1], [6, 1], [6, 1]], 1, titles=["a", "x", "b"])
    with pytest.raises(ValueError, match="must end with the EOS"):
        CatalogueTrie([[5, 6]], 1)
    with pytest.raises(ValueError, match="nowhere else"):
        CatalogueTrie([[5, 1, 6, 1]], 1)


@pytest.mark.parametrize("top_n", [1, 5, len(TITLES)])
def test_wide_beam_is_exact_top_n(model, tokenizer, top_n):
    p_ids, p_mask = _prompts(tokenizer)
    trie = CatalogueTrie.from_titles(TITLES, tokenizer, " ")
    logps, _ = _brute_force(model, tokenizer, p_ids, p_mask)
    out = constrained_beam_search(model, p_ids, p_mask, trie, top_n, beam_width=len(TITLES))
    for b in range(p_ids.shape[0]):
        want = _top(logps[b], top_n)
        assert out.items[b].tolist() == want
        torch.testing.assert_close(out.scores[b], logps[b, want], atol=1e-4, rtol=0)
        torch.testing.assert_close(out.logps[b], out.scores[b])


def test_history_items_are_excluded_exactly(model, tokenizer):
    p_ids, p_mask = _prompts(tokenizer)
    trie = CatalogueTrie.from_titles(TITLES, tokenizer, " ")
    logps, _ = _brute_force(model, tokenizer, p_ids, p_mask)
    exclude = [[0, 4], [11, 11], [7, 10, 3, 5, 1, 2]]  # the "Heat" branch's three items in row 2
    out = constrained_beam_search(
        model, p_ids, p_mask, trie, 6, beam_width=len(TITLES), exclude=exclude
    )
    for b in range(3):
        want = _top(logps[b], 6, set(exclude[b]))
        assert out.items[b].tolist() == want and not set(want) & set(exclude[b])
    # fewer items left than N: padded with -1 / -inf
    out = constrained_beam_search(
        model, p_ids[:1], p_mask[:1], trie, 12, beam_width=12, exclude=[[0]]
    )
    assert out.items[0, -1] == -1 and out.scores[0, -1] == float("-inf")
    assert sorted(out.items[0, :-1].tolist()) == list(range(1, 12))


def test_length_penalty_ranks_by_mean(model, tokenizer):
    p_ids, p_mask = _prompts(tokenizer)
    trie = CatalogueTrie.from_titles(TITLES, tokenizer, " ")
    logps, n_tok = _brute_force(model, tokenizer, p_ids, p_mask)
    out = constrained_beam_search(
        model, p_ids, p_mask, trie, 4, beam_width=len(TITLES), length_penalty=1.0
    )
    mean = logps / n_tok
    for b in range(3):
        want = _top(mean[b], 4)
        assert out.items[b].tolist() == want
        torch.testing.assert_close(out.scores[b], mean[b, want], atol=1e-4, rtol=0)
        torch.testing.assert_close(out.logps[b], logps[b, want], atol=1e-4, rtol=0)


def test_narrow_beam_returns_distinct_items_with_their_true_scores(model, tokenizer):
    p_ids, p_mask = _prompts(tokenizer)
    trie = CatalogueTrie.from_titles(TITLES, tokenizer, " ")
    logps, _ = _brute_force(model, tokenizer, p_ids, p_mask)
    out = constrained_beam_search(model, p_ids, p_mask, trie, 3, beam_width=3)
    for b in range(3):
        items = out.items[b].tolist()
        assert len(set(items)) == 3 and min(items) >= 0
        torch.testing.assert_close(out.scores[b], logps[b, items], atol=1e-4, rtol=0)
        assert out.scores[b].tolist() == sorted(out.scores[b].tolist(), reverse=True)


def test_settings_errors(model, tokenizer):
    p_ids, p_mask = _prompts(tokenizer)
    trie = CatalogueTrie.from_titles(TITLES, tokenizer, " ")
    with pytest.raises(ValueError, match="larger than the catalogue"):
        constrained_beam_search(model, p_ids, p_mask, trie, 13)
    with pytest.raises(ValueError, match="beam_width=2 is smaller than top_n=3"):
        constrained_beam_search(model, p_ids, p_mask, trie, 3, beam_width=2)
    with pytest.raises(ValueError, match="length_penalty"):
        constrained_beam_search(model, p_ids, p_mask, trie, 3, length_penalty=-1)


def test_random_catalogue_with_shared_prefixes_is_exact(model, tokenizer):
    """80 titles of 1-3 words from 6 (many titles are prefixes of others), 3 rows at once."""
    import random

    rng = random.Random(1)
    words = ["Heat", "Wave", "Paper", "Cloud", "Iron", "Drum"]
    titles: list[str] = []
    while len(titles) < 80:
        t = " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
        titles.append(t) if t not in titles else None
    p_ids, p_mask = _prompts(tokenizer)
    seqs = completion_sequences(titles, tokenizer, " ")
    trie = CatalogueTrie(seqs, tokenizer.eos_token_id, titles)
    C = max(map(len, seqs))
    ids = torch.full((1, len(seqs), C), tokenizer.pad_token_id)
    mask = torch.zeros((1, len(seqs), C), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[0, i, : len(s)], mask[0, i, : len(s)] = torch.tensor(s), 1
    with torch.no_grad():
        logps = completion_logps(
            model,
            p_ids,
            p_mask,
            ids.expand(3, -1, -1),
            mask.expand(3, -1, -1),
            mode="shared_prefix",
        ).logps
    exclude = [[0, 1, 2], [], list(range(10, 30))]
    out = constrained_beam_search(model, p_ids, p_mask, trie, 10, beam_width=80, exclude=exclude)
    for b in range(3):
        assert out.items[b].tolist() == _top(logps[b], 10, set(exclude[b]))
    one = constrained_beam_search(
        model, p_ids[2:], p_mask[2:], trie, 10, beam_width=80, exclude=exclude[2:]
    )
    assert one.items[0].tolist() == out.items[2].tolist()  # batching does not change a row


@pytest.mark.parametrize("kv_sharing", ["shared", "expand"])
def test_both_kv_sharing_paths_are_exact(model, tokenizer, kv_sharing):
    from sdpo_lightning.evaluation.shared_prompt import supports_shared_prompt

    assert supports_shared_prompt(model)
    p_ids, p_mask = _prompts(tokenizer)
    trie = CatalogueTrie.from_titles(TITLES, tokenizer, " ")
    logps, _ = _brute_force(model, tokenizer, p_ids, p_mask)
    out = constrained_beam_search(
        model,
        p_ids,
        p_mask,
        trie,
        6,
        beam_width=len(TITLES),
        exclude=[[1], [], [2, 3]],
        kv_sharing=kv_sharing,
    )
    for b, ex in enumerate([[1], [], [2, 3]]):
        want = _top(logps[b], 6, set(ex))
        assert out.items[b].tolist() == want
        torch.testing.assert_close(out.scores[b], logps[b, want], atol=1e-4, rtol=0)
    assert model.config._attn_implementation != "sdpo_shared_prompt"  # restored


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral", "olmo", "olmo2", "granite"])
def test_shared_prompt_attention_in_every_supported_family(family):
    """The in-place prompt cache gives the expanded cache's items and scores on each model type
    it is enabled for (random tiny models, GQA, left padding)."""
    import random

    import transformers as T

    from sdpo_lightning.evaluation.shared_prompt import (
        SUPPORTED_MODEL_TYPES,
        supports_shared_prompt,
    )

    vocab, eos, rng = 200, 1, random.Random(0)
    seqs: set[tuple[int, ...]] = set()
    while len(seqs) < 40:
        seqs.add((*(rng.randint(2, vocab - 1) for _ in range(rng.randint(1, 4))), eos))
    trie = CatalogueTrie([list(s) for s in sorted(seqs)], eos)
    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.3,
        pad_token_id=0,
        eos_token_id=eos,
    )
    extra = {
        "qwen3": {"head_dim": 8},
        "mistral": {"sliding_window": None},
        "granite": {"attention_multiplier": 0.3},
    }.get(family, {})
    config = T.AutoConfig.for_model(family, **common, **extra)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    assert family in SUPPORTED_MODEL_TYPES and supports_shared_prompt(model)
    p_ids = torch.randint(2, vocab, (3, 12))
    p_mask = torch.ones_like(p_ids)
    p_ids[0, :4], p_mask[0, :4] = 0, 0
    shared = constrained_beam_search(model, p_ids, p_mask, trie, 8, 40, kv_sharing="shared")
    expand = constrained_beam_search(model, p_ids, p_mask, trie, 8, 40, kv_sharing="expand")
    assert shared.items.tolist() == expand.items.tolist()
    torch.testing.assert_close(shared.scores, expand.scores, atol=1e-4, rtol=0)
