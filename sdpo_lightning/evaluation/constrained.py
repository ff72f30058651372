"""Constrained decoding: generation restricted to the candidate titles through a prefix trie.

Each example's candidate completions (prefix + title + EOS token ids) form a trie; at each
step only the tokens that continue some candidate are allowed, so the greedy answer is
always exactly one candidate (or the longest one possible within ``max_new_tokens``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class CandidateTrie:
    """A prefix trie over token id sequences."""

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        self.root: dict[int, dict] = {}
        for seq in sequences:
            node = self.root
            for tok in seq:
                node = node.setdefault(int(tok), {})

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that may follow ``prefix`` (empty when ``prefix`` left the trie or ended)."""
        node = self.root
        for tok in prefix:
            node = node.get(int(tok))
            if node is None:
                return []
        return sorted(node)


def allowed_token_mask(
    tries: Sequence[CandidateTrie],
    prefixes: Sequence[Sequence[int]],
    vocab_size: int,
    fallback_token_id: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One ``(B, V)`` bool tensor per decoding step: the tokens each row may emit next.

    Row b may continue ``prefixes[b]`` (its generated tokens) along ``tries[b]``; a finished or
    stray prefix allows only ``fallback_token_id`` — the rule of :func:`prefix_allowed_tokens_fn`.
    """
    rows: list[int] = []
    cols: list[int] = []
    for b, (trie, prefix) in enumerate(zip(tries, prefixes, strict=False)):
        allowed = trie.allowed(prefix) or [fallback_token_id]
        rows.extend([b] * len(allowed))
        cols.extend(allowed)
    mask = torch.zeros((len(tries), vocab_size), dtype=torch.bool)
    mask[rows, cols] = True
    return mask.to(device)


def candidate_sequences(ids: torch.Tensor, mask: torch.Tensor) -> list[list[list[int]]]:
    """Unpad (B, M, C) candidate completions into nested lists of token ids."""
    out = []
    for b in range(ids.shape[0]):
        rows = []
        for m in range(ids.shape[1]):
            n = int(mask[b, m].sum())
            if n:
                rows.append(ids[b, m, :n].tolist())
        out.append(rows)
    return out


def prefix_allowed_tokens_fn(
    candidates: list[list[list[int]]], prompt_length: int, fallback_token_id: int
) -> Callable[[int, torch.Tensor], list[int]]:
    """A ``generate(prefix_allowed_tokens_fn=...)`` callback for a batch.

    Args:
        candidates: per example, the token ids of each candidate completion.
        prompt_length: padded prompt length (generated tokens start after it).
        fallback_token_id: allowed once a candidate is complete (EOS / pad).
    """
    tries = [CandidateTrie(c) for c in candidates]

    def fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        allowed = tries[batch_id].allowed(input_ids[prompt_length:].tolist())
        return allowed or [fallback_token_id]

    return fn
