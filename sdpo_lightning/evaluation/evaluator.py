"""Per-batch evaluation for validate / test / predict: the protocols and the reports.

* ``generation`` (the paper's): greedy decoding (optionally constrained to the candidate
  titles), exact parsing (:func:`~sdpo_lightning.evaluation.parsing.parse_answer`),
  ``hr@1`` = correct / all, ``valid_ratio`` = valid / all, ``hr@1_given_valid``.
* ``ranking``: every candidate scored by its completion log-likelihood (shared prefix);
  HR@1/3/5, NDCG@5/10, MRR. ValidRatio is 1 by construction.
* ``all_item``: the whole catalogue, from a history-only prompt: the top N items by constrained
  beam search over every title (:mod:`.all_item`); HR@k, NDCG@k, MRR, ValidRatio of free
  generation, coverage, popularity bias, novelty (:mod:`.all_item_metrics`). It reads no
  candidate and shares no pass with the two above (another prompt).

Both protocols share one forward pass per batch (``one_pass=True``, the default): a shared pass
(:func:`shared_pass`) computes what the requested protocols read, and one small function per
protocol consumes it (:data:`PROTOCOLS`, keyed by name: ``ranking``, ``constrained_generation``,
``free_generation``; :func:`run_protocols` runs a set of them). The ranking protocol's packed
row ``[prompt, c_0, ..., c_{M-1}]`` also yields the prompt's KV cache (its first ``P``
positions) from which greedy generation continues, and the logits after every candidate prefix,
from which constrained generation is a walk over the candidate trie with no decoding step. Free
generation reads its answer from the same logits for every row whose greedy answer is a
candidate title (:func:`trie_verify`) and decodes only the other rows, from the packed pass's
prompt cache. Generation alone prefills the prompts once (KV cache); constrained, it masks each
step with one tensor built from the tries. With ``model.scoring.eval_trunk_dir`` the packed pass is
served from the file (ranking, constrained generation, and free generation with ranking).
Generation stops as soon as every row has emitted EOS or finished its first non-blank line (all
the parser reads), so the recorded ``generated`` text ends there. ``one_pass=False`` keeps the
earlier path (``model.generate`` for generation, then a separate ranking pass) as the reference.

The model side comes in as an :class:`EvalModel` (the policy, its tokenizer, the settings, the
optional trunk and scorer), the processes as a :class:`~sdpo_lightning.runtime.processes.Processes`:
never the LightningModule (:meth:`SDPOModule.eval_model
<sdpo_lightning.training.module.SDPOModule.eval_model>` builds an ``EvalModel``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sdpo_lightning.evaluation.constrained import (
    CandidateTrie,
    allowed_token_mask,
    candidate_sequences,
    prefix_allowed_tokens_fn,
)
from sdpo_lightning.evaluation.decoding import greedy_decode, prefill, trie_greedy, trie_verify
from sdpo_lightning.evaluation.metrics import (
    AllItemMetrics,
    GenerationMetrics,
    RankingMetrics,
    rank_of_target,
)
from sdpo_lightning.evaluation.parsing import parse_answer
from sdpo_lightning.evaluation.report import (
    build_summary,
    format_summary_table,
    write_predictions,
    write_summary,
)
from sdpo_lightning.runtime.processes import SINGLE_PROCESS, Processes
from sdpo_lightning.scoring.logps import (
    CompletionLogps,
    PackedForward,
    check_inputs,
    packed_forward,
    packed_token_logps,
    trim_padding,
)

if TYPE_CHECKING:
    from sdpo_lightning.evaluation.all_item import AllItemProtocol
    from sdpo_lightning.scoring.trunk_cache import TrunkCache

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- the model side
@dataclasses.dataclass(frozen=True)
class EvalModel:
    """What evaluation reads of the model side.

    Args:
        model: the causal LM evaluated (the policy); in eval mode during a pass, then restored.
        tokenizer: its tokenizer (pad and EOS ids, decoding).
        max_new_tokens: the generation budget.
        constrained: generation restricted to the candidate titles (a prefix trie).
        length_normalize: ranking by mean instead of summed token log-likelihood.
        trunk: returns the persisted lower-layer cache that serves the packed pass, or None;
            called only when a requested protocol can be served by it.
        score: the reference path's ranking scorer (``one_pass=False``): ``score(batch)`` →
            :class:`CompletionLogps` of every candidate, ``(B, M)``, shared prefix.
        all_item: the all-item protocol's catalogue, prompts and settings, when it runs.
    """

    model: nn.Module
    tokenizer: Any
    max_new_tokens: int = 32
    constrained: bool = False
    length_normalize: bool = False
    trunk: Callable[[], TrunkCache | None] | None = None
    score: Callable[[dict[str, Any]], CompletionLogps] | None = None
    all_item: AllItemProtocol | None = None


@torch.no_grad()
def generate_answers(model: EvalModel, batch: dict[str, Any]) -> list[str]:
    """Greedy answers (decoded completion text) of the batch's prompts by ``model.generate``
    (the reference path)."""
    ctx = model
    tok, policy = ctx.tokenizer, ctx.model
    prompt = batch["prompt_input_ids"]  # (B, P)
    kwargs: dict[str, Any] = dict(
        input_ids=prompt,
        attention_mask=batch["prompt_attention_mask"],
        max_new_tokens=ctx.max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    if ctx.constrained:
        cands = candidate_sequences(batch["candidate_input_ids"], batch["candidate_attention_mask"])
        kwargs["prefix_allowed_tokens_fn"] = prefix_allowed_tokens_fn(
            cands, prompt.shape[1], tok.eos_token_id
        )
    was_training = policy.training
    policy.eval()
    try:
        out = policy.generate(**kwargs)  # (B, P + new)
    finally:
        policy.train(was_training)
    return tok.batch_decode(out[:, prompt.shape[1] :], skip_special_tokens=True)


# ---------------------------------------------------------------------------- the shared pass
@dataclasses.dataclass
class SharedPass:
    """One batch as every protocol reads it: the trimmed inputs and the packed pass.

    Args:
        ctx: the model side.
        batch: the collated batch.
        p_ids: ``(B, P)`` the prompts, left padding trimmed to the longest.
        p_mask: ``(B, P)`` their attention mask.
        c_ids: ``(B, M, C)`` every candidate, right padding trimmed to the longest.
        c_mask: ``(B, M, C)`` their attention mask.
        packed: the packed pass of the prompts and all candidates (logits after every candidate
            prefix, the KV cache when asked for), or None when no protocol needed it.
    """

    ctx: EvalModel
    batch: dict[str, Any]
    p_ids: torch.Tensor
    p_mask: torch.Tensor
    c_ids: torch.Tensor
    c_mask: torch.Tensor
    packed: PackedForward | None


@dataclasses.dataclass(frozen=True)
class PassProtocol:
    """One protocol over the shared pass (an entry of :data:`PROTOCOLS`).

    Args:
        run: ``run(shared)`` → the protocol's output of the batch.
        packed: how it uses the packed pass: ``required`` (computed for it), ``served`` (read
            when the persisted trunk serves it, else the protocol works without it) or
            ``optional`` (read when another protocol has it computed).
        prompt_cache: reads the packed pass's KV cache of the prompt positions (asked for when
            the packed pass is computed here, not served).
    """

    run: Callable[[SharedPass], Any]
    packed: str = "optional"
    prompt_cache: bool = False


def shared_pass(
    ctx: EvalModel, batch: dict[str, Any], protocols: Sequence[PassProtocol]
) -> SharedPass:
    """The trimmed inputs and the packed pass the ``protocols`` read (module docstring).

    The persisted trunk (``ctx.trunk``) serves the packed pass when a protocol requires it or
    can be served by it; otherwise it is computed when a protocol requires it (with the prompt
    KV cache when one reads it). Call with the model in eval mode and no grad.
    """
    ids, mask = batch["candidate_input_ids"], batch["candidate_attention_mask"]  # (B, M, C)
    p_ids, p_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]  # (B, P)
    check_inputs(p_ids, p_mask, ids, mask)
    p_ids, p_mask, c_ids, c_mask = trim_padding(p_ids, p_mask, ids, mask)
    required = any(p.packed == "required" for p in protocols)
    served = required or any(p.packed == "served" for p in protocols)
    trunk = ctx.trunk() if served and ctx.trunk is not None else None
    packed = None
    if trunk is not None:
        packed = trunk.packed_forward(ctx.model, batch)
    elif required:
        cache = any(p.prompt_cache for p in protocols)
        packed = packed_forward(ctx.model, p_ids, p_mask, c_ids, c_mask, use_cache=cache)
    return SharedPass(ctx, batch, p_ids, p_mask, c_ids, c_mask, packed)


# ---------------------------------------------------------------------------- the protocols
def rank_candidates(shared: SharedPass) -> CompletionLogps:
    """``ranking``: every candidate's summed log-likelihood ``(B, M)`` from the packed pass,
    as ``module.score(batch, candidates, mode="shared_prefix")``."""
    logps = packed_token_logps(shared.packed, shared.c_ids, shared.c_mask).sum(-1)  # (B, M)
    n_tokens = shared.batch["candidate_attention_mask"].long().sum(-1)  # (B, M)
    return CompletionLogps(logps, n_tokens)


def constrained_generation(shared: SharedPass) -> list[str]:
    """``constrained_generation``: greedy answers on the candidate trie, as constrained
    :func:`generate_answers` gives them. A walk over the packed logits when the packed pass is
    there, else prefill + decoding with one trie mask per step."""
    ctx, packed = shared.ctx, shared.packed
    tok, n_new, eos = ctx.tokenizer, ctx.max_new_tokens, ctx.tokenizer.eos_token_id
    p_ids, p_mask, c_ids, c_mask = shared.p_ids, shared.p_mask, shared.c_ids, shared.c_mask
    if packed is not None:  # the packed logits hold every trie step
        tokens = trie_greedy(packed.logits, packed.src, c_ids, c_mask, n_new, eos)
    else:
        tries = [CandidateTrie(c) for c in candidate_sequences(c_ids, c_mask)]

        def allowed(out: list[list[int]], vocab: int) -> torch.Tensor:
            return allowed_token_mask(tries, out, vocab, eos, p_ids.device)  # (B, V)

        first, cache = prefill(ctx.model, p_ids, p_mask)
        tokens = greedy_decode(
            ctx.model, first, cache, p_mask, n_new, eos, tok.pad_token_id, allowed=allowed
        )
    return tok.batch_decode(tokens, skip_special_tokens=True)


def free_generation(shared: SharedPass) -> list[str]:
    """``free_generation``: greedy answers cut after the first non-blank line, as
    :func:`generate_answers` begins them. Rows whose greedy answer stays on the candidate trie
    are read from the packed pass (when there); the others are decoded, from the packed pass's
    prompt cache (cropped to the prompt in place) when it has one, else after a prefill."""
    ctx, packed = shared.ctx, shared.packed
    tok, n_new, eos = ctx.tokenizer, ctx.max_new_tokens, ctx.tokenizer.eos_token_id
    p_ids, p_mask, c_ids, c_mask = shared.p_ids, shared.p_mask, shared.c_ids, shared.c_mask

    def decode(t: list[int]) -> str:
        return tok.decode(t, skip_special_tokens=True)

    tokens: list[list[int] | None] = (
        [None] * p_ids.shape[0]
        if packed is None
        else trie_verify(packed.logits, packed.src, c_ids, c_mask, n_new, eos, decode)
    )
    todo = [b for b, t in enumerate(tokens) if t is None]  # greedy leaves the trie: decode
    if todo:
        rows = torch.tensor(todo, device=p_ids.device)
        if packed is not None and packed.past_key_values is not None:  # prompt positions
            first, cache = packed.logits[rows, 0], packed.past_key_values  # (R, V)
            cache.crop(p_ids.shape[1] - cache.get_seq_length())
            if len(todo) < len(tokens):
                cache.batch_select_indices(rows)
        else:
            first, cache = prefill(ctx.model, p_ids[rows], p_mask[rows])
        decoded = greedy_decode(
            ctx.model, first, cache, p_mask[rows], n_new, eos, tok.pad_token_id, decode=decode
        )
        for b, t in zip(todo, decoded, strict=True):
            tokens[b] = t
    return tok.batch_decode(tokens, skip_special_tokens=True)


def all_item(shared: SharedPass) -> list[dict[str, Any]]:
    """``all_item``: the ``all_item`` record part of each row (:meth:`AllItemProtocol.run
    <sdpo_lightning.evaluation.all_item.AllItemProtocol.run>`): its own history-only prompts,
    the top N of the catalogue by constrained beam search, free generation."""
    if shared.ctx.all_item is None:
        raise ValueError("the all_item protocol needs EvalModel.all_item (catalogue and settings)")
    return shared.ctx.all_item.run(shared.ctx.model, shared.batch)


# name → protocol; run in this order over one shared pass (free generation crops the prompt
# cache in place, so it comes after any protocol reading the cache beyond the prompt)
PROTOCOLS: dict[str, PassProtocol] = {
    "ranking": PassProtocol(rank_candidates, packed="required"),
    "constrained_generation": PassProtocol(constrained_generation, packed="served"),
    "free_generation": PassProtocol(free_generation, packed="optional", prompt_cache=True),
    "all_item": PassProtocol(all_item, packed="optional"),
}


def generation_protocol(constrained: bool) -> str:
    """The :data:`PROTOCOLS` name of the ``generation`` protocol."""
    return "constrained_generation" if constrained else "free_generation"


@torch.no_grad()
def run_protocols(model: EvalModel, batch: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The outputs of the named :data:`PROTOCOLS` of one batch, over one shared pass.

    Args:
        model: the model side.
        batch: the collated batch.
        names: protocols to run (keys of :data:`PROTOCOLS`).

    Returns:
        name → the protocol's output, in the order of :data:`PROTOCOLS`.

    Raises:
        KeyError: for a name not in :data:`PROTOCOLS`.
    """
    unknown = sorted(set(names) - set(PROTOCOLS))
    if unknown:
        raise KeyError(f"unknown evaluation protocols {unknown}; registered: {sorted(PROTOCOLS)}")
    ctx = model
    chosen = {name: p for name, p in PROTOCOLS.items() if name in names}
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        shared = shared_pass(ctx, batch, list(chosen.values()))
        return {name: p.run(shared) for name, p in chosen.items()}
    finally:
        ctx.model.train(was_training)


