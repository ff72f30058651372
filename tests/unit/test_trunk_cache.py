"""The frozen-trunk cache must give the shared-prefix log-probs and LoRA gradients exactly.

A 3-layer tiny LLaMA with LoRA on its top layer only (layers 0-1 frozen): the trunk cache
serves layers 0-1 from activations computed once per example on its all-candidates packed
row, and runs only layer 2 for any subset of completions. Compared with
``completion_logps(..., mode="shared_prefix")`` on the same model, fp32, atol 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from sdpo_lightning.scoring.logps import completion_logps
from sdpo_lightning.scoring.trunk_cache import TrunkCache, frozen_layer_count
from tests.unit.test_scoring import make_batch

ATOL = 1e-5


def top_lora_llama(layers: int = 3, top: list[int] | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "v_proj", "up_proj"],
        layers_to_transform=top or [layers - 1],
    )
    return get_peft_model(LlamaForCausalLM(config), cfg).train()


def batch_of(B: int = 3, M: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    p_ids, p_mask, c_ids, c_mask = make_batch(B, M, seed=seed, empty_row=False)
    return {
        "prompt_input_ids": p_ids,
        "prompt_attention_mask": p_mask,
        "candidate_input_ids": c_ids,
        "candidate_attention_mask": c_mask,
    }


def test_frozen_layer_count_is_the_lowest_adapted_layer() -> None:
    assert frozen_layer_count(top_lora_llama(3)) == 2
    assert frozen_layer_count(top_lora_llama(4, top=[1, 3])) == 1


def test_all_candidates_equal_shared_prefix_and_fill_once() -> None:
    model, batch = top_lora_llama(), batch_of()
    ids, mask = batch["candidate_input_ids"], batch["candidate_attention_mask"]
    cache = TrunkCache(frozen_layer_count(model))
    want = completion_logps(
        model, batch["prompt_input_ids"], batch["prompt_attention_mask"], ids, mask
    )
    got = cache.completion_logps(model, batch, ids, mask)
    assert_close(got.logps, want.logps, atol=ATOL, rtol=0)
    assert torch.equal(got.n_tokens, want.n_tokens)
    again = cache.completion_logps(model, batch, ids, mask)
    assert cache.builds == 3 and len(cache) == 3  # the second call computed no trunk
    assert_close(again.logps, got.logps, atol=0, rtol=0)


def test_subsets_and_order_of_completions_and_gradients_match() -> None:
    """Completions = candidates (2, 0, 4) of every example (a K=2 preference batch): the
    packed row holds other tokens than the cached all-candidates row, yet log-probs and the
    LoRA gradients equal a direct shared-prefix pass."""
    model, batch = top_lora_llama(), batch_of(seed=1)
    pick = torch.tensor([2, 0, 4])
    ids = batch["candidate_input_ids"][:, pick]
    mask = batch["candidate_attention_mask"][:, pick]
    cache = TrunkCache(frozen_layer_count(model))
    cache.completion_logps(
        model, batch, batch["candidate_input_ids"], batch["candidate_attention_mask"]
    )

    params = [p for p in model.parameters() if p.requires_grad]
    want = completion_logps(
        model, batch["prompt_input_ids"], batch["prompt_attention_mask"], ids, mask
    )
    grads_want = torch.autograd.grad((want.logps * torch.tensor([1.0, -0.5, 0.25])).sum(), params)
    got = cache.completion_logps(model, batch, ids, mask)
    grads_got = torch.autograd.grad((got.logps * torch.tensor([1.0, -0.5, 0.25])).sum(), params)
    assert_close(got.logps, want.logps, atol=ATOL, rtol=0)
    for g_got, g_want in zip(grads_got, grads_want, strict=False):
        assert_close(g_got, g_want, atol=ATOL, rtol=1e-4)
    assert cache.builds == 3  # served from the store


def test_completion_not_among_candidates_is_an_error() -> None:
    model, batch = top_lora_llama(), batch_of()
    ids = batch["candidate_input_ids"][:, :1].clone()
    ids[0, 0, 0] = 99 if ids[0, 0, 0] != 99 else 98
    with pytest.raises(KeyError, match="not among"):
        TrunkCache(2).completion_logps(model, batch, ids, batch["candidate_attention_mask"][:, :1])
