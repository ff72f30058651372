"""Find the runs and their log files below the directories a user points at.

A run is the ``trainer.default_root_dir`` of one ``sdpo fit`` / ``test``: the directory
above its loggers' ``<name>/version_N`` directories. Log files (``metrics.csv``,
``events.out.tfevents.*``) are found recursively, so the layout below a run does not
matter, and a directory holding several runs (``runs/quickstart/{sft,sdpo}``) stands for
all of them.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


class NoLogsError(FileNotFoundError):
    """A run directory holds neither a ``metrics.csv`` nor TensorBoard event files."""


@dataclass
class RunLogs:
    """The log files found under one run directory, oldest logger version first."""

    run_dir: Path
    csv_files: list[Path] = field(default_factory=list)
    event_files: list[Path] = field(default_factory=list)


def natural_key(path: Path) -> list[object]:
    """Sort key ordering ``version_2`` before ``version_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def discover_logs(run_dir: str | Path) -> RunLogs:
    """Finds every ``metrics.csv`` and ``events.out.tfevents.*`` file below ``run_dir``.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        NoLogsError: it exists but holds no log file of either kind.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory does not exist: {root}")
    logs = RunLogs(
        run_dir=root,
        csv_files=sorted(root.rglob("metrics.csv"), key=natural_key),
        event_files=sorted(root.rglob("events.out.tfevents*"), key=natural_key),
    )
    if not logs.csv_files and not logs.event_files:
        raise NoLogsError(
            f"no Lightning logs under {root}: expected a CSVLogger `metrics.csv` or "
            "TensorBoardLogger `events.out.tfevents.*` file somewhere below it"
        )
    return logs


def _run_root(log_file: Path, top: Path) -> Path:
    """The run a log file belongs to: ``<run>/<logger name>/version_N/<file>`` → ``<run>``.

    Files outside a ``version_N`` directory are attributed to ``top``.
    """
    if re.fullmatch(r"version_\d+", log_file.parent.name):
        root = log_file.parents[2]
        if root == top or top in root.parents:
            return root
    return top


def find_runs(run_dir: str | Path) -> list[Path]:
    """The runs below ``run_dir``: ``[run_dir]`` itself, or, when it only holds other runs'
    directories (e.g. ``runs/quickstart/{sft,sdpo}``), each of them.

    A run is the directory above its loggers' ``<name>/version_N`` directories.

    Raises:
        NoLogsError: no log file below ``run_dir``.
    """
    logs = discover_logs(run_dir)
    top = logs.run_dir
    roots = {_run_root(f, top) for f in logs.csv_files + logs.event_files}
    if top in roots:
        return [top]
    return sorted(roots, key=natural_key)


def expand_runs(patterns: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Expands glob patterns (``runs/*``) and directories that hold several runs into
    ``(run directory, default name)`` pairs, keeping the order given.

    A run's default name is its directory name; runs found inside a directory given (or
    matched) are named ``<that directory>/<relative path>``, e.g. ``quickstart/sdpo``.
    """
    out: list[tuple[Path, str]] = []
    for pattern in patterns:
        text = str(pattern)
        if glob.has_magic(text):
            matches = sorted(
                (Path(p) for p in glob.glob(text) if Path(p).is_dir()), key=natural_key
            )
            if not matches:
                raise FileNotFoundError(f"no run directory matches {text!r}")
        else:
            matches = [Path(text)]
        for given in matches:
            base = given.resolve().name
            out += [
                (run, base if run == given else f"{base}/{run.relative_to(given)}")
                for run in find_runs(given)
            ]
    return out


def expand_run_dirs(patterns: Sequence[str | Path]) -> list[Path]:
    """The run directories of :func:`expand_runs`."""
    return [run for run, _ in expand_runs(patterns)]


def named_runs(
    patterns: Sequence[str | Path], names: Sequence[str] | None = None
) -> list[tuple[Path, str]]:
    """:func:`expand_runs` with ``names`` applied, or default names made unique."""
    runs = expand_runs(patterns)
    if names is not None:
        if len(names) != len(runs):
            raise ValueError(
                f"{len(names)} names given for {len(runs)} runs: "
                + ", ".join(str(run) for run, _ in runs)
            )
        return [(run, name) for (run, _), name in zip(runs, names, strict=False)]
    out: list[tuple[Path, str]] = []
    for run, name in runs:
        parts = run.resolve().parts
        depth = 2
        while name in {n for _, n in out} and depth <= len(parts):
            name, depth = "/".join(parts[-depth:]), depth + 1
        out.append((run, name))
    return out