@torch.no_grad()
def one_pass_outputs(
    model: EvalModel, batch: dict[str, Any], generation: bool, ranking: bool
) -> tuple[list[str] | None, CompletionLogps | None]:
    """Generated answers and candidate scores of a batch from one shared pass (module docstring).

    Returns ``(texts, scores)``: ``texts`` as :func:`generate_answers` would give them, cut after
    the first non-blank line, when ``generation``; ``scores`` as ``module.score(batch,
    candidates, mode="shared_prefix")`` when ``ranking``.
    """
    ctx = model
    gen = generation_protocol(ctx.constrained)
    names = [n for n, on in (("ranking", ranking), (gen, generation)) if on]
    out = run_protocols(ctx, batch, names)
    return out.get(gen), out.get("ranking")


class Evaluator(nn.Module):
    """Accumulates metrics and per-example records of one split.

    Args:
        split: ``val``, ``test`` or ``predict`` (metric name prefix).
        protocols: subset of ``generation``, ``ranking``, ``all_item``.
        one_pass: share one forward pass between the protocols (module docstring); ``False``
            runs ``model.generate`` and a separate ranking pass (the reference path).
    """

    def __init__(self, split: str, protocols: list[str], one_pass: bool = True) -> None:
        super().__init__()
        self.split = split
        self.protocols = list(protocols)
        self.one_pass = one_pass
        self.generation = GenerationMetrics()
        self.ranking = RankingMetrics()
        self.all_item: AllItemMetrics | None = None  # made at the first batch (its top N)
        self.all_item_meta: dict[str, Any] | None = None
        self.records: list[dict[str, Any]] = []

    @torch.no_grad()
    def update(self, model: EvalModel, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Evaluate one batch; returns its per-example records.

        A record without a target (a ``predict`` file's row without ``trueSelection``) gets the
        answers (``generated``, ``parsed``, ``valid``; ``top_item``, ``scores``) but no
        ``correct`` / ``target_rank``, and leaves the metrics alone.

        Args:
            model: the model side.
            batch: the collated batch.
        """
        ctx = model
        recs = [
            {"index": int(i), "target": t, "prompt": p}
            for i, t, p in zip(
                batch["index"].tolist(), batch["target"], batch["prompt"], strict=False
            )
        ]
        known = [t is not None for t in batch["target"]]
        generation, ranking = "generation" in self.protocols, "ranking" in self.protocols
        texts, out = None, None
        if self.one_pass:
            texts, out = one_pass_outputs(ctx, batch, generation, ranking)
        if generation:
            texts = texts if self.one_pass else generate_answers(ctx, batch)
            self._generation(recs, texts, batch, known)
        if ranking:
            if not self.one_pass:
                if ctx.score is None:
                    raise ValueError("one_pass=False ranks with EvalModel.score; none was given")
                out = ctx.score(batch)  # (B, M)
            self._ranking(recs, out, batch, known, ctx.length_normalize)
        if "all_item" in self.protocols:
            self._all_item(recs, run_protocols(ctx, batch, ["all_item"])["all_item"], batch, ctx)
        self.records.extend(recs)
        return recs

    def _all_item(
        self,
        recs: list[dict[str, Any]],
        parts: list[dict[str, Any]],
        batch: dict[str, Any],
        ctx: EvalModel,
    ) -> None:
        """Put each row's ``all_item`` part into its record; rows with a target into the metrics."""
        for rec, part in zip(recs, parts, strict=True):
            rec["all_item"] = part
        if self.all_item is None:
            self.all_item = AllItemMetrics(ctx.all_item.top_n).to(batch["index"].device)
        self.all_item_meta = ctx.all_item.meta()
        rows = [p for p in parts if "target_rank" in p]
        if rows:
            dev = batch["index"].device
            rank = torch.tensor([p["target_rank"] or 0 for p in rows], device=dev)
            free = all("valid" in p for p in rows)
            self.all_item.update(
                rank,
                torch.tensor([p["valid"] for p in rows], device=dev) if free else None,
                torch.tensor([p["correct"] for p in rows], device=dev) if free else None,
            )

    def _generation(
        self, recs: list[dict[str, Any]], texts: list[str], batch: dict[str, Any], known: list[bool]
    ) -> None:
        """Parse each answer into its record; count the rows with a target in the metrics."""
        for rec, text, cands in zip(recs, texts, batch["candidates"], strict=False):
            parsed = parse_answer(text, cands)
            rec.update(generated=text, parsed=parsed.item, valid=parsed.valid)
            if rec["target"] is not None:
                rec["correct"] = parsed.valid and parsed.item == rec["target"]
        rows = [r for r, k in zip(recs, known, strict=False) if k]
        if rows:
            dev = batch["index"].device
            self.generation.update(
                torch.tensor([r["correct"] for r in rows], device=dev),
                torch.tensor([r["valid"] for r in rows], device=dev),
            )

    def _ranking(
        self,
        recs: list[dict[str, Any]],
        out: CompletionLogps,
        batch: dict[str, Any],
        known: list[bool],
        length_normalize: bool,
    ) -> None:
        """Rank the candidates of each row into its record; rows with a target into the metrics."""
        scores = out.logps.float()  # (B, M)
        if length_normalize:
            scores = scores / out.n_tokens.clamp_min(1)
        scores = scores.masked_fill(~batch["candidate_mask"], float("-inf"))
        target_index = batch["target_index"]
        if all(known):
            self.ranking.update(scores, target_index)
        elif any(known):
            rows = torch.tensor(known, device=scores.device)
            self.ranking.update(scores[rows], target_index[rows])
        ranks = rank_of_target(scores, target_index.clamp_min(0)).tolist()
        top = scores.argmax(dim=1).tolist()
        rows = zip(recs, known, ranks, top, batch["candidates"], scores.tolist(), strict=False)
        for rec, k, r, t, cands, row in rows:
            if k:
                rec["target_rank"] = int(r)
            rec.update(top_item=cands[t], scores=[round(x, 4) for x in row[: len(cands)]])

    def compute_metrics(self) -> dict[str, torch.Tensor]:
        """Synced metric values, named ``<split>/<metric>`` (ranking ones ``<split>/rank/...``)."""
        out: dict[str, torch.Tensor] = {}
        if "generation" in self.protocols:
            out.update({f"{self.split}/{k}": v for k, v in self.generation.compute().items()})
        if "ranking" in self.protocols:
            out.update({f"{self.split}/rank/{k}": v for k, v in self.ranking.compute().items()})
        if "all_item" in self.protocols and self.all_item is not None:
            out.update(
                {f"{self.split}/all_item/{k}": v for k, v in self.all_item.compute().items()}
            )
        return {k: v.float() for k, v in out.items()}

    def gathered_records(self, processes: Processes = SINGLE_PROCESS) -> list[dict[str, Any]]:
        """Every process's records (deduplicated by index, sorted)."""
        recs = self.records
        if processes.world_size > 1 and torch.distributed.is_initialized():
            parts: list[Any] = [None] * processes.world_size
            torch.distributed.all_gather_object(parts, recs)
            recs = [r for p in parts for r in p]
        return sorted({r["index"]: r for r in recs}.values(), key=lambda r: r["index"])

    def write_prediction_file(
        self, out_dir: Path, processes: Processes = SINGLE_PROCESS
    ) -> Path | None:
        """``predict``: write every process's records to ``out_dir/predictions.jsonl`` (no
        summary: records to predict need not have targets). Returns the path (rank 0)."""
        records = self.gathered_records(processes)
        if not processes.is_global_zero:
            return None
        path = write_predictions(out_dir, records)
        log.info("wrote %d predictions to %s", len(records), path)
        return path

    def write_reports(
        self, out_dir: Path, meta: dict[str, Any], processes: Processes = SINGLE_PROCESS
    ) -> dict[str, Any] | None:
        """Write ``predictions.jsonl`` and ``summary.json`` and print the summary table.

        Args:
            out_dir: where the files go.
            meta: the run's summary metadata (``run``, ``method``, ``dataset``, ``data_file``,
                ``model``); ``predictions`` is added.
            processes: the processes (every one's records are gathered; rank 0 writes).

        Returns:
            The summary (rank 0), else None.
        """
        records = self.gathered_records(processes)
        if not processes.is_global_zero:
            return None
        pred = write_predictions(out_dir, records)  # non-finite scores become null
        if self.all_item_meta is not None:  # the catalogue the all-item metrics need
            meta = {**meta, "catalogue": self.all_item_meta}
        summary = build_summary(records, {**meta, "predictions": pred.name})
        write_summary(out_dir, summary)
        print(format_summary_table(summary))
        log.info("wrote %s and %s", pred, out_dir / "summary.json")
        return summary
