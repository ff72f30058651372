"""``sdpo-baseline``: fit a baseline and write ``summary.json`` + ``predictions.jsonl``.

A baseline is a non-neural scorer (``random``, ``most_popular``, ``item_knn``: this module's
arguments) or a sequential recommender (GRU4Rec, Caser, SASRec: the ``fit`` / ``validate`` /
``test`` subcommands, handed to :mod:`sdpo_lightning.baselines.seqrec_cli`).

Examples::

    sdpo-baseline most_popular --train ../shared/data/lastfm/train.json \\
        --test ../shared/data/lastfm/valid.json --out runs/baselines/most_popular
    sdpo-baseline item_knn --train T --test V --out DIR --param decay=0.5 --no-select
    sdpo-baseline item_knn --train T --test V --out DIR --protocol all_item \
        --catalogue data/lastfm/catalogue.json --top_n 20
    sdpo-baseline fit -c configs/baselines/sasrec_lastfm.yaml --seed_everything 1

Data are read with :func:`sdpo_lightning.data.readers.load_examples`, so a bad record
fails with the same message (file, record, reason) as in training.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdpo_lightning.baselines.registry import SCORERS
from sdpo_lightning.baselines.runner import run_baseline
from sdpo_lightning.data.readers import load_examples
from sdpo_lightning.data.records import DataFormatError
from sdpo_lightning.evaluation.report import format_summary_table

__all__ = ["build_parser", "main"]

SEQREC_SUBCOMMANDS = ("fit", "validate", "test")

#: the ``--help`` text of the sequential recommenders, which argparse does not parse
SEQREC_EPILOG = """\
sequential recommenders (GRU4Rec, Caser, SASRec), LightningCLI subcommands:
  sdpo-baseline fit -c configs/baselines/sasrec_lastfm.yaml     train, then test the best
                                                                checkpoint (summary.json)
  sdpo-baseline test -c CONFIG --ckpt_path CKPT                 test a checkpoint
  sdpo-baseline fit --help                                      every option of the CLI
  configs: configs/baselines/{gru4rec,caser,sasrec}_{lastfm,ml100k}.yaml
           configs/baselines/morec_lastfm.yaml (MoRec: SASRec over frozen text
           embeddings of the titles from SmolLM2-135M)
  models (model.class_path): sdpo_lightning.baselines.gru4rec.GRU4Rec, .caser.Caser,
                             .sasrec.SASRec, .morec.MoRec
  all-item protocol: --data.protocol all_item --data.catalogue_file FILE --data.top_n 20
"""


def _param(text: str) -> tuple[str, Any]:
    """``key=value`` with a JSON value (``decay=0.5``, ``symmetric=true``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sdpo-baseline``."""
    parser = argparse.ArgumentParser(
        prog="sdpo-baseline",
        usage="%(prog)s {item_knn,most_popular,random} --train TRAIN --test TEST --out OUT ...\n"
        "       %(prog)s {fit,validate,test} -c configs/baselines/MODEL_DATA.yaml ...",
        description="Fit a baseline on a training candidate-list file and write its report\n"
        "(summary.json, predictions.jsonl): a non-neural scorer (random, most_popular,\n"
        "item_knn; arguments below) or a sequential recommender (GRU4Rec, Caser, SASRec;\n"
        "the fit / validate / test subcommands below).",
        epilog=SEQREC_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=sorted(SCORERS), help="non-neural scorer")
    parser.add_argument("--train", type=Path, required=True, help="training file (.json/.jsonl)")
    parser.add_argument("--test", type=Path, required=True, help="evaluation file")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="scorer / tie-break / split seed")
    parser.add_argument(
        "--dataset",
        default=None,
        help="summary's dataset name (default: the test file's folder name)",
    )
    parser.add_argument("--run", default=None, help="run name (default NAME-seedSEED)")
    parser.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fixed scorer hyperparameter (repeatable)",
    )
    parser.add_argument(
        "--no-select",
        action="store_true",
        help="do not search the selection grid (use defaults / --param)",
    )
    parser.add_argument(
        "--selection-fraction",
        type=float,
        default=0.2,
        help="share of training users held out for selection",
    )
    parser.add_argument(
        "--protocol",
        choices=("candidates", "all_item"),
        default="candidates",
        help="candidates: rank each row's candidate list (default); all_item: "
        "rank the whole --catalogue, history items excluded (docs/all_item.md)",
    )
    parser.add_argument(
        "--catalogue",
        type=Path,
        default=None,
        help="catalogue.json of the all_item protocol (sdpo-prepare writes it)",
    )
    parser.add_argument(
        "--top_n",
        "--top-n",
        type=int,
        default=20,
        help="items returned per row in the all_item protocol",
    )
    parser.add_argument("--lenient", action="store_true", help="skip (and count) bad records")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 on bad input).

    ``fit`` / ``validate`` / ``test`` as the first argument run the sequential
    recommenders' LightningCLI (:mod:`.seqrec_cli`) instead.
    """
    given = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SEQREC_SUBCOMMANDS:
        from sdpo_lightning.baselines.seqrec_cli import seqrec_main  # imports Lightning

        seqrec_main(argv if given else None)
        return 0
    args = build_parser().parse_args(argv)
    try:
        train = load_examples(args.train, lenient=args.lenient)
        test = load_examples(args.test, lenient=args.lenient)
        catalogue = None
        if args.protocol == "all_item":
            if args.catalogue is None:
                raise ValueError("--protocol all_item needs --catalogue FILE")
            from sdpo_lightning.data.catalogue import load_catalogue

            catalogue = load_catalogue(args.catalogue)
        summary = run_baseline(
            args.name,
            train.examples,
            test.examples,
            args.out,
            seed=args.seed,
            dataset=args.dataset or args.test.resolve().parent.name,
            select=not args.no_select,
            selection_fraction=args.selection_fraction,
            run=args.run,
            meta={
                "train_file": str(args.train),
                "data_file": str(args.test),
                "skipped": {"train": len(train.skipped), "test": len(test.skipped)},
            },
            protocol=args.protocol,
            catalogue=catalogue,
            top_n=args.top_n,
            **dict(args.param),
        )
    except (DataFormatError, ValueError, TypeError) as err:
        print(f"sdpo-baseline: error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(format_summary_table(summary))
        print(f"wrote {args.out / 'summary.json'} and {args.out / summary['predictions']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
