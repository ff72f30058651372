"""Per-batch evaluation for validate / test / predict: the two protocols and the reports.

* ``generation`` (the paper's): greedy decoding (optionally constrained to the candidate
  titles), exact parsing (:func:`~sdpo_lightning.evaluation.parsing.parse_answer`),
  ``hr@1`` = correct / all, ``valid_ratio`` = valid / all, ``hr@1_given_valid``.
* ``ranking``: every candidate scored by its completion log-likelihood (shared prefix);
  HR@1/3/5, NDCG@5/10, MRR. ValidRatio is 1 by construction.

Both protocols share one forward pass per batch (``one_pass=True``, the default,
:func:`one_pass_outputs`): the ranking protocol's packed row ``[prompt, c_0, ..., c_{M-1}]``
also yields the prompt's KV cache (its first ``P`` positions) from which greedy generation
continues, and the logits after every candidate prefix, from which constrained generation is
a walk over the candidate trie with no decoding step. Free generation reads its answer from
the same logits for every row whose greedy answer is a candidate title (:func:`trie_verify`)
and decodes only the other rows, from the packed pass's prompt cache. Generation alone prefills
the prompts once (KV cache); constrained, it masks each step with one tensor built from the
tries. With ``model.eval_trunk_dir`` the packed pass is served from the file (ranking,
constrained generation, and free generation with ranking). Generation stops as soon as every
row has emitted EOS or finished its first non-blank line (all the parser reads), so the
recorded ``generated`` text ends there. ``one_pass=False`` keeps the earlier path
(``model.generate`` for generation, then a separate ranking pass) as the reference.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdpo_lightning.constrained import (
    CandidateTrie,
    allowed_token_mask,
    candidate_sequences,
    prefix_allowed_tokens_fn,
)
from sdpo_lightning.decoding import greedy_decode, prefill, trie_greedy, trie_verify
from sdpo_lightning.evaluation.metrics import GenerationMetrics, RankingMetrics, rank_of_target
from sdpo_lightning.evaluation.parsing import parse_answer
from sdpo_lightning.evaluation.report import (
    build_summary,
    format_summary_table,
    write_predictions,
    write_summary,
)
from sdpo_lightning.scoring import (
    CompletionLogps,
    check_inputs,
    packed_forward,
    packed_token_logps,
    trim_padding,
)

log = logging.getLogger(__name__)


@torch.no_grad()
def generate_answers(module: Any, batch: dict[str, Any]) -> list[str]:
    """Greedy answers (decoded completion text) for the batch's prompts."""
    h, tok = module.hparams, module.tokenizer
    prompt = batch["prompt_input_ids"]
    kwargs: dict[str, Any] = dict(
        input_ids=prompt,
        attention_mask=batch["prompt_attention_mask"],
        max_new_tokens=h.max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    if h.constrained:
        cands = candidate_sequences(batch["candidate_input_ids"], batch["candidate_attention_mask"])
        kwargs["prefix_allowed_tokens_fn"] = prefix_allowed_tokens_fn(cands, prompt.shape[1], tok.eos_token_id)
    was_training = module.policy.training
    module.policy.eval()
    try:
        out = module.policy.generate(**kwargs)
    finally:
        module.policy.train(was_training)
    return tok.batch_decode(out[:, prompt.shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def one_pass_outputs(
    module: Any, batch: dict[str, Any], generation: bool, ranking: bool
) -> tuple[list[str] | None, CompletionLogps | None]:
    """Generated answers and candidate scores of a batch from one shared pass (module docstring).

    Returns ``(texts, scores)``: ``texts`` as :func:`generate_answers` would give them, cut after
    the first non-blank line, when ``generation``; ``scores`` as ``module.score(batch,
    candidates, mode="shared_prefix")`` when ``ranking``.
    """
    h, tok, model = module.hparams, module.tokenizer, module.policy
    ids, mask = batch["candidate_input_ids"], batch["candidate_attention_mask"]  # (B, M, C)
    p_ids, p_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    check_inputs(p_ids, p_mask, ids, mask)
    p_ids, p_mask, c_ids, c_mask = trim_padding(p_ids, p_mask, ids, mask)
    constrained = generation and h.constrained
    was_training = model.training
    model.eval()
    try:
        packed, scores, tokens = None, None, None
        # the persisted lower layers (module.eval_trunk_dir) serve the packed pass of ranking and
        # constrained generation, and free generation with ranking reads it where greedy stays on
        # the candidate trie (trie_verify); free generation alone keeps its prefill + decode, which
        # costs less than the packed pass over every candidate
        served = ranking or constrained
        trunk = module.eval_trunk() if served and hasattr(module, "eval_trunk") else None
        if trunk is not None:
            packed = trunk.packed_forward(model, batch)
        elif ranking:
            cache = generation and not constrained  # free-form rows off the trie continue from it
            packed = packed_forward(model, p_ids, p_mask, c_ids, c_mask, use_cache=cache)
        if ranking:
            logps = packed_token_logps(packed, c_ids, c_mask).sum(-1)  # (B, M)
            scores = CompletionLogps(logps, mask.long().sum(-1))
        if constrained and packed is not None:  # the packed logits hold every trie step
            tokens = trie_greedy(packed.logits, packed.src, c_ids, c_mask, h.max_new_tokens, tok.eos_token_id)
        elif constrained:  # prefill, then decode with one trie mask per step
            tries = [CandidateTrie(c) for c in candidate_sequences(c_ids, c_mask)]
            allowed = lambda out, v: allowed_token_mask(tries, out, v, tok.eos_token_id, p_ids.device)  # noqa: E731
            first, cache = prefill(model, p_ids, p_mask)
            tokens = greedy_decode(model, first, cache, p_mask, h.max_new_tokens, tok.eos_token_id,
                                   tok.pad_token_id, allowed=allowed)
        elif generation:
            decode = lambda t: tok.decode(t, skip_special_tokens=True)  # noqa: E731
            eos, n_new = tok.eos_token_id, h.max_new_tokens
            tokens = ([None] * p_ids.shape[0] if packed is None else
                      trie_verify(packed.logits, packed.src, c_ids, c_mask, n_new, eos, decode))
            todo = [b for b, t in enumerate(tokens) if t is None]  # greedy leaves the trie: decode
            if todo:
                rows = torch.tensor(todo, device=p_ids.device)
                if packed is not None and packed.past_key_values is not None:  # prompt positions
                    first, cache = packed.logits[rows, 0], packed.past_key_values
                    cache.crop(p_ids.shape[1] - cache.get_seq_length())
                    if len(todo) < len(tokens):
                        cache.batch_select_indices(rows)
                else:
                    first, cache = prefill(model, p_ids[rows], p_mask[rows])
                decoded = greedy_decode(model, first, cache, p_mask[rows], n_new, eos, tok.pad_token_id,
                                        decode=decode)
                for b, t in zip(todo, decoded):
                    tokens[b] = t
    finally:
        model.train(was_training)
    texts = tok.batch_decode(tokens, skip_special_tokens=True) if tokens is not None else None
    return texts, scores


class Evaluator(nn.Module):
    """Accumulates metrics and per-example records of one split.

    Args:
        split: ``val``, ``test`` or ``predict`` (metric name prefix).
        protocols: subset of ``generation``, ``ranking``.
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
        self.records: list[dict[str, Any]] = []

    @torch.no_grad()
    def update(self, module: Any, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Evaluate one batch; returns its per-example records.

        A record without a target (a ``predict`` file's row without ``trueSelection``) gets the
        answers (``generated``, ``parsed``, ``valid``; ``top_item``, ``scores``) but no
        ``correct`` / ``target_rank``, and leaves the metrics alone.
        """
        recs = [
            {"index": int(i), "target": t, "prompt": p}
            for i, t, p in zip(batch["index"].tolist(), batch["target"], batch["prompt"])
        ]
        known = [t is not None for t in batch["target"]]
        generation, ranking = "generation" in self.protocols, "ranking" in self.protocols
        texts, out = one_pass_outputs(module, batch, generation, ranking) if self.one_pass else (None, None)
        if generation:
            texts = texts if self.one_pass else generate_answers(module, batch)
            self._generation(recs, texts, batch, known)
        if ranking:
            if not self.one_pass:
                ids, mask = batch["candidate_input_ids"], batch["candidate_attention_mask"]
                out = module.score(batch, ids, mask, mode="shared_prefix")
            self._ranking(recs, out, batch, known, module.hparams.length_normalize)
        self.records.extend(recs)
        return recs

    def _generation(self, recs: list[dict[str, Any]], texts: list[str], batch: dict[str, Any],
                    known: list[bool]) -> None:
        """Parse each answer into its record; count the rows with a target in the metrics."""
        for rec, text, cands in zip(recs, texts, batch["candidates"]):
            parsed = parse_answer(text, cands)
            rec.update(generated=text, parsed=parsed.item, valid=parsed.valid)
            if rec["target"] is not None:
                rec["correct"] = parsed.valid and parsed.item == rec["target"]
        rows = [r for r, k in zip(recs, known) if k]
        if rows:
            dev = batch["index"].device
            self.generation.update(torch.tensor([r["correct"] for r in rows], device=dev),
                                   torch.tensor([r["valid"] for r in rows], device=dev))

    def _ranking(self, recs: list[dict[str, Any]], out: CompletionLogps, batch: dict[str, Any],
                 known: list[bool], length_normalize: bool) -> None:
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
        rows = zip(recs, known, ranks, top, batch["candidates"], scores.tolist())
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
        return {k: v.float() for k, v in out.items()}

    def gathered_records(self, module: Any) -> list[dict[str, Any]]:
        """Every process's records (deduplicated by index, sorted)."""
        recs = self.records
        trainer = module.trainer
        if trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized():
            parts: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, recs)
            recs = [r for p in parts for r in p]
        return sorted({r["index"]: r for r in recs}.values(), key=lambda r: r["index"])

    def write_prediction_file(self, module: Any, out_dir: Path) -> Path | None:
        """``predict``: write every process's records to ``out_dir/predictions.jsonl`` (no
        summary: records to predict need not have targets). Returns the path (rank 0)."""
        records = self.gathered_records(module)
        if module.trainer is not None and not module.trainer.is_global_zero:
            return None
        path = write_predictions(out_dir, records)
        log.info("wrote %d predictions to %s", len(records), path)
        return path

    def write_reports(self, module: Any, out_dir: Path) -> dict[str, Any] | None:
        """Write ``predictions.jsonl`` and ``summary.json`` and print the summary table."""
        records = self.gathered_records(module)
        if module.trainer is not None and not module.trainer.is_global_zero:
            return None
        pred = write_predictions(out_dir, records)  # non-finite scores become null
        h = module.hparams
        data_file = getattr(getattr(module.trainer, "datamodule", None), "files", {}).get("test")
        meta = {
            "run": h.run_name or Path(module.trainer.default_root_dir).name,
            "method": h.method or h.objective,
            "dataset": Path(data_file).parent.name if data_file else "unknown",
            "data_file": data_file,
            "model": h.model_name_or_path or "tiny-llama",
            "predictions": pred.name,
        }
        summary = build_summary(records, meta)
        write_summary(out_dir, summary)
        print(format_summary_table(summary))
        log.info("wrote %s and %s", pred, out_dir / "summary.json")
        return summary
