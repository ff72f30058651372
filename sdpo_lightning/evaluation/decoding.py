"""Greedy decoding for evaluation: a KV-cache loop that stops early, and a trie walk.

Both give the tokens ``model.generate(do_sample=False, num_beams=1)`` gives (up to float
rounding of the logits), without its per-step machinery:

* :func:`greedy_decode` continues from a prompt KV cache (a plain prefill, or the first ``P``
  positions of the ranking protocol's packed pass, which are the same computation). A row is
  done at EOS, after ``max_new_tokens``, or — with ``stop_after_first_line`` — once its text
  holds a finished non-blank line: the parser reads only the first non-blank line
  (:func:`~sdpo_lightning.evaluation.parsing.answer_scope`), so later tokens can never change
  the parsed answer. The loop stops when every row is done.
* With ``allowed``, :func:`greedy_decode` is constrained decoding with one mask tensor per
  step built from the candidate tries (generation without ranking).
* :func:`trie_greedy` is constrained greedy decoding over the candidate titles with **no
  decoding steps at all**: the packed ranking pass already holds the logits after the prompt
  and after every prefix of every candidate (same tokens, same positions as generation), so
  the greedy path through the candidate trie is a walk over those logits.
* :func:`trie_verify` is free (unconstrained) greedy decoding read from the same logits for
  every row whose greedy answer is one of its candidates: it follows the full-vocabulary argmax
  while that stays on the trie; a row whose argmax leaves it is returned as ``None`` and decoded
  by :func:`greedy_decode` (exact either way: the walk only accepts what decoding would emit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["first_line_complete", "greedy_decode", "prefill", "trie_greedy", "trie_verify"]


def first_line_complete(text: str) -> bool:
    """True once ``text`` has a non-blank line followed by a line break (the parsed scope)."""
    for line in text.splitlines(keepends=True):
        if line.strip():
            return line.splitlines()[0] != line  # it ends with a line boundary
    return False


def prefill(model: nn.Module, p_ids: Tensor, p_mask: Tensor) -> tuple[Tensor, Any]:
    """Causal prefill of left-padded prompts → (last-position logits (B, V), KV cache)."""
    position_ids = (p_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P)
    out = model(
        input_ids=p_ids,
        attention_mask=p_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1], out.past_key_values


def greedy_decode(
    model: nn.Module,
    first_logits: Tensor,
    cache: Any,
    p_mask: Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    decode: Callable[[list[int]], str] | None = None,
    allowed: Callable[[list[list[int]], int], Tensor] | None = None,
) -> list[list[int]]:
    """Greedy tokens per row (EOS included when generated, no padding).

    Args:
        model: the causal LM whose cache ``cache`` is (``P`` prompt positions).
        first_logits: ``(B, V)`` logits at the last prompt position.
        cache: KV cache of the left-padded prompts (``p_mask``'s ``P`` columns), extended in place.
        p_mask: ``(B, P)`` prompt attention mask.
        max_new_tokens: most tokens per row.
        eos_token_id: ends a row (``generate``'s ``eos_token_id``).
        pad_token_id: fed for finished rows (never attended by other rows).
        decode: token ids → text; if given, a row also ends once its first non-blank line is
            complete (:func:`first_line_complete`).
        allowed: constrained decoding: ``allowed(tokens_so_far, vocab_size)`` → ``(B, V)`` bool
            mask of the tokens each row may emit next
            (:func:`~sdpo_lightning.evaluation.constrained.allowed_token_mask`); the others get ``-inf``.
    """
    B = p_mask.shape[0]
    n_prompt = p_mask.long().sum(-1)  # (B,)
    mask = p_mask.long()
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B

    def pick(logits: Tensor) -> Tensor:
        logits = logits.float()
        if allowed is not None:
            logits = logits.masked_fill(~allowed(out, logits.shape[-1]), float("-inf"))
        return logits.argmax(-1)  # (B,)

    nxt = pick(first_logits)
    for step in range(max_new_tokens):
        toks = nxt.tolist()
        for b in range(B):
            if done[b]:
                toks[b] = pad_token_id
                continue
            out[b].append(toks[b])
            if toks[b] == eos_token_id or (
                decode is not None and first_line_complete(decode(out[b]))
            ):
                done[b] = True
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)  # (B, P + step + 1)
        logits = model(
            input_ids=torch.tensor(toks, device=p_mask.device)[:, None],
            attention_mask=mask,
            position_ids=(n_prompt + step)[:, None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]  # (B, V)
        nxt = pick(logits)
    return out


def _trie_walk(
    logits: Tensor,
    src: Tensor,
    c_ids: Tensor,
    c_mask: Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pick: Callable[[Tensor | None, list[int]], int | None],
    line_done: Callable[[list[int]], bool] | None = None,
) -> list[list[int] | None]:
    """Walk each row's candidate trie over packed-pass logits.

    At step ``j`` ``pick(row, allowed)`` gets the ``(V,)`` logits after the prefix so far (the
    shared prefix of the candidates still alive; ``None`` when none continues) and the sorted
    trie children ``allowed``, and returns the next token, or ``None`` to give the row up (it
    becomes ``None``). A row ends at EOS, when ``line_done(tokens)``, or after ``max_new_tokens``.
    """
    B, N, C = c_ids.shape
    lengths = c_mask.long().sum(-1).tolist()  # (B, N)
    ids = c_ids.tolist()
    src_l = src.tolist()
    out: list[list[int] | None] = []
    for b in range(B):
        alive = [n for n in range(N) if lengths[b][n] > 0]
        toks: list[int] | None = []
        for j in range(max_new_tokens):
            ext = [n for n in alive if lengths[b][n] > j]
            allowed = sorted({ids[b][n][j] for n in ext})
            tok = pick(logits[b, src_l[b][ext[0] * C + j]] if ext else None, allowed)
            if tok is None:
                toks = None
                break
            toks.append(tok)
            if tok == eos_token_id or (line_done is not None and line_done(toks)):
                break
            alive = [n for n in ext if ids[b][n][j] == tok]
        out.append(toks)
    return out


def trie_greedy(
    logits: Tensor,
    src: Tensor,
    c_ids: Tensor,
    c_mask: Tensor,
    max_new_tokens: int,
    eos_token_id: int,
) -> list[list[int]]:
    """Constrained greedy decoding over the candidate trie from packed-pass logits.

    Args:
        logits: ``(B, T, V)`` packed logits (:class:`~sdpo_lightning.scoring.PackedForward`).
        src: ``(B, N*C)`` kept-logit index predicting each completion slot.
        c_ids: ``(B, N, C)`` candidate completion ids (title + EOS), right-padded.
        c_mask: ``(B, N, C)``.
        max_new_tokens: most tokens per row.
        eos_token_id: emitted when a candidate is complete (the fallback of
            :func:`~sdpo_lightning.evaluation.constrained.prefix_allowed_tokens_fn`); ends the row.

    At each step the allowed tokens are the trie children of the prefix so far; the choice is
    their highest logit, ties to the lowest token id (``argmax`` over the masked vocabulary).
    """

    def pick(row: Tensor | None, allowed: list[int]) -> int:
        if not allowed:  # a candidate is complete (or none left): generate's fallback
            return eos_token_id
        return allowed[int(row[allowed].float().argmax())]  # first maximum: the lowest id

    return _trie_walk(logits, src, c_ids, c_mask, max_new_tokens, eos_token_id, pick)  # type: ignore[return-value]


def trie_verify(
    logits: Tensor,
    src: Tensor,
    c_ids: Tensor,
    c_mask: Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    decode: Callable[[list[int]], str] | None = None,
) -> list[list[int] | None]:
    """Free greedy decoding from packed-pass logits, for the rows that stay on the candidate trie.

    Args: as :func:`trie_greedy`, plus ``decode`` (token ids → text): with it a row also ends
    once its first non-blank line is complete, as in :func:`greedy_decode`.

    Returns, per row, the tokens :func:`greedy_decode` would give, or ``None`` where they are not
    in the logits. At step ``j`` the next token is the argmax over the **whole** vocabulary
    (ties to the lowest id, as decoding) of the logits after the prefix so far; it is accepted
    while some candidate continues with it (the logits of its next prefix are then in the
    packed pass), the row ending at EOS (every candidate completion ends with it), at a
    complete first line, or after ``max_new_tokens``. The first token no candidate continues
    with makes the row ``None``: its greedy answer leaves the candidate titles.
    """

    def pick(row: Tensor | None, allowed: list[int]) -> int | None:
        tok = int(row.float().argmax()) if row is not None else None
        return tok if tok in allowed else None  # None: greedy leaves the trie here

    line_done = (lambda t: first_line_complete(decode(t))) if decode is not None else None  # noqa: E731
    return _trie_walk(logits, src, c_ids, c_mask, max_new_tokens, eos_token_id, pick, line_done)
