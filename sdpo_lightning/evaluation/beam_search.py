"""Constrained beam search over a trie of every catalogue title (the all-item protocol).

Every catalogue item is one token sequence, its completion ``completion_prefix + title`` then
EOS, tokenized exactly as training and scoring tokenize it
(:meth:`~sdpo_lightning.data.prompts.PromptBuilder.encode`). The sequences form a prefix trie
(:class:`CatalogueTrie`); because each ends with EOS, a title that is a prefix of another
(``"Heat"``, ``"Heat Wave"``) is a leaf of its own: ``Heat EOS`` and ``Heat Wave EOS`` part at
the EOS. A beam is a trie node; reaching a leaf (EOS emitted) finishes one item, so the items
returned are distinct by construction.

:func:`constrained_beam_search` returns the top ``N`` items of each row with their scores:

* **Shared prompt cache.** The prompts run once (one prefill of ``B`` rows), then each step
  feeds one token per live beam. Row ``b``'s beams read its prompt's KV cache in place
  (:mod:`~sdpo_lightning.evaluation.shared_prompt`: no copy per beam or per step;
  ``kv_sharing="shared"``, the default where the model supports it), or from a copy per beam
  gathered by the parents at each step (``kv_sharing="expand"``, any model).
  ``transformers``' ``generate(num_beams=W)`` repeats every prompt ``W`` times before its
  prefill, then gathers and extends the ``W`` copies at every step.
* **Scores.** A token's log-probability is the model's over the **whole vocabulary**
  (``log_softmax`` of the logits, then restricted to the trie's children), so an item's score
  is exactly its completion log-likelihood as the packed scorer
  (:func:`~sdpo_lightning.scoring.logps.completion_logps`) computes it.
* **Length normalisation** (D3, arXiv 2406.14900: dividing by length favours long titles and
  near-certain "ghost" tokens) is off by default: an item is ranked by its summed log-prob.
  ``length_penalty = a > 0`` ranks finished items by ``sum / n_tokens ** a`` (HF's
  ``length_penalty``; ``n_tokens`` counts the EOS); live beams are still compared by their sums,
  as in ``transformers``.
* **Finished items do not take beam slots.** At each step every expansion of every live beam is
  a candidate; those that emit EOS join the row's finished list (the best ``N`` are kept), the
  best ``W`` of the others stay live. A live beam is dropped once even its best possible final
  score (its sum, or with ``a > 0`` its sum over the deepest item below it) falls below the
  row's ``N``-th finished score; a row ends when no beam is live. Log-probs are ``<= 0``, so the
  drop is exact.
* **Exactness.** No more than ``n_items`` prefixes can be live at once, so with
  ``beam_width >= n_items`` nothing is ever pruned by width and the result is the true top ``N``
  by score (tested against brute-force scoring of every item). Smaller widths are the usual
  approximation.
* **Excluded items** (the protocol's history rule): each row may exclude items; the trie's item
  counts are reduced along their paths for that row, so a branch holding only excluded items is
  never entered and never takes a beam.

Ties are broken deterministically: equal scores keep the lower item index (finished) or the
earlier candidate (live: beam order, then token id).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sdpo_lightning.evaluation.decoding import prefill
from sdpo_lightning.evaluation.shared_prompt import (
    SharedPromptCache,
    prompt_key_values,
    supports_shared_prompt,
)

__all__ = ["BeamSearchResult", "CatalogueTrie", "constrained_beam_search", "completion_sequences"]


def completion_sequences(
    titles: Sequence[str], tokenizer: Any, completion_prefix: str
) -> list[list[int]]:
    """Token ids of every title's completion (``completion_prefix + title``, then EOS), as
    :meth:`~sdpo_lightning.data.prompts.PromptBuilder.encode` makes them."""
    texts = [completion_prefix + t for t in titles]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [list(x) + [tokenizer.eos_token_id] for x in ids]


class CatalogueTrie:
    """A prefix trie of item completions, stored as flat arrays (CSR children lists).

    Args:
        sequences: one token-id sequence per item (the item index is its position), each
            ending with ``eos_token_id`` and holding it nowhere else.
        eos_token_id: the terminator.
        titles: the items' titles (named in errors).
        source: where the catalogue came from (named in errors).

    Attributes:
        n_items, n_nodes: sizes; node 0 is the root.
        child_start, child_end: ``(n_nodes,)`` range of each node's children in
            ``child_token`` / ``child_node`` (sorted by token id).
        leaf_item: ``(n_nodes,)`` the item a leaf finishes, -1 for inner nodes.
        count: ``(n_nodes,)`` items below (or at) each node.
        height: ``(n_nodes,)`` most tokens from each node to a leaf below it.
        depth: ``(n_nodes,)`` tokens from the root.

    Raises:
        ValueError: an empty sequence, one without its final EOS or with an inner EOS, or two
            items with the same token ids (naming both titles).
    """

    def __init__(
        self,
        sequences: Sequence[Sequence[int]],
        eos_token_id: int,
        titles: Sequence[str] | None = None,
        source: str = "catalogue",
    ) -> None:
        def name(i: int) -> str:
            return repr(titles[i]) if titles is not None else f"item {i}"

        children: list[dict[int, int]] = [{}]
        leaf_item = [-1]
        self.paths: list[np.ndarray] = []  # nodes of each item, root excluded, leaf last
        for i, seq in enumerate(sequences):
            seq = [int(t) for t in seq]
            if not seq or seq[-1] != eos_token_id or eos_token_id in seq[:-1]:
                raise ValueError(
                    f"{source}: the completion of {name(i)} must end with the EOS "
                    f"token {eos_token_id} and hold it nowhere else, got {seq}"
                )
            node, path = 0, []
            for tok in seq:
                nxt = children[node].get(tok)
                if nxt is None:
                    nxt = len(children)
                    children[node][tok] = nxt
                    children.append({})
                    leaf_item.append(-1)
                node = nxt
                path.append(node)
            if leaf_item[node] != -1:
                raise ValueError(
                    f"{source}: {name(leaf_item[node])} and {name(i)} have the same "
                    "token ids: the model cannot tell them apart"
                )
            leaf_item[node] = i
            self.paths.append(np.asarray(path, dtype=np.int64))
        n = len(children)
        self.n_items, self.n_nodes, self.eos_token_id = len(self.paths), n, eos_token_id
        self.leaf_item = np.asarray(leaf_item, dtype=np.int64)
        sizes = np.asarray([len(c) for c in children], dtype=np.int64)
        self.child_end = np.cumsum(sizes)
        self.child_start = self.child_end - sizes
        tok, nod = [], []
        for c in children:
            for t in sorted(c):
                tok.append(t)
                nod.append(c[t])
        self.child_token = np.asarray(tok, dtype=np.int64)
        self.child_node = np.asarray(nod, dtype=np.int64)
        self.count = np.zeros(n, dtype=np.int64)
        self.height = np.zeros(n, dtype=np.int64)
        self.depth = np.zeros(n, dtype=np.int64)
        for path in self.paths:
            self.count[0] += 1
            self.count[path] += 1
            self.depth[path] = np.arange(1, len(path) + 1)
            self.height[0] = max(self.height[0], len(path))
            np.maximum.at(self.height, path, len(path) - np.arange(1, len(path) + 1))

    @classmethod
    def from_titles(
        cls,
        titles: Sequence[str],
        tokenizer: Any,
        completion_prefix: str,
        source: str = "catalogue",
    ) -> CatalogueTrie:
        """The trie of ``titles``' completions (:func:`completion_sequences`)."""
        return cls(
            completion_sequences(titles, tokenizer, completion_prefix),
            tokenizer.eos_token_id,
            titles,
            source,
        )

    @property
    def max_length(self) -> int:
        """Tokens of the longest completion (EOS included)."""
        return int(self.height[0])

    def sequence(self, item: int) -> list[int]:
        """The token ids of ``item``'s completion."""
        path = self.paths[item]
        parents = np.concatenate([[0], path[:-1]])
        out = []
        for parent, node in zip(parents.tolist(), path.tolist(), strict=False):
            lo, hi = self.child_start[parent], self.child_end[parent]
            out.append(
                int(self.child_token[lo + int(np.flatnonzero(self.child_node[lo:hi] == node)[0])])
            )
        return out

    def item_of(self, tokens: Sequence[int]) -> int | None:
        """The item whose completion is exactly ``tokens``, else None."""
        node = 0
        for tok in tokens:
            lo, hi = int(self.child_start[node]), int(self.child_end[node])
            j = np.searchsorted(self.child_token[lo:hi], int(tok))
            if j >= hi - lo or self.child_token[lo + j] != int(tok):
                return None
            node = int(self.child_node[lo + j])
        item = int(self.leaf_item[node])
        return item if item >= 0 else None

    def allowed(
        self, tokens: Sequence[int], removed: dict[int, int] | None = None, row: int = 0
    ) -> list[int]:
        """The tokens that may follow ``tokens`` (``[]`` past a leaf or off the trie), leaving
        out branches that hold only excluded items of ``row`` (``removed``: from
        :meth:`removed_counts`); for ``generate(prefix_allowed_tokens_fn=...)``."""
        node = 0
        for tok in tokens:
            lo, hi = int(self.child_start[node]), int(self.child_end[node])
            j = np.searchsorted(self.child_token[lo:hi], int(tok))
            if j >= hi - lo or self.child_token[lo + j] != int(tok):
                return []
            node = int(self.child_node[lo + j])
        lo, hi = int(self.child_start[node]), int(self.child_end[node])
        toks, nodes = self.child_token[lo:hi], self.child_node[lo:hi]
        if removed:
            base = row * self.n_nodes
            left = self.count[nodes] - np.asarray(
                [removed.get(base + int(n), 0) for n in nodes], dtype=np.int64
            )
            toks = toks[left > 0]
        return toks.tolist()

    def removed_counts(
        self, excluded_rows: Sequence[Sequence[int] | set[int] | frozenset[int]]
    ) -> dict[int, int]:
        """``{row * n_nodes + node: excluded items below node}`` for each row's excluded items
        (each counted once)."""
        out: dict[int, int] = {}
        for row, items in enumerate(excluded_rows):
            for item in set(int(i) for i in items):
                for node in self.paths[item].tolist():
                    key = row * self.n_nodes + node
                    out[key] = out.get(key, 0) + 1
        return out


