"""Tests for sdpo_lightning.scoring.logps: shared-prefix scoring must equal the naive baseline.

The tiny LLaMA (2 layers, hidden 64, vocab 100, GQA) is built in code from a fixed seed.
Log-probs and parameter gradients are compared in fp32 with atol 1e-4.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sdpo_lightning.scoring.logps import (
    CompletionLogps,
    completion_logps,
    gather_completion_token_logps,
)

ATOL = 1e-4
VOCAB, PAD, EOS = 100, 0, 2
SHARED = Path(__file__).resolve().parents[3] / "shared"
GGUF_DIR, GGUF_FILE = SHARED / "models", "SmolLM2-135M-Instruct.Q4_1.gguf"


def enable_checkpointing(model, use_reentrant: bool = False) -> None:
    kwargs = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def tiny_llama(seed: int = 0, lora: bool = False, checkpointing: bool = False, **config_kwargs):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=EOS,
        **config_kwargs,
    )
    model = LlamaForCausalLM(config)
    if checkpointing:
        enable_checkpointing(model)
    if lora:
        from peft import LoraConfig, get_peft_model

        # init_lora_weights=False: non-zero lora_B, so lora_A gets a non-trivial gradient too.
        cfg = LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, cfg)
    return model.train()


def make_batch(B: int, N: int, P: int = 14, C: int = 6, seed: int = 0, empty_row: bool = True):
    """Left-padded prompts of uneven lengths, right-padded completions of uneven lengths."""
    g = torch.Generator().manual_seed(seed)
    p_len = torch.randint(3, P + 1, (B,), generator=g)
    p_len[0] = P
    p_mask = (torch.arange(P) >= P - p_len[:, None]).long()  # (B, P)
    p_ids = torch.randint(3, VOCAB, (B, P), generator=g).masked_fill(p_mask == 0, PAD)
    c_len = torch.randint(1, C + 1, (B, N), generator=g)
    c_len[0, 0] = C
    if empty_row and N > 1:
        c_len[-1, -1] = 0
    c_mask = (torch.arange(C) < c_len[..., None]).long()  # (B, N, C)
    c_ids = torch.randint(3, VOCAB, (B, N, C), generator=g)
    is_last = torch.arange(C) == (c_len[..., None] - 1)  # (B, N, C)
    c_ids = torch.where(is_last, EOS, c_ids)  # every title ends with EOS
    c_ids = c_ids.masked_fill(c_mask == 0, PAD)
    return p_ids, p_mask, c_ids, c_mask


def reference_logps(model, p_ids, p_mask, c_ids, c_mask) -> torch.Tensor:
    """One unpadded sequence at a time, default positions, no attention mask."""
    B, N, _ = c_ids.shape
    rows = []
    for b in range(B):
        prompt = p_ids[b][p_mask[b].bool()]
        row = []
        for n in range(N):
            comp = c_ids[b, n][c_mask[b, n].bool()]
            if len(comp) == 0:
                row.append(torch.zeros((), requires_grad=False))
                continue
            logits = model(input_ids=torch.cat([prompt, comp])[None], use_cache=False).logits[0]
            lp = logits[len(prompt) - 1 : -1].float().log_softmax(-1)  # (len(comp), V)
            row.append(lp.gather(-1, comp[:, None]).sum())
        rows.append(torch.stack(row))
    return torch.stack(rows)  # (B, N)


def logps_and_grads(model, fn, weights):
    """Run fn(model) -> (B, N) logps, backprop a weighted sum, return logps and parameter grads."""
    model.zero_grad(set_to_none=True)
    logps = fn(model)
    (logps * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logps.detach(), grads


def assert_grads_close(ga: dict, gb: dict, atol: float = ATOL) -> None:
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        torch.testing.assert_close(
            ga[name], gb[name], atol=atol, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )


def by(mode: str, batch, **kwargs):
    """A scoring function of the model, for logps_and_grads."""
    return lambda model: completion_logps(model, *batch, mode=mode, **kwargs).logps


@pytest.mark.parametrize("N", [2, 4, 9, 20])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["nogc", "gc"])
def test_shared_prefix_equals_naive_logps_and_grads(N, lora, checkpointing):
    model = tiny_llama(lora=lora, checkpointing=checkpointing)
    batch = make_batch(B=3, N=N, seed=N)
    weights = torch.randn(3, N, generator=torch.Generator().manual_seed(1))
    naive, g_naive = logps_and_grads(model, by("naive", batch), weights)
    shared, g_shared = logps_and_grads(model, by("shared_prefix", batch), weights)
    torch.testing.assert_close(shared, naive, atol=ATOL, rtol=0)
    assert_grads_close(g_shared, g_naive)
    if lora:  # only adapter weights train; the base model is frozen
        assert all("lora_" in name for name in g_shared)
    dense = {k: g for k, g in g_shared.items() if "embed" not in k and "lm_head" not in k}
    assert all(g.abs().sum() > 0 for g in dense.values())  # gradients really flow everywhere


@pytest.mark.parametrize("N", [2, 9])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_both_modes_equal_unpadded_reference(N, lora):
    model = tiny_llama(seed=3, lora=lora)
    batch = make_batch(B=2, N=N, seed=10 + N)
    weights = torch.randn(2, N, generator=torch.Generator().manual_seed(2))
    ref, g_ref = logps_and_grads(model, lambda m: reference_logps(m, *batch), weights)
    for mode in ("naive", "shared_prefix"):
        out, g_out = logps_and_grads(model, by(mode, batch), weights)
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
        assert_grads_close(g_out, g_ref)
    assert ref[-1, -1] == 0  # the empty completion row


def test_extra_padding_does_not_change_scores():
    model = tiny_llama().eval()
    p_ids, p_mask, c_ids, c_mask = make_batch(B=2, N=4, seed=5)
    pad_p = torch.zeros(2, 5, dtype=torch.long)
    pad_c = torch.zeros(2, 4, 3, dtype=torch.long)
    wider = (
        torch.cat([pad_p, p_ids], 1),
        torch.cat([pad_p, p_mask], 1),
        torch.cat([c_ids, pad_c], 2),
        torch.cat([c_mask, pad_c], 2),
    )
    for mode in ("naive", "shared_prefix"):
        with torch.no_grad():
            a = completion_logps(model, p_ids, p_mask, c_ids, c_mask, mode=mode)
            b = completion_logps(model, *wider, mode=mode)
        torch.testing.assert_close(a.logps, b.logps, atol=ATOL, rtol=0)
        assert torch.equal(a.n_tokens, b.n_tokens)


def test_eager_attention_and_reentrant_checkpointing_with_lora():
    model = tiny_llama(lora=True, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    enable_checkpointing(model.base_model.model, use_reentrant=True)
    model.enable_input_require_grads()  # reentrant checkpointing + frozen embeddings need this
    batch = make_batch(B=2, N=5, seed=7)
    weights = torch.randn(2, 5)
    naive, g_naive = logps_and_grads(model, by("naive", batch), weights)
    shared, g_shared = logps_and_grads(model, by("shared_prefix", batch), weights)
    torch.testing.assert_close(shared, naive, atol=ATOL, rtol=0)
    assert_grads_close(g_shared, g_naive)


@pytest.mark.parametrize("mode", ["naive", "shared_prefix"])
@pytest.mark.parametrize("chunk", [1, 3])
def test_chunking_over_completions_is_exact(mode, chunk):
    model = tiny_llama(lora=True)
    batch = make_batch(B=2, N=7, seed=11)
    weights = torch.randn(2, 7)
    full, g_full = logps_and_grads(model, by(mode, batch), weights)
    chunked, g_chunked = logps_and_grads(
        model, by(mode, batch, max_completions_per_forward=chunk), weights
    )
    torch.testing.assert_close(chunked, full, atol=ATOL, rtol=0)
    assert_grads_close(g_chunked, g_full)


def test_shared_prefix_packs_only_real_completion_tokens():
    """Ragged packing: each row is [prompt, real completion tokens]; rows are padded as a whole."""
    model = tiny_llama(lora=True)
    p_ids, p_mask, c_ids, c_mask = make_batch(B=3, N=6, seed=12)
    c_mask[1] = 0  # example 1: only one short completion, so its row is much shorter
    c_mask[1, 2, :2] = 1
    c_ids = c_ids.masked_fill(c_mask == 0, PAD)
    batch = (p_ids, p_mask, c_ids, c_mask)
    seen = []
    hook = model.get_base_model().model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        weights = torch.randn(3, 6)
        shared, g_shared = logps_and_grads(model, by("shared_prefix", batch), weights)
    finally:
        hook.remove()
    P = int(p_mask.sum(-1).max())  # the first prompt has no padding (make_batch)
    assert seen == [torch.Size([3, P + int(c_mask.sum((1, 2)).max())])]
    naive, g_naive = logps_and_grads(model, by("naive", batch), weights)
    torch.testing.assert_close(shared, naive, atol=ATOL, rtol=0)
    assert_grads_close(g_shared, g_naive)


def test_chunk_of_only_empty_completions():
    model = tiny_llama(lora=True)
    p_ids, p_mask, c_ids, c_mask = make_batch(B=2, N=4, seed=13)
    c_mask[:, 2:] = 0  # the second chunk of 2 has no real token at all
    c_ids = c_ids.masked_fill(c_mask == 0, PAD)
    batch = (p_ids, p_mask, c_ids, c_mask)
    weights = torch.randn(2, 4)
    naive, g_naive = logps_and_grads(model, by("naive", batch), weights)
    shared, g_shared = logps_and_grads(
        model, by("shared_prefix", batch, max_completions_per_forward=2), weights
    )
    torch.testing.assert_close(shared, naive, atol=ATOL, rtol=0)
    assert_grads_close(g_shared, g_naive)
    assert torch.equal(shared[:, 2:], torch.zeros(2, 2))


def test_output_types_counts_and_empty_rows():
    model = tiny_llama().eval()
    p_ids, p_mask, c_ids, c_mask = make_batch(B=2, N=3, seed=4)
    with torch.no_grad():
        out = completion_logps(model, p_ids, p_mask, c_ids, c_mask)
    assert isinstance(out, CompletionLogps)
    assert out.logps.dtype == torch.float32 and out.n_tokens.dtype == torch.long
    assert out.logps.shape == out.n_tokens.shape == (2, 3)
    assert torch.equal(out.n_tokens, c_mask.sum(-1))
    assert out.logps[-1, -1] == 0 and out.n_tokens[-1, -1] == 0
    assert (out.logps[out.n_tokens > 0] < 0).all()
    empty = completion_logps(model, p_ids, p_mask, c_ids, torch.zeros_like(c_mask))
    assert torch.equal(empty.logps, torch.zeros(2, 3))
    assert torch.equal(empty.n_tokens, torch.zeros(2, 3, dtype=torch.long))


def test_bf16_model_gives_float32_logps():
    model = tiny_llama().eval()
    batch = make_batch(B=2, N=4, seed=6)
    with torch.no_grad():
        ref = completion_logps(model, *batch).logps
        model.to(torch.bfloat16)
        naive = completion_logps(model, *batch, mode="naive").logps
        shared = completion_logps(model, *batch).logps
    assert shared.dtype == naive.dtype == torch.float32
    torch.testing.assert_close(shared, naive, atol=0.1, rtol=0.02)
    torch.testing.assert_close(shared, ref, atol=0.2, rtol=0.05)


def test_gather_completion_token_logps_matches_log_softmax():
    logits = torch.randn(2, 3, 11, dtype=torch.bfloat16)
    targets = torch.randint(0, 11, (2, 3))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = gather_completion_token_logps(logits, targets, mask)
    expected = logits.float().log_softmax(-1).gather(-1, targets[..., None])[..., 0] * mask
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_input_validation():
    model = tiny_llama().eval()
    p_ids, p_mask, c_ids, c_mask = make_batch(B=2, N=3, seed=8)
    with pytest.raises(ValueError, match="unknown scoring mode"):
        completion_logps(model, p_ids, p_mask, c_ids, c_mask, mode="kv")
    with pytest.raises(ValueError, match="LEFT-padded"):
        completion_logps(model, p_ids, p_mask.flip(-1), c_ids, c_mask)
    with pytest.raises(ValueError, match="RIGHT-padded"):
        completion_logps(model, p_ids, p_mask, c_ids, c_mask.flip(-1))
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        completion_logps(model, p_ids, p_mask, c_ids[0], c_mask[0])
    with pytest.raises(ValueError, match="max_completions_per_forward"):
        completion_logps(model, p_ids, p_mask, c_ids, c_mask, max_completions_per_forward=0)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation"):
        completion_logps(model, p_ids, p_mask, c_ids, c_mask)


# ---------------------------------------------------------------- real model (slow)


@pytest.fixture(scope="module")
def smollm():
    if not (GGUF_DIR / GGUF_FILE).is_file():
        print(f"skipping: {GGUF_DIR / GGUF_FILE} not found")
        pytest.skip(f"{GGUF_DIR / GGUF_FILE} not found")
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE, dtype=torch.float32)
    return tok, model


def _lastfm_batch(tok, B: int, N: int):
    rows = json.loads((SHARED / "data" / "lastfm" / "valid.json").read_text())[:B]
    prompts, completions = [], []
    for r in rows:
        hist = r["historyList"]
        history = ", ".join(hist.split("::") if isinstance(hist, str) else hist)
        target = r["trueSelection"]
        cands = [target] + [c for c in r["itemList"] if c != target][: N - 1]
        prompts.append(
            tok(
                f"This user has listened to {history}. From {', '.join(r['itemList'])}, "
                "the user will listen to next:",
                add_special_tokens=False,
            )["input_ids"]
        )
        eos = [tok.eos_token_id]
        completions.append(
            [tok(" " + c, add_special_tokens=False)["input_ids"] + eos for c in cands]
        )
    P, C = max(map(len, prompts)), max(len(c) for cs in completions for c in cs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    p_ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompts])
    p_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    c_ids = torch.tensor([[c + [pad] * (C - len(c)) for c in cs] for cs in completions])
    c_mask = torch.tensor([[[1] * len(c) + [0] * (C - len(c)) for c in cs] for cs in completions])
    return p_ids, p_mask, c_ids, c_mask


@pytest.mark.slow
def test_smollm_gguf_shared_prefix_equals_naive(smollm):
    tok, model = smollm
    batch = _lastfm_batch(tok, B=2, N=20)
    assert batch[0].shape[1] > 80  # a realistically long prompt (history + 20 candidates)
    model.eval()
    timings = {}
    with torch.no_grad():
        for mode in ("naive", "shared_prefix"):
            t0 = time.perf_counter()
            timings[mode] = (completion_logps(model, *batch, mode=mode), time.perf_counter() - t0)
    naive, shared = timings["naive"][0], timings["shared_prefix"][0]
    print(
        f"SmolLM2 B=2 N=20 P={batch[0].shape[1]}: naive {timings['naive'][1]:.2f}s, "
        f"shared_prefix {timings['shared_prefix'][1]:.2f}s"
    )
    torch.testing.assert_close(shared.logps, naive.logps, atol=ATOL, rtol=0)
    assert torch.equal(shared.n_tokens, naive.n_tokens)
    assert bool((naive.logps < 0).all())


@pytest.mark.slow
def test_smollm_gguf_lora_gradients_match(smollm):
    from peft import LoraConfig, get_peft_model

    tok, base = smollm
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, cfg).train()
    enable_checkpointing(model.base_model.model)
    try:
        batch = _lastfm_batch(tok, B=1, N=4)
        weights = torch.tensor([[1.0, -0.5, -0.3, -0.2]])
        naive, g_naive = logps_and_grads(model, by("naive", batch), weights)
        shared, g_shared = logps_and_grads(model, by("shared_prefix", batch), weights)
        torch.testing.assert_close(shared, naive, atol=ATOL, rtol=0)
        assert_grads_close(g_shared, g_naive, atol=1e-3)
    finally:
        inner = model.base_model.model
        getattr(inner, "activation_checkpointing_disable", inner.gradient_checkpointing_disable)()
        model.unload()  # restore the shared fixture's plain model
