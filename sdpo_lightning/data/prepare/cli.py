"""``sdpo-prepare``: raw interaction logs → S-DPO candidate-list splits, in one command.

Examples::

    sdpo-prepare movielens-100k --raw ../shared/data/ml-100k --out data/ml-100k
    sdpo-prepare movielens-1m --download --out data/ml-1m
    sdpo-prepare lastfm --raw hetrec2011-lastfm-2k --out data/lastfm --lenient
    sdpo-prepare goodreads --raw goodreads --genre poetry --out data/goodreads
    sdpo-prepare catalogue data/lastfm/train.json data/lastfm/valid.json --out data/lastfm/catalogue.json

Each dataset's output folder also gets ``catalogue.json`` (every item, its title and training
popularity: the all-item protocol's item list); ``sdpo-prepare catalogue FILE...`` derives one
from candidate-list files (:mod:`sdpo_lightning.data.catalogue`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sdpo_lightning.data.prepare.download import default_cache_dir, download_dataset
from sdpo_lightning.data.prepare.output import format_stats
from sdpo_lightning.data.prepare.protocol import ProtocolConfig
from sdpo_lightning.data.prepare.rawio import PrepareError, ReaderOptions
from sdpo_lightning.data.prepare.registry import DATASETS, get_dataset, prepare
from sdpo_lightning.errors import UserError, report, strip_debug_flag

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sdpo-prepare``."""
    epilog = "datasets and the raw files they read:\n" + "\n".join(
        f"  {s.name:<16}{s.files}  (aliases: {', '.join(s.aliases)})" for s in DATASETS.values()
    )
    parser = argparse.ArgumentParser(
        prog="sdpo-prepare",
        description="Turn raw interaction logs into train/valid/test "
        "candidate-list JSON (S-DPO / LLaRA protocol) plus stats.json.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dataset",
        help="dataset name (see below), or `catalogue` to derive "
        "catalogue.json from candidate-list files (sdpo-prepare catalogue -h)",
    )
    parser.add_argument("--raw", type=Path, help="folder holding the raw files")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    dl = parser.add_argument_group("download")
    dl.add_argument(
        "--download",
        action="store_true",
        help="fetch the official files into the cache (needs internet)",
    )
    dl.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"download cache (default: {default_cache_dir()})",
    )
    dl.add_argument("--url", help="mirror URL of the archive (Goodreads: of the folder)")
    dl.add_argument("--sha256", help="expected SHA-256 of the archive")
    dl.add_argument("--timeout", type=float, default=60.0, help="network timeout, seconds")
    proto = parser.add_argument_group("protocol")
    defaults = ProtocolConfig()
    proto.add_argument("--seed", type=int, default=defaults.seed)
    proto.add_argument("--max-history", type=int, default=defaults.max_history)
    proto.add_argument("--num-candidates", type=int, default=defaults.num_candidates)
    proto.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=list(defaults.split),
        metavar=("TRAIN", "VALID", "TEST"),
        help="user split fractions",
    )
    proto.add_argument("--min-user-interactions", type=int, default=0)
    proto.add_argument("--min-item-interactions", type=int, default=0)
    proto.add_argument(
        "--min-rating", type=float, default=None, help="keep interactions rated at least this"
    )
    proto.add_argument(
        "--max-examples-per-user",
        type=int,
        default=None,
        help="keep each user's N most recent windows (default: all)",
    )
    proto.add_argument(
        "--no-item-ids", action="store_true", help="omit the item_ids field from the examples"
    )
    read = parser.add_argument_group("reading")
    read.add_argument(
        "--lenient", action="store_true", help="skip malformed lines (counted) instead of failing"
    )
    read.add_argument("--encoding", help="override the text encoding of the raw files")
    gr = parser.add_argument_group("goodreads")
    gr.add_argument("--genre", help="by-genre file set, e.g. poetry, children")
    gr.add_argument("--interactions", type=Path, help="explicit interactions file")
    gr.add_argument("--books", type=Path, help="explicit book metadata file")
    gr.add_argument(
        "--time-field",
        default="date_added",
        choices=("date_added", "date_updated", "read_at", "started_at"),
    )
    gr.add_argument("--only-read", action="store_true", help="keep is_read entries only")
    gr.add_argument("--title-field", default="title", choices=("title", "title_without_series"))
    return parser


def _config(args: argparse.Namespace) -> ProtocolConfig:
    """The protocol options of ``args``, checked (before any download or reading).

    Raises:
        PrepareError: a split fraction that is not positive, fractions not summing to 1, or
            another inconsistent value.
    """
    if not all(f > 0 for f in args.split):  # also NaN
        raise PrepareError(
            f"--split: every fraction must be positive (each split gets users), "
            f"got {' '.join(map(str, args.split))}"
        )
    config = ProtocolConfig(
        max_history=args.max_history,
        num_candidates=args.num_candidates,
        split=tuple(args.split),
        seed=args.seed,
        min_user_interactions=args.min_user_interactions,
        min_item_interactions=args.min_item_interactions,
        min_rating=args.min_rating,
        include_item_ids=not args.no_item_ids,
        max_examples_per_user=args.max_examples_per_user,
    )
    config.validate()
    return config


def _run(args: argparse.Namespace) -> int:
    log = (lambda _msg: None) if args.quiet else print
    spec = get_dataset(args.dataset)
    config = _config(args)
    raw = args.raw
    if args.download:
        if raw is not None:
            raise PrepareError("pass either --raw or --download, not both")
        raw = download_dataset(
            spec.name,
            args.cache_dir,
            genre=args.genre,
            url=args.url,
            sha256=args.sha256,
            timeout=args.timeout,
            log=log,
        )
    elif raw is None and not (spec.name == "goodreads" and args.interactions):
        raise PrepareError(f"{spec.name}: pass --raw DIR (holding {spec.files}) or --download")
    options = ReaderOptions(
        lenient=args.lenient,
        encoding=args.encoding,
        genre=args.genre,
        interactions=args.interactions,
        books=args.books,
        time_field=args.time_field,
        only_read=args.only_read,
        title_field=args.title_field,
    )
    start = time.perf_counter()
    stats = prepare(spec.name, raw, args.out, config, options)
    elapsed = time.perf_counter() - start
    log(format_stats(stats))
    if args.lenient:
        log(f"malformed lines skipped: {sum(stats['skipped_lines'].values())}")
    files = ", ".join(stats["files"].values())
    log(f"\nwrote {files}, stats.json to {args.out} in {elapsed:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sdpo-prepare``.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        0 on success, 2 for usage or input errors (message on stderr; the traceback too
        with ``SDPO_DEBUG=1`` or ``--debug``), 130 when interrupted.
    """
    argv = strip_debug_flag(argv)
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["catalogue"]:
        from sdpo_lightning.data.catalogue import catalogue_main

        return catalogue_main(args_in[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return _run(args)
    except (PrepareError, UserError) as err:
        return report("sdpo-prepare", err)
    except KeyboardInterrupt:
        print("sdpo-prepare: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
