"""Run summaries (``summary.json``) and the ``sdpo-report`` comparison table.

**Per-example prediction record** (one JSON object per line of ``predictions.jsonl``):
``index`` (int, unique example id, required), ``prompt`` (str, optional),
``generated`` (str), ``parsed`` (str | null, the candidate named), ``target`` (str),
``correct`` (bool), ``valid`` (bool) — the generation protocol; ``target_rank``
(int, 1-based, ties against the target) and ``scores`` (list[float], optional) — the
ranking protocol; ``all_item`` (an object: ``items``, ``scores``, ``target_rank`` or null, ...)
— the all-item protocol (:mod:`.all_item`). A protocol is summarized when every record has its
fields (``correct``+``valid``, resp. ``target_rank``, resp. ``all_item``). A predictions file may be stored
gzip-compressed as ``<name>.gz`` (see :mod:`.compact_predictions`); the readers here take
either (:func:`find_predictions`).

**summary.json** (``schema_version`` 1)::

    {"schema_version": 1, "run": str, "method": str, "dataset": str, "model": str,
     "n_examples": int,
     "bootstrap": {"n_boot": int, "alpha": float, "seed": int},
     "protocols": {
       "generation": {"hr@1": M, "valid_ratio": M, "hr@1_given_valid": M},
       "ranking": {"hr@1": M, "hr@3": M, "hr@5": M, "ndcg@5": M, "ndcg@10": M,
                   "mrr": M},
       "all_item": {"hr@1": M, "hr@5": M, "hr@10": M, "hr@20": M, "ndcg@5": M, "ndcg@10": M,
                    "ndcg@20": M, "mrr": M, "valid_ratio": M, "generation_hr@1": M,
                    "coverage@10": M, "popularity@10": M, "target_popularity": M,
                    "popularity_lift@10": M, "novelty@10": M, "target_novelty": M}},
     "predictions": str | null,   # path of predictions.jsonl, relative to this file
     ...}                         # any further meta keys, copied verbatim
    M = {"value": float | null, "ci_low": float | null, "ci_high": float | null,
         "n": int}

``value`` is the mean of per-example scores over ``n`` examples (hits; for NDCG@k
``1/log2(rank+1)`` when ``rank <= k``; for MRR ``1/rank``); ``hr@1_given_valid`` is
averaged over the ``n`` valid examples and is ``null`` when none is valid. CIs are
percentile bootstrap intervals (:func:`~.bootstrap.bootstrap_ci`). The all-item metrics (those
<= its ``top_n``; coverage and the popularity lift are set-level statistics, bootstrapped by
:func:`~.bootstrap.bootstrap_statistic_ci`) are defined in :mod:`.all_item_metrics`; they read
the ``catalogue`` meta entry (``n_items``, ``total_popularity``, ``top_n``).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import numbers
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdpo_lightning.errors import UserError

from .all_item_metrics import RowStatistic, all_item_values, per_example_value
from .bootstrap import bootstrap_ci, bootstrap_statistic_ci, paired_bootstrap_pvalue

SCHEMA_VERSION = 1
_RESERVED = ("schema_version", "n_examples", "bootstrap", "protocols")
_REQUIRED_META = ("run", "method", "dataset", "model")


class ReportError(UserError, ValueError):
    """A summary or predictions file is missing, malformed or inconsistent."""


#: Types of the prediction record fields that are read (``None``: the field may be null).
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "correct": ((bool,), "true or false"),
    "valid": ((bool,), "true or false"),
    "target_rank": ((int,), "an integer >= 1"),
    "generated": ((str, type(None)), "a string or null"),
    "parsed": ((str, type(None)), "a string or null"),
    "target": ((str, type(None)), "a string or null"),
    "top_item": ((str, type(None)), "a string or null"),
}


def check_record_types(record: Mapping[str, Any], where: str) -> None:
    """Refuse a prediction record whose fields have the wrong JSON types (e.g. ``"correct":
    "no"``, which ``bool()`` would count as a hit).

    Raises:
        ReportError: naming ``where`` (file and line), the field and its value.
    """
    for key, (types, wanted) in _FIELD_TYPES.items():
        if key not in record:
            continue
        value = record[key]
        bad = not isinstance(value, types) or (bool not in types and isinstance(value, bool))
        if not bad and key == "target_rank":
            bad = value < 1
        if bad:
            raise ReportError(f"{where}: '{key}' must be {wanted}, got {json.dumps(value)}")
    scores = record.get("scores")
    number = lambda s: isinstance(s, numbers.Real) and not isinstance(s, bool)  # noqa: E731
    if scores is not None and not (
        isinstance(scores, list) and all(s is None or number(s) for s in scores)
    ):
        raise ReportError(f"{where}: 'scores' must be a list of numbers or nulls")


def _metric_values(
    records: Sequence[Mapping[str, Any]], catalogue: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Per-example score arrays (or set-level :class:`~.all_item_metrics.RowStatistic`), per
    protocol and metric."""
    out: dict[str, dict[str, Any]] = {}
    if records and all("correct" in r and "valid" in r for r in records):
        correct = np.array([bool(r["correct"]) for r in records], dtype=np.float64)
        valid = np.array([bool(r["valid"]) for r in records], dtype=bool)
        bad = np.flatnonzero((correct > 0) & ~valid)
        if bad.size:
            index = records[bad[0]]["index"]
            raise ReportError(f"prediction record index {index} is correct but not valid")
        out["generation"] = {
            "hr@1": correct,
            "valid_ratio": valid.astype(np.float64),
            "hr@1_given_valid": correct[valid],
        }
    if records and all("target_rank" in r for r in records):
        rank = np.array([int(r["target_rank"]) for r in records], dtype=np.float64)
        if np.any(rank < 1):
            raise ReportError("target_rank must be 1-based (>= 1)")
        ndcg = 1.0 / np.log2(rank + 1.0)
        out["ranking"] = {
            "hr@1": (rank <= 1).astype(np.float64),
            "hr@3": (rank <= 3).astype(np.float64),
            "hr@5": (rank <= 5).astype(np.float64),
            "ndcg@5": np.where(rank <= 5, ndcg, 0.0),
            "ndcg@10": np.where(rank <= 10, ndcg, 0.0),
            "mrr": 1.0 / rank,
        }
    if records and all(
        isinstance(r.get("all_item"), Mapping) and "target_rank" in r["all_item"] for r in records
    ):
        out["all_item"] = all_item_values(records, catalogue)
    return out


