"""Compact predictions files for committing, and their re-expansion from the data file.

A full record of ``predictions.jsonl`` (:mod:`.report`, written by ``sdpo test`` and the
baselines) repeats what the test data file already holds: the ``target`` title and, for the
LM runs, the ``prompt`` text (history and candidate list rendered by a template). A
**compact** record drops exactly these :data:`DERIVED_FIELDS` and keeps every other field as
it is (``index``, ``generated``, ``parsed``, ``valid``, ``correct``, ``target_rank``,
``top_item``, ``n_tied_top``, ``scores``, ...), so the metrics, the paired tests and
:func:`~.report.hits_by_index` read the same values. A compact file is written
gzip-compressed as ``<name>.gz`` with reproducible bytes (no time stamp, no file name); the
readers of :mod:`.report` take it wherever they take ``<name>``.

Re-expansion (:func:`expand_records`) reads the data file the run was tested on (the
``data_file`` of its ``summary.json``) and, for each record, the example at ``index`` (its
position among the file's records): ``target`` is the example's ``trueSelection``, and
``prompt`` (when prompt settings are given) is rendered as ``sdpo test`` rendered it, with
the run's ``data.prompt_templates``, ``data.seed`` and ``data.separator`` and the full
history (prompts whose history was cut to fit ``data.max_length`` are not reproduced). The
fields come back in the order ``sdpo test`` writes them, so ``compact`` then ``expand``
gives the original file byte for byte. Command line::

    python -m sdpo_lightning.evaluation.compact_predictions compact RUN/predictions.jsonl
    python -m sdpo_lightning.evaluation.compact_predictions expand RUN/predictions.jsonl.gz \\
        --data valid.json --prompt-templates music --out full.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .report import ReportError, json_ready, read_predictions

#: fields of a full record that the data file and the row index give back
DERIVED_FIELDS: tuple[str, ...] = ("target", "prompt")


def compact_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` without its :data:`DERIVED_FIELDS` (the other fields unchanged, in order)."""
    return {k: v for k, v in record.items() if k not in DERIVED_FIELDS}


def dumps_records(records: Iterable[Mapping[str, Any]]) -> str:
    """JSON Lines text of ``records`` exactly as :func:`~.report.write_predictions` writes
    them (non-ASCII kept, non-finite floats as ``null``)."""
    lines = []
    for record in records:
        clean = {k: json_ready(v) for k, v in record.items()}
        lines.append(json.dumps(clean, ensure_ascii=False, allow_nan=False) + "\n")
    return "".join(lines)


def write_gzip_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) gzip-compressed to ``path`` with reproducible bytes (time stamp
    0, no file name in the header); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(text.encode("utf-8"))
    path.write_bytes(buf.getvalue())
    return path


def compact_file(
    src: str | Path, dest: str | Path | None = None, *, keep_source: bool = False
) -> Path:
    """Write the compact, gzip-compressed copy of the predictions file ``src``.

    Args:
        src: a predictions file (plain or ``.gz``; full or already compact).
        dest: where to write; default ``<src>.gz`` (``src`` itself when it ends in ``.gz``).
        keep_source: keep a plain ``src`` (default: it is removed once ``dest`` is written;
            a ``.gz`` source is always kept).

    Returns:
        The path written.
    """
    src = Path(src)
    records = read_predictions(src)
    if dest is None:
        dest = src if src.suffix == ".gz" else src.with_name(src.name + ".gz")
    dest = write_gzip_text(dest, dumps_records(compact_record(r) for r in records))
    if not keep_source and src.suffix != ".gz" and src.resolve() != Path(dest).resolve():
        src.unlink()
    return Path(dest)


