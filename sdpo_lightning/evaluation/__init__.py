"""Evaluation: answer parsing, HR@1 / ValidRatio and ranking metrics, bootstrap CIs,
run summaries and the ``sdpo-report`` comparison table (definitions: README.md, "Metrics").

The model-side evaluation of ``validate`` / ``test`` / ``predict`` (:mod:`.evaluator`: the
protocols over one shared pass, with :mod:`.decoding` and :mod:`.constrained`) needs torch and
a model; it is not imported here, so the report tools stay light."""

from .bootstrap import bootstrap_ci, paired_bootstrap_pvalue
from .metrics import GenerationMetrics, RankingMetrics, rank_of_target, tie_broken_scores
from .parsing import ParsedAnswer, answer_scope, normalize_title, parse_answer
from .report import (
    SCHEMA_VERSION,
    ReportError,
    build_summary,
    comparison_table,
    find_predictions,
    format_summary_table,
    load_summary,
    read_predictions,
    write_predictions,
    write_summary,
)

__all__ = [
    "SCHEMA_VERSION",
    "GenerationMetrics",
    "ParsedAnswer",
    "RankingMetrics",
    "ReportError",
    "answer_scope",
    "bootstrap_ci",
    "build_summary",
    "comparison_table",
    "find_predictions",
    "format_summary_table",
    "load_summary",
    "normalize_title",
    "paired_bootstrap_pvalue",
    "parse_answer",
    "rank_of_target",
    "read_predictions",
    "tie_broken_scores",
    "write_predictions",
    "write_summary",
]