def build_summary(
    per_example_records: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute metric values and bootstrap CIs from per-example prediction records.

    Args:
        per_example_records: Records as described in the module docstring.
        meta: ``run``, ``method``, ``dataset``, ``model`` (required), optionally
            ``predictions`` (default ``"predictions.jsonl"``) and further keys.
        n_boot: Bootstrap resamples per metric.
        alpha: 1 - confidence level.
        seed: Bootstrap seed (each metric uses the same seed).

    Returns:
        The summary dict (module docstring schema).
    """
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing or any(k in meta for k in _RESERVED):
        raise ReportError(
            f"meta needs {_REQUIRED_META} and may not set {_RESERVED}; got {sorted(meta)}"
        )
    indices = [r.get("index") for r in per_example_records]
    is_int = [isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in indices]
    if not all(is_int) or len(set(indices)) != len(indices):
        raise ReportError("every prediction record needs a unique integer 'index'")
    protocols: dict[str, dict[str, dict[str, Any]]] = {}
    catalogue = meta.get("catalogue") if isinstance(meta.get("catalogue"), Mapping) else None
    for protocol, metrics in _metric_values(per_example_records, catalogue).items():
        protocols[protocol] = {}
        for name, values in metrics.items():
            entry: dict[str, Any] = {"value": None, "ci_low": None, "ci_high": None}
            if isinstance(values, RowStatistic):
                entry["n"] = values.n
                if values.n:
                    value, lo, hi = bootstrap_statistic_ci(
                        values.n,
                        values.fn,
                        n_boot=n_boot,
                        alpha=alpha,
                        seed=seed,
                        row_cost=values.row_cost,
                    )
                    finite = [x if np.isfinite(x) else None for x in (value, lo, hi)]
                    entry.update(value=finite[0], ci_low=finite[1], ci_high=finite[2])
            else:
                entry["n"] = int(values.size)
                if values.size:
                    mean, lo, hi = bootstrap_ci(values, n_boot=n_boot, alpha=alpha, seed=seed)
                    entry.update(value=mean, ci_low=lo, ci_high=hi)
            protocols[protocol][name] = entry
    summary: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    summary.update({k: meta[k] for k in _REQUIRED_META})
    summary.update(
        n_examples=len(per_example_records),
        protocols=protocols,
        bootstrap={"n_boot": n_boot, "alpha": alpha, "seed": seed},
    )
    summary["predictions"] = meta.get("predictions", "predictions.jsonl")
    summary.update({k: v for k, v in meta.items() if k not in summary})
    return summary


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def format_summary_table(summary: Mapping[str, Any]) -> str:
    """Plain-text table: protocol, metric, value, CI, n (one row per metric)."""
    alpha = summary.get("bootstrap", {}).get("alpha", 0.05)
    header = ["protocol", "metric", "value", f"{(1 - alpha) * 100:g}% CI", "n"]
    rows = [header]
    for protocol, metrics in summary["protocols"].items():
        for name, m in metrics.items():
            ci = "—" if m["ci_low"] is None else f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]"
            rows.append([protocol, name, _fmt(m["value"]), ci, str(m["n"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    s = summary
    lines = [f"{s['method']} on {s['dataset']} ({s['model']}), run {s['run']}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows]
    return "\n".join(lines)


def write_summary(run_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write ``run_dir/summary.json`` (strict JSON, no NaN) and return its path."""
    path = Path(run_dir) / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def json_ready(v: Any) -> Any:
    """JSON-ready value: numpy scalars to Python, non-finite floats to None.

    Args:
        v: A record field (lists and tuples are converted item by item, into lists).

    Returns:
        ``v`` with numpy scalars as Python numbers and NaN / infinities as ``None``.
    """
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return [json_ready(x) for x in v] if isinstance(v, (list, tuple)) else v


def write_predictions(
    run_dir: str | Path, records: Sequence[Mapping[str, Any]], name: str = "predictions.jsonl"
) -> Path:
    """Write per-example records as JSON Lines to ``run_dir/name``; return the path.

    Non-finite floats (e.g. ``-inf`` log-likelihoods in ``scores``) become ``null``;
    numpy scalars become Python numbers.
    """
    path = Path(run_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)

    with path.open("w", encoding="utf-8") as f:
        for record in records:
            clean = {k: json_ready(v) for k, v in record.items()}
            f.write(json.dumps(clean, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def find_predictions(path: str | Path) -> Path | None:
    """The predictions file stored for ``path``: ``path`` itself when it is a file, else its
    gzip-compressed copy ``<path>.gz`` when that is a file, else ``None``."""
    path = Path(path)
    if path.is_file():
        return path
    packed = path.with_name(path.name + ".gz")
    return packed if packed.is_file() else None


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Read a predictions JSONL file, plain or gzip-compressed (a ``.gz`` name, or ``path``
    missing and ``<path>.gz`` present: :func:`find_predictions`); errors name the file and
    line."""
    path = find_predictions(path) or Path(path)
    records = []
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().splitlines()
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, EOFError) as e:
        raise ReportError(f"{path}: cannot read predictions file ({e})") from e
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}:{lineno}: malformed JSON ({e})") from e
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("index"), int)
            or isinstance(record["index"], bool)
        ):
            raise ReportError(f"{path}:{lineno}: a record must be an object with an int 'index'")
        check_record_types(record, f"{path}:{lineno}")
        records.append(record)
    return records


#: the metrics ``sdpo-report`` shows per protocol by default (the first one: Rel.Ipv and p-values)
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "generation": ("hr@1", "valid_ratio"),
    "ranking": ("hr@1", "ndcg@5"),
    "all_item": ("hr@10", "ndcg@10"),
}


def metric_label(name: str) -> str:
    """Column label of a metric: ``hr@10`` → ``HR@10``, ``valid_ratio`` → ``ValidRatio``."""
    head, _, k = name.partition("@")
    labels = {
        "hr": "HR",
        "ndcg": "NDCG",
        "mrr": "MRR",
        "valid_ratio": "ValidRatio",
        "generation_hr": "GenHR",
        "coverage": "Coverage",
        "popularity": "Pop",
        "popularity_lift": "PopLift",
        "novelty": "Novelty",
    }
    label = labels.get(head, head)
    return f"{label}@{k}" if k else label


def load_summary(
    path: str | Path, protocol: str = "generation", metrics: Sequence[str] | None = None
) -> dict[str, Any]:
    """Load and validate a summary.json written by :func:`write_summary`; it must hold the
    ``metrics`` (default :data:`DEFAULT_METRICS`) of ``protocol``."""
    path = Path(path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ReportError(f"{path}: cannot read summary file ({e})") from e
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: malformed JSON ({e})") from e
    if not isinstance(summary, dict):
        raise ReportError(f"{path}: a summary must be a JSON object")
    for key in ("method", "dataset", "protocols"):
        if key not in summary:
            raise ReportError(f"{path}: missing key '{key}'")
    for key in ("method", "dataset"):
        if not isinstance(summary[key], str):
            raise ReportError(f"{path}: '{key}' must be a string, got {json.dumps(summary[key])}")
    if not isinstance(summary.get("predictions"), (str, type(None))):
        raise ReportError(f"{path}: 'predictions' must be a file name or null")
    block = summary["protocols"].get(protocol) if isinstance(summary["protocols"], dict) else None
    for name in metrics or DEFAULT_METRICS.get(protocol, ()):
        entry = block.get(name) if isinstance(block, dict) else None
        if not isinstance(entry, dict) or "value" not in entry:
            raise ReportError(f"{path}: missing protocols.{protocol}.{name}.value")
        value = entry["value"]
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise ReportError(
                f"{path}: protocols.{protocol}.{name}.value must be a number or "
                f"null, got {json.dumps(value)}"
            )
    return summary


def hits_by_index(pred_path: str | Path) -> dict[int, tuple[float, float]]:
    """Per-example ``(generation hit, ranking hit)`` of a predictions file, keyed by example
    index (the pairing key of the paired bootstrap); ranking hit = target ranked first."""
    return {
        r["index"]: (float(bool(r["correct"])), float(r["target_rank"] == 1))
        for r in read_predictions(pred_path)
    }


def all_item_values_by_index(pred_path: str | Path, metric: str = "hr@10") -> dict[int, float]:
    """Per-example values of an all-item metric (``hr@k``, ``ndcg@k``, ``mrr``, ``valid_ratio``,
    ``generation_hr@1``) of a predictions file, keyed by example index: the pairing key of the
    paired bootstrap (:func:`~.bootstrap.paired_bootstrap_ci`), as :func:`hits_by_index` for the
    candidate-list protocols."""
    records = read_predictions(pred_path)
    if any(not isinstance(r.get("all_item"), dict) for r in records):
        raise ReportError(f"{pred_path}: every record needs 'all_item' (an all-item test)")
    try:
        return {r["index"]: per_example_value(r["all_item"], metric) for r in records}
    except KeyError as err:
        raise ReportError(f"{pred_path}: {err.args[0]}") from None


def _record_value(record: Mapping[str, Any], protocol: str, metric: str) -> float:
    """A record's per-example value of ``metric`` (KeyError when it has none)."""
    if protocol == "generation":
        return float(bool(record["correct"]) if metric == "hr@1" else bool(record["valid"]))
    if protocol == "ranking":
        return float(_metric_values([record])["ranking"][metric][0])
    return per_example_value(record["all_item"], metric)


def _hits_by_index(
    summary_path: Path,
    summary: Mapping[str, Any],
    protocol: str = "generation",
    metric: str = "hr@1",
) -> dict[int, float] | None:
    """Per-example values of ``metric`` (HR@1 hits by default) keyed by example index, or None
    when unavailable."""
    name = summary.get("predictions")
    if not name:
        return None
    pred_path = find_predictions(summary_path.parent / name)
    if pred_path is None:
        return None
    records = read_predictions(pred_path)
    if protocol == "generation" and metric == "hr@1":
        if any("correct" not in r for r in records):
            raise ReportError(f"{pred_path}: every record needs 'correct' for the paired test")
        return {r["index"]: float(bool(r["correct"])) for r in records}
    try:
        return {r["index"]: _record_value(r, protocol, metric) for r in records}
    except KeyError:
        return None  # not a per-example metric, or records without it: no paired test


def _pvalue(
    last: tuple[Path, dict],
    other: tuple[Path, dict],
    n_boot: int,
    seed: int,
    protocol: str = "generation",
    metric: str = "hr@1",
) -> float | None:
    hits_last = _hits_by_index(*last, protocol=protocol, metric=metric)
    hits_other = _hits_by_index(*other, protocol=protocol, metric=metric)
    if hits_last is None or hits_other is None:
        return None
    if hits_last.keys() != hits_other.keys():
        only = len(hits_last.keys() - hits_other.keys()), len(hits_other.keys() - hits_last.keys())
        raise ReportError(
            f"predictions of {last[0]} and {other[0]} cover different example indices "
            f"({only[0]} only in the first, {only[1]} only in the second)"
        )
    keys = sorted(hits_last)
    a, b = [hits_last[k] for k in keys], [hits_other[k] for k in keys]
    return paired_bootstrap_pvalue(a, b, n_boot=n_boot, seed=seed)


def comparison_table(
    summary_paths: Sequence[str | Path],
    baseline_last: bool = False,
    n_boot: int = 10000,
    seed: int = 0,
    protocol: str = "generation",
    metrics: Sequence[str] | None = None,
) -> str:
    """Markdown table shaped like the paper's Table 1 (methods × datasets).

    Rows are methods and columns datasets, each in order of first appearance; each dataset has
    a column per metric of ``protocol`` (default :data:`DEFAULT_METRICS`: HR@1 and ValidRatio of
    the generation protocol; HR@10 and NDCG@10 of ``all_item``). With ``baseline_last``, a
    Rel.Ipv block gives the relative improvement in the first metric of the last row over every
    other row, ``(last - row) / row * 100%``, with a two-sided paired bootstrap p-value on
    per-example values when both runs' predictions are available.
    """
    if protocol not in DEFAULT_METRICS:
        raise ReportError(f"unknown protocol {protocol!r}; choose from {sorted(DEFAULT_METRICS)}")
    metrics = tuple(metrics or DEFAULT_METRICS[protocol])
    cells: dict[tuple[str, str], tuple[Path, dict]] = {}
    methods: list[str] = []
    datasets: list[str] = []
    for raw in summary_paths:
        path = Path(raw)
        summary = load_summary(path, protocol, metrics)
        key = (str(summary["method"]), str(summary["dataset"]))
        if key in cells:
            raise ReportError(f"{path}: {key[0]} on {key[1]} already given by {cells[key][0]}")
        cells[key] = (path, summary)
        methods += [key[0]] if key[0] not in methods else []
        datasets += [key[1]] if key[1] not in datasets else []
    if not cells:
        raise ReportError("no summary files given")

    def metric(key: tuple[str, str], name: str) -> float | None:
        return cells[key][1]["protocols"][protocol][name]["value"] if key in cells else None

    first = metrics[0]
    header = ["Method"] + [f"{d} {metric_label(m)}" for d in datasets for m in metrics]
    rel = baseline_last and len(methods) > 1
    header += [f"Rel.Ipv {d}" for d in datasets] if rel else []
    rows, any_p = [], False
    for method in methods:
        row = [method]
        row += [_fmt(metric((method, d), m)) for d in datasets for m in metrics]
        for d in datasets if rel else []:
            last, this = metric((methods[-1], d), first), metric((method, d), first)
            if method == methods[-1] or last is None or not this:
                row.append("—")
                continue
            cell = f"{(last - this) / this * 100:+.2f}%"
            p = _pvalue(cells[(methods[-1], d)], cells[(method, d)], n_boot, seed, protocol, first)
            if p is not None:
                cell, any_p = cell + f" (p={p:.4f})", True
            row.append(cell)
        rows.append(row)
    align = "|".join([":---"] + ["---:"] * (len(header) - 1))
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in header) + " |", f"|{align}|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    if rel:
        what = "HR@1" if protocol == "generation" else f"{metric_label(first)} ({protocol})"
        lines += ["", f"Rel.Ipv: relative {what} improvement of {methods[-1]} over each row."]
    if any_p:
        unit = "hits" if first.startswith("hr@") else "values"
        lines += [
            f"p: two-sided paired bootstrap test on per-example {unit} "
            f"(n_boot={n_boot}, seed={seed})."
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``sdpo-report``: render a comparison table of run summaries.

    Returns 2 after a bad input (one ``sdpo-report: error:`` line; the traceback too with
    ``SDPO_DEBUG=1`` or ``--debug``).
    """
    from sdpo_lightning.errors import UserError, report, strip_debug_flag

    argv = strip_debug_flag(argv)
    parser = argparse.ArgumentParser(prog="sdpo-report", description=comparison_table.__doc__)
    parser.add_argument("summaries", nargs="+", help="summary.json files (globs are expanded)")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument(
        "--baseline-last",
        action="store_true",
        help="add Rel.Ipv (+ p-values) of the last method over every other row",
    )
    parser.add_argument("--n-boot", type=int, default=10000, help="paired bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="paired bootstrap seed")
    parser.add_argument(
        "--protocol",
        choices=sorted(DEFAULT_METRICS),
        default="generation",
        help="the protocol whose metrics are shown (default: generation)",
    )
    parser.add_argument(
        "--metrics",
        type=lambda v: [m.strip() for m in v.split(",") if m.strip()],
        default=None,
        help="comma-separated metric names of the protocol (default: "
        "generation hr@1,valid_ratio; ranking hr@1,ndcg@5; all_item hr@10,ndcg@10); "
        "the first drives Rel.Ipv",
    )
    args = parser.parse_args(argv)
    paths: list[str] = []
    for pattern in args.summaries:
        expanded = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not expanded:
            print(f"sdpo-report: error: no file matches {pattern}", file=sys.stderr)
            return 2
        paths += expanded
    try:
        table = comparison_table(
            paths,
            args.baseline_last,
            n_boot=args.n_boot,
            seed=args.seed,
            protocol=args.protocol,
            metrics=args.metrics,
        )
    except (ReportError, UserError) as e:
        return report("sdpo-report", e)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table, encoding="utf-8")
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
