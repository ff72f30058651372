"""``sdpo-plots``: render the reward-curve figures of one or more runs to image files.

Example::

    sdpo-plots runs/sdpo_k3 runs/dpo --out figures --smooth 0.6

writes one image per figure (those whose metrics were logged) and prints their paths.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sdpo_lightning.analysis._deps import MissingExtraError, require_pyplot

#: figure file stem → (plot helper name, (split, metric) that must have been logged).
FIGURES: dict[str, tuple[str, tuple[str, str]]] = {
    "loss": ("plot_losses", ("train", "loss")),
    "rewards_chosen": ("plot_chosen_reward", ("train", "rewards/chosen")),
    "rewards_rejected": ("plot_rejected_rewards", ("train", "rewards/rejected")),
    "rewards_margins": ("plot_margins", ("train", "rewards/margins")),
    "rewards_accuracies": ("plot_accuracies", ("train", "rewards/accuracies")),
    "logps": ("plot_logps", ("train", "logps/chosen")),
    "val_hr1": ("plot_val_hr1", ("val", "hr@1")),
}


def render_figures(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    smooth: float = 0.0,
    x: str = "step",
    source: str = "auto",
    num_negatives: Mapping[str, int] | None = None,
    fmt: str = "png",
    dpi: int = 120,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Renders every available figure for ``run_dirs`` into ``out_dir``.

    Figures whose metrics no run logged are skipped (and reported through ``log``);
    the HR@1-vs-negatives chart is drawn when at least one run has both a K and an HR@1.

    Returns:
        The paths written, in :data:`FIGURES` order, then ``hr1_vs_negatives``.

    Raises:
        NoLogsError: a run directory holds no logs.
    """
    plt = require_pyplot("Agg")
    from sdpo_lightning.analysis import plots, study
    from sdpo_lightning.analysis.loaders import load_runs
    from sdpo_lightning.analysis.runinfo import run_table

    log = log or (lambda message: print(message, file=sys.stderr))
    out = _output_dir(out_dir)
    df = load_runs(run_dirs, names, source)  # type: ignore[arg-type]
    written: list[Path] = []

    def save(ax: object, stem: str) -> None:
        path = out / f"{stem}.{fmt}"
        ax.figure.savefig(path, dpi=dpi)  # type: ignore[attr-defined]
        plt.close(ax.figure)  # type: ignore[attr-defined]
        written.append(path)

    for stem, (helper, (split, metric)) in FIGURES.items():
        if not plots.has_metric(df, split, metric):
            log(f"skipped {stem}: no run logged {split}/{metric}")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            save(getattr(plots, helper)(df, smooth=smooth, x=x), stem)
    table = run_table(run_dirs, names, num_negatives=num_negatives, source=source, metrics=df)  # type: ignore[arg-type]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            ax = study.plot_hr1_vs_negatives(table, kind="bar" if len(table) > 1 else "line")
        for warning in caught:
            log(f"hr1_vs_negatives: {warning.message}")
        save(ax, "hr1_vs_negatives")
    except ValueError as err:
        log(f"skipped hr1_vs_negatives: {err}")
    return written


def _output_dir(out_dir: str | Path) -> Path:
    """``out_dir``, created if missing.

    Raises:
        ConfigError: it exists and is not a directory, or cannot be created.
    """
    from sdpo_lightning.errors import ConfigError

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--out {out}: exists and is not a directory; give a directory for the figures"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or err
        raise ConfigError(f"--out {out}: cannot create the directory ({reason})") from None
    return out


def _negatives(pairs: Sequence[str]) -> dict[str, int]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.rpartition("=")
        if not sep or not name or not value.isdigit():
            raise argparse.ArgumentTypeError(f"--negatives expects RUN=K, got {pair!r}")
        out[name] = int(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``sdpo-plots`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="sdpo-plots",
        description="Render S-DPO reward curves, losses, HR@1 and the HR@1-vs-negatives "
        "chart of Lightning runs (CSV or TensorBoard logs) to image files.",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run directories (searched recursively for logs; globs ok)",
    )
    parser.add_argument("--out", "-o", required=True, help="output directory")
    parser.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        help="EMA smoothing weight in [0, 1) for training curves (default 0)",
    )
    parser.add_argument("--names", nargs="+", help="run names (default: directory names)")
    parser.add_argument("--x", choices=("step", "epoch"), default="step", help="x axis")
    parser.add_argument(
        "--source",
        choices=("auto", "csv", "tensorboard"),
        default="auto",
        help="which logger's files to read (default: both, CSV first)",
    )
    parser.add_argument(
        "--negatives",
        nargs="+",
        default=[],
        metavar="RUN=K",
        help="number of negatives per run, overriding config.yaml",
    )
    parser.add_argument(
        "--format",
        dest="fmt",
        choices=("png", "pdf", "svg"),
        default="png",
        help="image format (default png)",
    )
    parser.add_argument("--dpi", type=int, default=120, help="resolution (default 120)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sdpo-plots``; prints the written files, one per line.

    Returns:
        0 on success, 2 on a usage error or a run directory without logs (one
        ``sdpo-plots: error:`` line; the traceback too with ``SDPO_DEBUG=1`` or ``--debug``).
    """
    from sdpo_lightning.errors import UserError, report, strip_debug_flag

    argv = strip_debug_flag(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.smooth < 1.0:
        parser.error(f"--smooth must be in [0, 1), got {args.smooth}")
    try:
        negatives = _negatives(args.negatives)
        files = render_figures(
            args.runs,
            args.out,
            names=args.names,
            smooth=args.smooth,
            x=args.x,
            source=args.source,
            num_negatives=negatives,
            fmt=args.fmt,
            dpi=args.dpi,
        )
    except (
        FileNotFoundError,
        ValueError,
        argparse.ArgumentTypeError,
        MissingExtraError,
        UserError,
    ) as err:
        return report("sdpo-plots", err)
    for path in files:
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
