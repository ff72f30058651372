"""Run a non-neural baseline end to end and write it in the project's report format.

Each test example becomes one record of ``predictions.jsonl`` with both protocols'
fields (see :mod:`sdpo_lightning.evaluation.report`), so baseline rows sit in the same
``sdpo-report`` table, and the same paired tests, as the LM rows:

* ranking — ``scores`` (the scorer's, candidate order) and ``target_rank`` (1-based,
  ties counted against the target, as :func:`~sdpo_lightning.evaluation.metrics.rank_of_target`);
* generation — the top-scored candidate is the "generated" answer: ``generated`` =
  ``parsed`` = its title, ``valid`` = True, ``correct`` = it is the target. Ties for the
  top score are broken by a seeded random draw per example (never candidate position),
  so generation HR@1 is the expected-fair one and can exceed ranking HR@1 when ties occur.

``index`` is the example's position in the test file, as in the LM evaluator, so paired
tests line up row by row.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdpo_lightning.baselines.base import Scorer, example_rng
from sdpo_lightning.baselines.registry import make_scorer, selection_grid
from sdpo_lightning.baselines.selection import select_params, target_rank
from sdpo_lightning.data.records import Example
from sdpo_lightning.evaluation.report import build_summary, write_predictions, write_summary

__all__ = ["prediction_records", "records_from_scores", "run_baseline", "write_report"]


def _top_choice(scores: Sequence[float], seed: int, example: Example) -> tuple[int, int]:
    """Index of the top candidate (seeded random among ties) and the number tied."""
    best = max(scores)
    tied = [i for i, s in enumerate(scores) if s == best]
    if len(tied) == 1:
        return tied[0], 1
    pick = int(example_rng(seed, example, "top-tie-break").integers(len(tied)))
    return tied[pick], len(tied)


def records_from_scores(
    test_examples: Sequence[Example], scores: Sequence[Sequence[float]], seed: int
) -> list[dict[str, Any]]:
    """Per-example records (both protocols) from one score list per example."""
    if len(scores) != len(test_examples):
        raise ValueError(f"{len(scores)} score lists for {len(test_examples)} examples")
    records = []
    for index, (ex, row) in enumerate(zip(test_examples, scores, strict=False)):
        row = [float(s) for s in row]
        if len(row) != len(ex.candidates):
            raise ValueError(
                f"example {index}: {len(row)} scores for {len(ex.candidates)} candidates"
            )
        top, n_tied = _top_choice(row, seed, ex)
        title = ex.candidates[top]
        records.append(
            {
                "index": index,
                "target": ex.target,
                "generated": title,
                "parsed": title,
                "valid": True,
                "correct": title == ex.target,
                "target_rank": target_rank(row, ex.target_index),
                "top_item": title,
                "n_tied_top": n_tied,
                "scores": [round(s, 6) for s in row],
            }
        )
    return records


def prediction_records(scorer: Scorer, test_examples: Sequence[Example]) -> list[dict[str, Any]]:
    """Per-example records (both protocols) of a fitted scorer."""
    return records_from_scores(
        test_examples, [scorer.score(ex) for ex in test_examples], scorer.seed
    )


def write_report(
    records: Sequence[dict[str, Any]], out_dir: str | Path, meta: dict[str, Any]
) -> dict[str, Any]:
    """Write ``predictions.jsonl`` and ``summary.json`` (``meta`` as in ``build_summary``)."""
    pred = write_predictions(out_dir, records)
    summary = build_summary(records, {**meta, "predictions": pred.name})
    write_summary(out_dir, summary)
    return summary


def run_baseline(
    name: str,
    train_examples: Sequence[Example],
    test_examples: Sequence[Example],
    out_dir: str | Path,
    seed: int = 0,
    dataset: str = "unknown",
    *,
    select: bool = True,
    selection_fraction: float = 0.2,
    run: str | None = None,
    meta: dict[str, Any] | None = None,
    protocol: str = "candidates",
    catalogue: Any = None,
    top_n: int = 20,
    **params: Any,
) -> dict[str, Any]:
    """Fit baseline ``name`` on the training rows, score the test rows, write the reports.

    Args:
        name: ``random``, ``most_popular`` or ``item_knn``.
        train_examples: rows to fit on (histories and targets).
        test_examples: rows to evaluate (their order gives ``index``).
        out_dir: where ``summary.json`` and ``predictions.jsonl`` go.
        seed: scorer, tie-break and selection-split seed.
        dataset: the summary's ``dataset`` (e.g. ``lastfm``).
        select: for scorers with a selection grid, pick the hyperparameters not given in
            ``params`` on a by-user split of ``train_examples``.
        selection_fraction: share of training users held out for selection.
        run: run name (default ``<name>-seed<seed>``).
        meta: extra summary keys (e.g. ``data_file``).
        protocol: ``candidates`` (each row's candidate list: generation and ranking) or
            ``all_item`` (the whole ``catalogue``: :mod:`.all_item`).
        catalogue: the :class:`~sdpo_lightning.data.catalogue.Catalogue` of ``all_item``.
        top_n: items returned per row in ``all_item``.
        **params: scorer hyperparameters (fixed, not searched).

    Returns:
        The summary dict that was written.
    """
    start = time.perf_counter()
    if protocol not in ("candidates", "all_item"):
        raise ValueError(f"protocol must be 'candidates' or 'all_item', got {protocol!r}")
    if protocol == "all_item":
        from sdpo_lightning.baselines.all_item import check_targets

        if catalogue is None:
            raise ValueError("the all_item protocol needs a catalogue (--catalogue FILE)")
        if not 1 <= top_n <= len(catalogue):
            raise ValueError(f"top_n must be in [1, {len(catalogue)}] (the catalogue), got {top_n}")
        check_targets(test_examples, catalogue, (meta or {}).get("data_file", "test data"))
    grid = {k: v for k, v in selection_grid(name).items() if k not in params}
    selection: dict[str, Any] | None = None
    if select and grid:
        chosen, table = select_params(
            lambda **kw: make_scorer(name, **params, **kw),
            grid,
            train_examples,
            selection_fraction,
            seed,
        )
        selection = {
            "fraction": selection_fraction,
            "grid": grid,
            "chosen": chosen,
            "best": max(table, key=lambda r: (r["hr@1"], r["mrr"])),
            "n_points": len(table),
        }
        params = {**params, **chosen}
    scorer = make_scorer(name, seed=seed, **params).fit(train_examples)
    extra: dict[str, Any] = {}
    if protocol == "all_item":
        from sdpo_lightning.baselines.all_item import all_item_meta, scorer_all_item_records

        records, n_in_hist = scorer_all_item_records(scorer, test_examples, catalogue, top_n)
        extra["catalogue"] = all_item_meta(catalogue, top_n, n_in_hist)
    else:
        records = prediction_records(scorer, test_examples)
    summary_meta = {
        "run": run or f"{name}-seed{seed}",
        "method": scorer.method,
        "dataset": dataset,
        "model": f"baseline:{name}",
        "baseline": name,
        "config": scorer.config(),
        "n_train": len(train_examples),
        "selection": selection,
        "protocol": protocol,
        **extra,
        **(meta or {}),
        "wall_time_s": round(time.perf_counter() - start, 3),
    }
    return write_report(records, out_dir, summary_meta)