def expand_records(
    records: Sequence[Mapping[str, Any]],
    data_file: str | Path,
    *,
    prompt_templates: str | Sequence[str] | None = None,
    seed: int = 0,
    separator: str = ", ",
    hybrid: bool = False,
) -> list[dict[str, Any]]:
    """Full records from compact ones and the data file the run was tested on.

    Args:
        records: compact (or full) prediction records, each with the ``index`` of its row.
        data_file: the test file (``.json`` / ``.jsonl`` candidate lists) of the run.
        prompt_templates: the run's ``data.prompt_templates`` (a preset such as ``music``, a
            template or a list); ``None``: no ``prompt`` field (the baselines write none).
        seed: the run's ``data.seed`` (drives the per-row template choice).
        separator: the run's ``data.separator``.
        hybrid: the run used hybrid prompts (LLaRA): ``<item>`` follows every title.

    Returns:
        Records with ``index``, ``target``, ``prompt`` (if asked for) first, then the other
        fields in their order.

    Raises:
        ReportError: an ``index`` outside the data file, or a record whose ``correct``
            disagrees with its ``parsed`` answer and the row's target (a different data file).
    """
    from sdpo_lightning.data.compact import load_compact
    from sdpo_lightning.data.prompts import ITEM_TEXT, PromptBuilder

    examples, _ = load_compact(data_file, min_candidates=1, require_target=False)
    builder = None if prompt_templates is None else PromptBuilder(prompt_templates, seed, separator)
    out = []
    for record in records:
        i = record["index"]
        if not 0 <= i < len(examples):
            raise ReportError(f"{data_file}: no row {i} (it has {len(examples)}) for a record")
        example = examples[i]
        if "correct" in record and example.target is not None:
            hit = bool(record.get("valid")) and record.get("parsed") == example.target
            if hit != bool(record["correct"]):
                raise ReportError(
                    f"{data_file}: row {i}'s target {example.target!r} does not "
                    f"match the record (correct={record['correct']}, parsed="
                    f"{record.get('parsed')!r}): another data file?"
                )
        full: dict[str, Any] = {"index": i, "target": example.target}
        if builder is not None:
            full["prompt"] = builder.render(example, i, item_mark=ITEM_TEXT if hybrid else "")
        full.update((k, v) for k, v in record.items() if k not in full)
        out.append(full)
    return out


def expand_file(
    src: str | Path, data_file: str | Path, dest: str | Path | None = None, **prompt: Any
) -> str:
    """Expand the predictions file ``src`` (see :func:`expand_records`, whose keyword
    arguments ``prompt`` passes on); write the JSON Lines to ``dest`` when given and return
    them."""
    text = dumps_records(expand_records(read_predictions(src), data_file, **prompt))
    if dest is not None:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_text(text, encoding="utf-8")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sdpo_lightning.evaluation.compact_predictions {compact,expand} ...``.

    Returns 2 after a bad input (one ``compact_predictions: error:`` line).
    """
    from sdpo_lightning.errors import UserError, report

    parser = argparse.ArgumentParser(
        prog="compact_predictions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compact", help="write <file>.gz without the re-derivable fields")
    c.add_argument("files", nargs="+", type=Path, help="predictions files")
    c.add_argument("--keep", action="store_true", help="keep the plain files")
    e = sub.add_parser("expand", help="write full records from a compact file and its data")
    e.add_argument("file", type=Path, help="a compact predictions file (.jsonl or .jsonl.gz)")
    e.add_argument(
        "--data",
        type=Path,
        required=True,
        help="the test data file of the run (summary.json's data_file)",
    )
    e.add_argument(
        "--prompt-templates",
        help="data.prompt_templates of the run (a preset such "
        "as music or movies); without it the records get no prompt",
    )
    e.add_argument("--seed", type=int, default=0, help="data.seed of the run")
    e.add_argument("--separator", default=", ", help="data.separator of the run")
    e.add_argument("--hybrid", action="store_true", help="hybrid (LLaRA) prompts: <item> marks")
    e.add_argument("--out", type=Path, help="output file (default: standard output)")
    args = parser.parse_args(argv)
    try:
        if args.command == "compact":
            for path in args.files:
                print(f"wrote {compact_file(path, keep_source=args.keep)}")
            return 0
        text = expand_file(
            args.file,
            args.data,
            args.out,
            prompt_templates=args.prompt_templates,
            seed=args.seed,
            separator=args.separator,
            hybrid=args.hybrid,
        )
    except (UserError, ValueError) as err:
        return report("compact_predictions", err)
    if args.out is None:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