@dataclasses.dataclass
class BeamSearchResult:
    """The top ``N`` items of each row, best first.

    Attributes:
        items: ``(B, N)`` item indices, -1 where a row has fewer than ``N`` items left.
        scores: ``(B, N)`` float32 ranking scores (the summed log-probs, or with a length
            penalty ``sum / n_tokens ** a``), ``-inf`` for padding.
        logps: ``(B, N)`` float32 summed completion log-probs (EOS included).
        n_tokens: ``(B, N)`` completion tokens (EOS included), 0 for padding.
        steps: decoding steps run (forward passes after the prefill).
        beam_tokens: tokens fed to the model after the prefill (sum of live beams over steps).
    """

    items: Tensor
    scores: Tensor
    logps: Tensor
    n_tokens: Tensor
    steps: int = 0
    beam_tokens: int = 0


def cache_keyword(model: nn.Module) -> str:
    """The forward keyword of the KV cache: ``cache`` (``transformers`` >= 5.x) or
    ``past_key_values``."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(type(base).forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def check_beam_settings(n_items: int, top_n: int, beam_width: int | None) -> int:
    """The beam width to use (``beam_width`` or ``top_n``), after checking both.

    Raises:
        ValueError: ``top_n`` < 1 or larger than the catalogue, ``beam_width`` < ``top_n``.
    """
    if top_n < 1:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    if top_n > n_items:
        raise ValueError(f"top_n={top_n} is larger than the catalogue ({n_items} items)")
    width = top_n if beam_width is None else beam_width
    if width < top_n:
        raise ValueError(
            f"beam_width={width} is smaller than top_n={top_n}: a beam search of "
            f"width W returns at most W items per step; use beam_width >= top_n"
        )
    return width


@torch.no_grad()
def constrained_beam_search(
    model: nn.Module,
    p_ids: Tensor,
    p_mask: Tensor,
    trie: CatalogueTrie,
    top_n: int,
    beam_width: int | None = None,
    exclude: Sequence[Sequence[int]] | None = None,
    length_penalty: float = 0.0,
    prompt_cache: tuple[Tensor, Any] | None = None,
    kv_sharing: str = "auto",
) -> BeamSearchResult:
    """The top ``top_n`` catalogue items of each prompt by beam search on the trie (module
    docstring).

    Args:
        model: the causal LM (eval mode; no grad is taken).
        p_ids: ``(B, P)`` left-padded prompt ids.
        p_mask: ``(B, P)`` their attention mask.
        trie: the catalogue's :class:`CatalogueTrie`.
        top_n: ``N``, items returned per row.
        beam_width: ``W >= N`` live beams kept per row (default ``N``); ``W >= n_items`` is
            exact.
        exclude: per row, item indices never returned (the history rule).
        length_penalty: ``a >= 0``; 0 ranks by summed log-probs (the default, D3).
        prompt_cache: ``(last-position logits (B, V), KV cache of the P prompt positions)`` of
            a prefill already run (:func:`~sdpo_lightning.evaluation.decoding.prefill`); it is
            consumed (expanded in place). ``None``: prefilled here.
        kv_sharing: how the beams read their prompt's KV cache: ``shared`` (in place, no copy:
            :mod:`~sdpo_lightning.evaluation.shared_prompt`), ``expand`` (a copy per beam, gathered
            by the parents at each step, as ``transformers`` does), ``auto`` (``shared`` where the
            model supports it).

    Returns:
        :class:`BeamSearchResult`.

    Raises:
        ValueError: ``top_n`` larger than the catalogue, ``beam_width < top_n``, a negative
            ``length_penalty``, or ``exclude`` not one list per row.
    """
    width = check_beam_settings(trie.n_items, top_n, beam_width)
    if kv_sharing not in ("auto", "shared", "expand"):
        raise ValueError(f"kv_sharing must be auto, shared or expand, got {kv_sharing!r}")
    shared = kv_sharing == "shared" or (kv_sharing == "auto" and supports_shared_prompt(model))
    if not length_penalty >= 0.0:
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty!r}")
    B, dev = p_ids.shape[0], p_ids.device
    exclude = [[] for _ in range(B)] if exclude is None else exclude
    if len(exclude) != B:
        raise ValueError(f"exclude needs one list per row: {len(exclude)} for {B} rows")
    first, cache = prompt_cache if prompt_cache is not None else prefill(model, p_ids, p_mask)
    if shared:
        cache = SharedPromptCache(prompt_key_values(cache), p_mask)
    cache_arg = cache_keyword(model)
    n_prompt = p_mask.long().sum(-1)  # (B,)
    removed = trie.removed_counts(exclude)
    ex_keys = np.asarray(sorted(removed), dtype=np.int64)
    ex_vals = np.asarray([removed[k] for k in ex_keys.tolist()], dtype=np.int64)
    alpha = float(length_penalty)

    # live beams (R of them; row r of the KV cache is beam r): row, node, summed log-prob, length
    row_of = np.arange(B, dtype=np.int64)
    node_of = np.zeros(B, dtype=np.int64)
    score_of = np.zeros(B, dtype=np.float64)
    len_of = np.zeros(B, dtype=np.int64)
    finished: list[list[tuple[float, int, float, int]]] = [
        [] for _ in range(B)
    ]  # (-rank, item, logp, n)
    threshold = np.full(B, -np.inf)  # N-th finished ranking score of each row
    logp = torch.log_softmax(first.float(), dim=-1)  # (R, V)
    steps = beam_tokens = 0
    while len(row_of):
        # every child of every live beam
        starts, ends = trie.child_start[node_of], trie.child_end[node_of]
        sizes = ends - starts
        beam = np.repeat(np.arange(len(row_of)), sizes)  # (X,) candidate -> live beam
        offset = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        flat = np.repeat(starts, sizes) + offset
        tok, child = trie.child_token[flat], trie.child_node[flat]
        row = row_of[beam]
        left = trie.count[child]
        if len(ex_keys):
            keys = row * trie.n_nodes + child
            at = np.minimum(np.searchsorted(ex_keys, keys), len(ex_keys) - 1)
            left = left - np.where(ex_keys[at] == keys, ex_vals[at], 0)
        keep = left > 0
        beam, tok, child, row = beam[keep], tok[keep], child[keep], row[keep]
        picked = logp[torch.from_numpy(beam).to(dev), torch.from_numpy(tok).to(dev)]
        score = score_of[beam] + picked.double().cpu().numpy()
        length = len_of[beam] + 1
        item = trie.leaf_item[child]
        done = item >= 0
        # finished items: into each row's best N (ranking score, then lower item index)
        if done.any():
            rank = score[done] / (length[done] ** alpha) if alpha else score[done]
            for r, s_rank, it, s, n in zip(
                row[done].tolist(),
                rank.tolist(),
                item[done].tolist(),
                score[done].tolist(),
                length[done].tolist(),
                strict=False,
            ):
                finished[r].append((-s_rank, it, s, n))
            for r in set(row[done].tolist()):
                finished[r].sort()
                del finished[r][top_n:]
                if len(finished[r]) == top_n:
                    threshold[r] = -finished[r][-1][0]
        # live beams: drop those that cannot reach a row's top N, keep the best W per row
        live = ~done
        beam, tok, child, row, score, length = (
            a[live] for a in (beam, tok, child, row, score, length)
        )
        bound = score / ((length + trie.height[child]) ** alpha) if alpha else score
        ok = bound >= threshold[row]
        beam, tok, child, row, score, length = (
            a[ok] for a in (beam, tok, child, row, score, length)
        )
        if not len(row):
            break
        order = np.lexsort((np.arange(len(row)), -score, row))  # by row, best first, stable
        row_sorted = row[order]
        first_of_row = np.searchsorted(row_sorted, row_sorted, side="left")
        order = order[np.arange(len(order)) - first_of_row < width]
        beam, tok, child, row, score, length = (
            a[order] for a in (beam, tok, child, row, score, length)
        )
        # advance: the cache follows the parents, one token per beam
        parents, rows = torch.from_numpy(beam).to(dev), torch.from_numpy(row).to(dev)
        step = int(length[0])  # every live beam has the same length
        position = n_prompt[rows] + step - 1
        inputs = dict(
            input_ids=torch.from_numpy(tok).to(dev)[:, None],
            position_ids=position[:, None],
            use_cache=True,
            logits_to_keep=1,
            **{cache_arg: cache},
        )
        if shared:
            cache.select(parents, rows)
            # a 4-D mask is taken as given; the shared-prompt attention knows the prompts' padding
            mask = torch.ones((len(row), 1, 1, 1), dtype=torch.bool, device=dev)
            with cache.active(model):
                logits = model(attention_mask=mask, **inputs).logits[:, -1]  # (R, V)
        else:
            cache.reorder_cache(parents)
            mask = torch.cat(
                [p_mask[rows].long(), p_mask.new_ones(len(row), step, dtype=torch.long)], dim=1
            )
            logits = model(attention_mask=mask, **inputs).logits[:, -1]  # (R, V)
        logp = torch.log_softmax(logits.float(), dim=-1)
        row_of, node_of, score_of, len_of = row, child, score, length
        steps += 1
        beam_tokens += len(row)
    items = torch.full((B, top_n), -1, dtype=torch.long)
    scores = torch.full((B, top_n), float("-inf"))
    logps = torch.full((B, top_n), float("-inf"))
    n_tokens = torch.zeros((B, top_n), dtype=torch.long)
    for b, fin in enumerate(finished):
        for j, (neg_rank, it, s, n) in enumerate(fin):
            items[b, j], scores[b, j], logps[b, j], n_tokens[b, j] = it, -neg_rank, s, n
    return BeamSearchResult(items, scores, logps, n_tokens, steps, beam_tokens)
