"""Hybrid item prompts (sdpo_lightning.modeling.hybrid): item tokens embed as the projection of their
recommender embedding, text prompts are unchanged, and shared-prefix scoring equals naive
scoring with item tokens in the prompt (log-probs and the projector's gradients)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from sdpo_lightning.data.prompts import ITEM_TEXT, PromptBuilder
from sdpo_lightning.data.records import Example
from sdpo_lightning.modeling.hybrid import (
    HybridEmbedding,
    HybridSettings,
    ItemTable,
    curriculum_probability,
    install_hybrid,
    item_token_id,
    load_projector,
    save_projector,
    strip_item_tokens,
    text_form_rows,
)
from sdpo_lightning.scoring.logps import completion_logps
from tests.unit.test_scoring import tiny_llama


def table(n: int = 5, d: int = 8) -> ItemTable:
    g = torch.Generator().manual_seed(0)
    return ItemTable([f"item{i}" for i in range(n)], torch.randn(n, d, generator=g), source="test")


def test_item_token_embedding_is_the_projection():
    model = tiny_llama()
    t = table()
    emb = install_hybrid(model, t, hidden=16, seed=3)
    assert model.get_input_embeddings() is emb
    with torch.no_grad():
        emb.unknown.normal_()
    ids = torch.tensor([[5, item_token_id(2), 7, item_token_id(None), item_token_id(0)]])  # (1, 5)
    out = emb(ids)  # (1, 5, 64)
    assert_close(out[0, 1], emb.projector(t.embeddings[2]))
    assert_close(out[0, 3], emb.projector(emb.unknown))
    assert_close(out[0, 4], emb.projector(t.embeddings[0]))
    assert_close(out[0, [0, 2]], emb.base(torch.tensor([5, 7])))
    # a text-only row is the base embedding, bit for bit
    assert torch.equal(emb(torch.tensor([[5, 7]])), emb.base(torch.tensor([[5, 7]])))


def test_projector_init_is_seeded_and_round_trips(tmp_path):
    t = table()
    a = install_hybrid(tiny_llama(), t, hidden=16, seed=3)
    b = install_hybrid(tiny_llama(), t, hidden=16, seed=3)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.projector_state().values(), b.projector_state().values(), strict=False)
    )
    with torch.no_grad():
        a.unknown.fill_(0.5)
    save_projector(a, t, tmp_path / "hybrid")
    c = install_hybrid(
        tiny_llama(),
        ItemTable.load(tmp_path / "hybrid"),
        hidden=16,
        seed=9,
        projector_dir=tmp_path / "hybrid",
    )
    for k, v in a.projector_state().items():
        assert torch.equal(v, c.projector_state()[k]), k
    assert torch.equal(c.items, t.embeddings)
    wrong = HybridEmbedding(torch.nn.Embedding(10, 64), t.embeddings, hidden=8)
    with pytest.raises(ValueError, match="projector_hidden"):
        load_projector(wrong, tmp_path / "hybrid")


def test_item_table_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="items.json"):
        ItemTable.load(tmp_path)
    table().save(tmp_path)
    (tmp_path / "items.json").write_text(json.dumps({"titles": ["a"]}))
    with pytest.raises(ValueError, match=r"item table .*1 titles but embeddings of shape \(5, 8\)"):
        ItemTable.load(tmp_path)
    with pytest.raises(ValueError, match="item_table"):
        HybridSettings()
    with pytest.raises(ValueError, match="curriculum_start"):
        HybridSettings(item_table="x", curriculum_start=1.5)


def _example() -> Example:
    return Example(
        history=["item1", "Zed", "item3"], candidates=["item0", "item4", "Nope"], target="item4"
    )


def test_text_prompt_is_unchanged_and_hybrid_adds_one_token_per_title(tokenizer):
    b = PromptBuilder("music")
    ex = _example()
    text = b.encode(ex, 0, tokenizer, 512)
    assert text.prompt_ids == list(
        tokenizer(b.render(ex, 0))["input_ids"]
    )  # today's path, untouched
    assert b.encode(ex, 0, tokenizer, 512, items=None) == text
    hyb = b.encode(ex, 0, tokenizer, 512, items=table())
    items = [i for i in hyb.prompt_ids if i < 0]
    # history then candidates, in order; titles outside the table get the unknown id
    assert items == [item_token_id(1), -1, item_token_id(3), item_token_id(0), item_token_id(4), -1]
    assert hyb.candidate_ids == text.candidate_ids and hyb.target_index == text.target_index
    assert hyb.prompt.count(ITEM_TEXT) == 6 and hyb.prompt.replace(ITEM_TEXT, "") == text.prompt
    assert [i for i in hyb.prompt_ids if i >= 0] == text.prompt_ids  # the curriculum's text form
    # each item token follows its title's tokens
    first = hyb.prompt_ids.index(item_token_id(1))
    title = tokenizer(" item1", add_special_tokens=False)["input_ids"]
    assert hyb.prompt_ids[first - len(title) : first] == title


def test_candidates_first_template_orders_item_tokens(tokenizer):
    b = PromptBuilder("Pick from {candidates} after {history}:")
    hyb = b.encode(_example(), 0, tokenizer, 512, items=table())
    assert [i for i in hyb.prompt_ids if i < 0] == [
        item_token_id(0),
        item_token_id(4),
        -1,
        item_token_id(1),
        -1,
        item_token_id(3),
    ]


def test_reserved_character_in_a_title_names_file_and_record(tokenizer):
    bad = Example(
        history=["item1", "odd\ue000title"], candidates=["item0", "item4"], target="item4"
    )
    with pytest.raises(ValueError, match=r"train.json, record 7: a title or the template contains"):
        PromptBuilder("music").encode(bad, 7, tokenizer, 512, items=table(), source="train.json")


def test_hybrid_truncation_drops_oldest_history(tokenizer):
    b = PromptBuilder("music")
    ex = _example()
    full = b.encode(ex, 0, tokenizer, 512, items=table())
    cut = b.encode(ex, 0, tokenizer, len(full.prompt_ids) + 5, items=table())
    assert cut.history_used == 2 and item_token_id(1) not in cut.prompt_ids


def _packed_inputs(t: ItemTable):
    P, N, C = 7, 3, 4
    prompt = torch.tensor(
        [
            [0, 0, 5, 9, item_token_id(1), 11, item_token_id(None)],
            [5, item_token_id(4), 8, 12, item_token_id(0), 13, 14],
        ]
    )  # (2, P)
    p_mask = (torch.arange(P) >= torch.tensor([[2], [0]])).long()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (2, N, C), generator=g)  # (B, N, C)
    c_mask = torch.ones_like(ids)
    c_mask[0, 1, 2:] = 0
    c_mask[1, 2, 3:] = 0
    return prompt, p_mask, ids * c_mask, c_mask


def test_shared_prefix_equals_naive_with_item_tokens():
    t = table()
    grads = {}
    for mode in ("shared_prefix", "naive"):
        model = tiny_llama()
        model.requires_grad_(False)
        emb = install_hybrid(model, t, hidden=16, seed=3)
        out = completion_logps(model, *_packed_inputs(t), mode=mode)
        out.logps.sum().backward()
        grads[mode] = (out.logps.detach(), [p.grad.clone() for p in emb.projector.parameters()])
    assert_close(grads["shared_prefix"][0], grads["naive"][0], atol=1e-4, rtol=1e-4)
    for a, b in zip(grads["shared_prefix"][1], grads["naive"][1], strict=False):
        assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert grads["naive"][1][0].abs().sum() > 0  # the projector does learn from the completions


def test_curriculum_strips_item_tokens_of_chosen_rows():
    ids = torch.tensor([[0, 0, 5, -3, 6, -1], [4, -2, 5, 6, -4, 7]])  # (2, 6) left-padded
    mask = (ids != 0).long()
    out = strip_item_tokens(
        {"prompt_input_ids": ids, "prompt_attention_mask": mask, "x": 1}, [True, False]
    )
    assert out["prompt_input_ids"].tolist() == [[0, 0, 0, 0, 5, 6], [4, -2, 5, 6, -4, 7]]
    assert out["prompt_attention_mask"].tolist() == [[0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert out["x"] == 1
    assert curriculum_probability(0, 11, 0.0, 1.0) == 0.0
    assert curriculum_probability(5, 11, 0.0, 1.0) == pytest.approx(0.5)
    assert curriculum_probability(10, 11, 0.0, 1.0) == 1.0
    assert text_form_rows(range(64), 0, 3, 1.0) == [False] * 64
    assert text_form_rows(range(64), 0, 3, 0.0) == [True] * 64
    half = text_form_rows(range(400), 0, 3, 0.5)
    assert 150 < sum(half) < 250 and half == text_form_rows(range(400), 0, 3, 0.5)


def test_trunk_cache_serves_hybrid_prompts_with_a_frozen_projector():
    """The preference stages freeze the projector: the lower layers are then a fixed function
    of the ids, item tokens included, and the trunk cache gives the shared-prefix log-probs."""
    from sdpo_lightning.scoring.trunk_cache import (
        TrunkCache,
        frozen_layer_count,
        lower_layers_identity,
    )
    from tests.unit.test_trunk_cache import top_lora_llama

    model = top_lora_llama()
    emb = install_hybrid(model, table(), hidden=16, seed=3)
    emb.requires_grad_(False)
    prompt, p_mask, ids, c_mask = _packed_inputs(table())
    batch = {
        "prompt_input_ids": prompt,
        "prompt_attention_mask": p_mask,
        "candidate_input_ids": ids,
        "candidate_attention_mask": c_mask,
    }
    assert frozen_layer_count(model) == 2
    want = completion_logps(model, prompt, p_mask, ids, c_mask)
    got = TrunkCache(2).completion_logps(model, batch, ids, c_mask)
    assert_close(got.logps, want.logps, atol=1e-5, rtol=0)
    before = lower_layers_identity(model, 2)
    with torch.no_grad():
        emb.projector[2].bias.add_(1.0)  # another projector: another stored trunk
    assert lower_layers_identity(model, 2) != before
    emb.projector.requires_grad_(True)
    assert frozen_layer_count(model) == 0  # a training projector feeds layer 0


def test_generate_accepts_item_tokens_and_continues_the_prompt():
    """``model.generate`` (the evaluator's reference path) reads hybrid prompts: its greedy
    tokens are the argmax of a plain forward over the prompt and what it generated."""
    model = tiny_llama().eval()
    install_hybrid(model, table(), hidden=16, seed=3)
    prompt = torch.tensor([[5, 9, item_token_id(1), 11, item_token_id(None), 12]])  # (1, 6)
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=3,
        do_sample=False,
        num_beams=1,
        pad_token_id=0,
        eos_token_id=2,
    )
    assert torch.equal(out[:, :6], prompt)
    for t in range(6, out.shape[1]):
        with torch.no_grad():
            want = model(input_ids=out[:, :t]).logits[:, -1].argmax(-1)
        assert torch.equal(out[:, t], want)
