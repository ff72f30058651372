"""One-pass evaluation equals the reference path: ``model.generate`` and a separate ranking pass.

Exactness of the faster (one-pass) evaluation: the shared packed pass gives the same ranking
scores as ``module.score``; greedy decoding from its prompt cache gives ``generate``'s tokens;
the trie walk gives constrained ``generate``'s tokens; the early stop after the first line keeps
every parsed answer.
"""

from __future__ import annotations

import json

import pytest
import torch

from sdpo_lightning.data.collate import make_collate
from sdpo_lightning.data.datamodule import RecDataModule
from sdpo_lightning.evaluation.decoding import (
    first_line_complete,
    greedy_decode,
    prefill,
    trie_verify,
)
from sdpo_lightning.evaluation.evaluator import Evaluator, generate_answers, one_pass_outputs
from sdpo_lightning.evaluation.parsing import parse_answer
from sdpo_lightning.scoring.logps import packed_forward, trim_padding
from sdpo_lightning.training.module import SDPOModule
from sdpo_lightning.training.module_args import EvalArgs, ModelArgs
from tests.conftest import TINY

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(scope="module")
def setup(synthetic_dir, tmp_path_factory):
    """A tiny LoRA policy (seeded non-zero B) and a left-padded test batch of 6 rows."""
    out = tmp_path_factory.mktemp("onepass")
    (out / "test.json").write_text(
        json.dumps(json.loads((synthetic_dir / "test.json").read_text())[:6])
    )
    torch.manual_seed(0)
    source = ModelArgs(tokenizer_path=str(synthetic_dir / "tokenizer"), tiny_config=TINY)
    module = SDPOModule(source=source, lora=LORA, eval=EvalArgs(max_new_tokens=10))
    module.configure_model()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sorted(module.policy.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    module.policy.eval()
    dm = RecDataModule(
        test_file=str(out / "test.json"),
        eval_batch_size=6,
        max_length=256,
        prompt_templates="music",
    )
    dm.tokenizer = module.tokenizer
    dm.setup("test")
    ds = dm.datasets["test"]
    batch = make_collate(module.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    assert len(set(batch["prompt_attention_mask"].sum(-1).tolist())) > 1  # real left padding
    return module, batch


def _reference_tokens(module, batch, constrained: bool) -> list[list[int]]:
    module.hparams.eval.constrained = constrained
    texts = generate_answers(module.eval_model(), batch)
    return [module.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], texts


@pytest.mark.parametrize("protocols", [["ranking"], ["generation", "ranking"]])
def test_ranking_scores_equal_module_score(setup, protocols):
    module, batch = setup
    module.hparams.eval.constrained = False
    _, out = one_pass_outputs(module.eval_model(), batch, "generation" in protocols, True)
    ref = module.score(
        batch, batch["candidate_input_ids"], batch["candidate_attention_mask"], mode="shared_prefix"
    )
    torch.testing.assert_close(out.logps, ref.logps, atol=1e-5, rtol=0)
    assert torch.equal(out.n_tokens, ref.n_tokens)


def test_greedy_decode_equals_generate_tokens(setup):
    """Without the first-line stop: the same tokens as ``generate``, from either cache."""
    module, batch = setup
    tok, model = module.tokenizer, module.policy
    module.hparams.eval.constrained = False
    p_ids, p_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    with torch.no_grad():
        ref = model.generate(
            input_ids=p_ids,
            attention_mask=p_mask,
            max_new_tokens=10,
            do_sample=False,
            num_beams=1,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        first, cache = prefill(
            model, *trim_padding(p_ids, p_mask, p_ids[:, None], p_mask[:, None])[:2]
        )
        trimmed_mask = trim_padding(p_ids, p_mask, p_ids[:, None], p_mask[:, None])[1]
        ours = greedy_decode(
            model, first, cache, trimmed_mask, 10, tok.eos_token_id, tok.pad_token_id
        )
    for row, toks in zip(ref[:, p_ids.shape[1] :].tolist(), ours, strict=False):
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id) + 1]
        assert toks == row


@pytest.mark.parametrize("with_ranking", [False, True])
def test_free_generation_keeps_every_parsed_answer(setup, with_ranking):
    module, batch = setup
    _, ref_texts = _reference_tokens(module, batch, constrained=False)
    texts, _ = one_pass_outputs(module.eval_model(), batch, True, with_ranking)
    for ours, ref, cands in zip(texts, ref_texts, batch["candidates"], strict=False):
        assert ref.startswith(ours)  # stopped early, never different
        assert parse_answer(ours, cands) == parse_answer(ref, cands)


def test_trie_verify_follows_the_free_argmax_on_the_trie():
    """Hand-written logits, one per completion slot (``src`` = slot index), EOS = 5.

    Row 0, candidates [1, 2, EOS] and [1, 3, EOS]: the free argmax is 1 after the prompt, 3
    after [1] (candidate 1 continues with it), EOS after [1, 3] → [1, 3, 5]. Row 1, candidates
    [2, 4, EOS] and [3, 4, EOS]: the free argmax after the prompt is 0, which no candidate
    continues with → None (decode it). A tie picks the lowest id, as decoding's argmax."""
    B, N, C, V = 2, 2, 3, 6
    c_ids = torch.tensor([[[1, 2, 5], [1, 3, 5]], [[2, 4, 5], [3, 4, 5]]])
    c_mask = torch.ones_like(c_ids)
    logits = torch.zeros(B, N * C, V)
    logits[0, 0, 1] = 2.0  # slot (n=0, j=0): after the prompt
    logits[0, 1, [2, 3]] = torch.tensor([1.0, 3.0])  # slot (0, 1): after [1], shared by both
    logits[0, 5, 5] = 1.0  # slot (1, 2): after [1, 3]
    logits[1, 0, 0] = 9.0  # the argmax leaves the trie
    src = torch.arange(N * C).expand(B, -1)
    assert trie_verify(logits, src, c_ids, c_mask, 10, 5) == [[1, 3, 5], None]
    assert trie_verify(logits, src, c_ids, c_mask, 2, 5)[0] == [1, 3]  # max_new_tokens reached
    logits[0, 1, 2] = 3.0  # a tie between 2 and 3: the lowest id, then candidate 0's EOS slot
    logits[0, 2, 5] = 1.0
    assert trie_verify(logits, src, c_ids, c_mask, 10, 5)[0] == [1, 2, 5]


def test_free_generation_read_from_the_packed_pass_equals_generate(setup):
    """Candidate 0 of each row replaced by the row's own greedy answer (+ EOS when it ends
    before max_new_tokens): every row is then read from the packed pass, with generate's text."""
    module, batch = setup
    ref_tokens, ref_texts = _reference_tokens(module, batch, constrained=False)
    eos, pad = module.tokenizer.eos_token_id, module.tokenizer.pad_token_id
    with torch.no_grad():
        p_ids, p_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        first, cache = prefill(module.policy, p_ids, p_mask)
        greedy = greedy_decode(
            module.policy, first, cache, p_mask, 10, eos, pad
        )  # no first-line stop
    ids, mask = batch["candidate_input_ids"].clone(), batch["candidate_attention_mask"].clone()
    C = max(ids.shape[-1], max(len(t) + 1 for t in greedy))
    ids = torch.nn.functional.pad(ids, (0, C - ids.shape[-1]), value=pad)
    mask = torch.nn.functional.pad(mask, (0, C - mask.shape[-1]), value=0)
    for b, toks in enumerate(greedy):
        own = toks if toks[-1] == eos else toks + [eos]
        ids[b, 0], mask[b, 0] = pad, 0
        ids[b, 0, : len(own)], mask[b, 0, : len(own)] = torch.tensor(own), 1
    rigged = {**batch, "candidate_input_ids": ids, "candidate_attention_mask": mask}
    module.hparams.eval.constrained = False
    with torch.no_grad():
        packed = packed_forward(module.policy, p_ids, p_mask, ids, mask)
    assert all(t is not None for t in trie_verify(packed.logits, packed.src, ids, mask, 10, eos))
    texts, _ = one_pass_outputs(module.eval_model(), rigged, True, True)
    for ours, ref in zip(texts, ref_texts, strict=False):
        assert ref.startswith(ours) and ours.strip()  # the first-line stop may end it earlier
    assert (
        texts == one_pass_outputs(module.eval_model(), batch, True, True)[0]
    )  # = the decoded answers


def test_constrained_trie_walk_equals_constrained_generate(setup):
    module, batch = setup
    _, ref_texts = _reference_tokens(module, batch, constrained=True)
    module.hparams.eval.constrained = True
    texts, scores = one_pass_outputs(
        module.eval_model(), batch, True, True
    )  # with ranking: the trie walk
    assert scores is not None and texts == ref_texts
    assert all(
        parse_answer(t, c).valid
        for t, c in zip(texts, batch["candidates"], strict=False)
        if t.strip()
    )


@pytest.mark.parametrize("constrained", [False, True])
def test_evaluator_records_match_the_reference_path(setup, constrained):
    module, batch = setup
    module.hparams.eval.constrained = constrained
    new = Evaluator("test", ["generation", "ranking"]).update(module.eval_model(), batch)
    old = Evaluator("test", ["generation", "ranking"], one_pass=False).update(
        module.eval_model(), batch
    )
    for a, b in zip(new, old, strict=False):
        assert {k: a[k] for k in ("parsed", "valid", "correct", "target_rank", "top_item")} == {
            k: b[k] for k in ("parsed", "valid", "correct", "target_rank", "top_item")
        }
        assert a["scores"] == pytest.approx(b["scores"], abs=2e-4)


def test_first_line_complete():
    assert not first_line_complete("")
    assert not first_line_complete("\n \n")  # blank lines only: the answer has not started
    assert not first_line_complete(" Iron Drum")  # the line may still grow
    assert first_line_complete(" Iron Drum\n")
    assert first_line_complete("\n Iron Drum\r")
    assert first_line_complete("\nIron\nDrum")


def test_constrained_kv_decode_equals_constrained_generate(setup):
    """Generation alone, constrained: prefill + one trie mask tensor per step."""
    module, batch = setup
    _, ref_texts = _reference_tokens(module, batch, constrained=True)
    module.hparams.eval.constrained = True
    texts, scores = one_pass_outputs(module.eval_model(), batch, True, False)
    assert scores is None
    assert texts == ref_texts


def test_allowed_token_mask_matches_the_prefix_fn():
    from sdpo_lightning.evaluation.constrained import CandidateTrie, allowed_token_mask

    tries = [CandidateTrie([[5, 6, 1], [5, 7, 1]]), CandidateTrie([[8, 1]])]
    mask = allowed_token_mask(tries, [[5], [8, 1]], vocab_size=10, fallback_token_id=0)
    assert mask.shape == (2, 10)
    assert mask[0].nonzero().flatten().tolist() == [6, 7]
    assert mask[1].nonzero().flatten().tolist() == [0]  # finished: the fallback only
