"""Read Lightning's CSV and TensorBoard logs into one tidy metrics table.

The tidy table has one row per logged scalar, with the columns of :data:`COLUMNS`:

* ``run``: the run's name (its directory name unless given);
* ``split``: ``train`` / ``val`` / ``test`` (the logged name's first component), or
  ``other`` for names without a split prefix such as ``lr-AdamW``;
* ``metric``: the rest of the logged name, e.g. ``rewards/chosen`` or ``hr@1``;
* ``step``, ``epoch`` (``NaN`` when unknown), ``value``;
* ``source``: ``csv`` or ``tensorboard``.

Log files are discovered recursively (see :mod:`~sdpo_lightning.analysis.discovery`), so
the layout below a run directory does not matter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sdpo_lightning.analysis._deps import require_pandas
from sdpo_lightning.analysis.discovery import (
    NoLogsError,
    discover_logs,
    find_runs,
    named_runs,
    natural_key,
)
from sdpo_lightning.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["run", "split", "metric", "step", "epoch", "value", "source"]
SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test", "predict": "predict"}


class MetricsFileError(UserError, ValueError):
    """A ``metrics.csv`` cannot be read as a Lightning CSV log; the message names the file."""


Source = Literal["auto", "csv", "tensorboard"]
_IGNORED_TAGS = {"hp_metric", "epoch", "step"}


def split_name(name: str) -> tuple[str, str]:
    """Splits a logged name into ``(split, metric)``: ``val/rewards/chosen`` →
    ``("val", "rewards/chosen")``; names without a split prefix give ``"other"``."""
    head, sep, rest = name.partition("/")
    if sep and head in SPLITS and rest:
        return SPLITS[head], rest
    return "other", name


def _tidy(raw: pd.DataFrame, run: str, source: str) -> pd.DataFrame:
    """Turns ``(name, step, epoch, value)`` rows into the tidy columns."""
    pd = require_pandas()
    if raw.empty:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in COLUMNS})
    parts = [split_name(n) for n in raw["name"]]
    out = pd.DataFrame(
        {
            "run": run,
            "split": [p[0] for p in parts],
            "metric": [p[1] for p in parts],
            "step": raw["step"].astype("int64").to_numpy(),
            "epoch": raw["epoch"].astype("float64").to_numpy(),
            "value": raw["value"].astype("float64").to_numpy(),
            "source": source,
        }
    )
    return out[COLUMNS]


def _dtype(column: str) -> str:
    return {"step": "int64", "epoch": "float64", "value": "float64"}.get(column, "object")


def read_csv_metrics(path: str | Path, run: str = "") -> pd.DataFrame:
    """Reads one CSVLogger ``metrics.csv`` (wide, sparse rows) into the tidy table.

    Raises:
        MetricsFileError: the file is empty, not UTF-8, not CSV, or holds non-numbers.
    """
    pd = require_pandas()
    try:
        wide = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise MetricsFileError(f"{path}: not a readable metrics.csv ({_first_line(err)})") from err
    if "step" not in wide.columns:
        raise MetricsFileError(f"{path}: not a Lightning metrics.csv (no `step` column)")
    epoch = wide["epoch"] if "epoch" in wide.columns else float("nan")
    wide = wide.assign(epoch=epoch)
    names = [c for c in wide.columns if c not in _IGNORED_TAGS]
    long = wide.melt(id_vars=["step", "epoch"], value_vars=names, var_name="name")
    long = long.dropna(subset=["value", "step"])
    try:
        return _tidy(long[["name", "step", "epoch", "value"]], run, "csv")
    except (ValueError, TypeError) as err:
        raise MetricsFileError(
            f"{path}: a metrics.csv with a value that is not a number ({_first_line(err)})"
        ) from err


def _first_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def _scalar_events(path: Path) -> Iterable[tuple[str, int, float]]:
    """Yields ``(tag, step, value)`` for every scalar in one event file.

    Handles both legacy ``simple_value`` scalars (what Lightning's TensorBoardLogger
    writes through ``torch.utils.tensorboard``) and tensor-style scalars.
    """
    from tensorboard.backend.event_processing.event_file_loader import (
        LegacyEventFileLoader,
    )
    from tensorboard.util import tensor_util

    scalar_tags: set[str] = set()
    for event in LegacyEventFileLoader(str(path)).Load():
        if not event.HasField("summary"):
            continue
        for v in event.summary.value:
            kind = v.WhichOneof("value")
            if kind == "simple_value":
                yield v.tag, int(event.step), float(v.simple_value)
            elif kind == "tensor":
                if v.metadata.plugin_data.plugin_name == "scalars":
                    scalar_tags.add(v.tag)
                if v.tag in scalar_tags:
                    array = tensor_util.make_ndarray(v.tensor)
                    if array.size == 1:
                        yield v.tag, int(event.step), float(array.reshape(-1)[0])


def read_tensorboard_metrics(path: str | Path, run: str = "") -> pd.DataFrame:
    """Reads the scalars of one event file (or of every event file in a directory).

    The epoch of each row comes from the ``epoch`` scalar Lightning logs alongside the
    metrics (the latest one at or before the row's step); ``hp_metric`` is dropped.
    """
    pd = require_pandas()
    path = Path(path)
    files = sorted(path.glob("events.out.tfevents*"), key=natural_key) if path.is_dir() else [path]
    rows = [r for f in files for r in _scalar_events(f)]
    events = pd.DataFrame(rows, columns=["name", "step", "value"])
    epochs = events[events["name"] == "epoch"].drop_duplicates("step", keep="last")
    metrics = events[~events["name"].isin(_IGNORED_TAGS)]
    metrics = metrics[~metrics["name"].str.startswith("_hparams_/")]
    if epochs.empty or metrics.empty:
        metrics = metrics.assign(epoch=float("nan"))
    else:
        order = metrics.reset_index(drop=True).reset_index().sort_values("step")
        merged = pd.merge_asof(
            order,
            epochs[["step", "value"]].rename(columns={"value": "epoch"}).sort_values("step"),
            on="step",
            direction="backward",
        )
        metrics = merged.sort_values("index").drop(columns="index")
    return _tidy(metrics[["name", "step", "epoch", "value"]], run, "tensorboard")


def load_run(run_dir: str | Path, name: str | None = None, source: Source = "auto") -> pd.DataFrame:
    """Loads every metric of one run into the tidy table.

    Args:
        run_dir: the run directory (e.g. ``runs/sdpo_k3``); searched recursively.
        name: the run's name in the ``run`` column; defaults to the directory name.
        source: ``"csv"`` or ``"tensorboard"`` to read one logger only; ``"auto"`` reads
            both and keeps the CSV row where both logged the same (split, metric, step).

    Returns:
        The tidy table, sorted by split, metric and step. When a run was resumed into a
        new logger version, the later version wins for steps logged twice.

    Raises:
        NoLogsError: no log file of the requested kind exists below ``run_dir``.
        ValueError: ``run_dir`` holds several runs (see :func:`find_runs`).
    """
    pd = require_pandas()
    logs = discover_logs(run_dir)
    runs = find_runs(run_dir)
    if len(runs) > 1:
        raise ValueError(
            f"{run_dir} holds the logs of other runs ({', '.join(str(r) for r in runs)}): "
            "pass one of them, or load them all with load_runs"
        )
    name = name or Path(run_dir).resolve().name
    if source not in ("auto", "csv", "tensorboard"):
        raise ValueError(f"source must be 'auto', 'csv' or 'tensorboard', not {source!r}")
    groups: list[list[pd.DataFrame]] = [[], []]
    if source in ("auto", "csv"):
        groups[0] = [read_csv_metrics(f, name) for f in logs.csv_files]
    if source in ("auto", "tensorboard"):
        groups[1] = [read_tensorboard_metrics(f, name) for f in logs.event_files]
    if not groups[0] and not groups[1]:
        raise NoLogsError(f"no {source} logs under {run_dir}")
    keys = ["split", "metric", "step"]
    # Later logger versions override earlier ones within a source; CSV beats TensorBoard.
    parts = [
        pd.concat(nonempty).drop_duplicates(keys, keep="last")
        for nonempty in ([f for f in g if len(f)] for g in groups)
        if nonempty
    ]
    if not parts:
        return _tidy(pd.DataFrame(), name, source)
    table = pd.concat(parts).drop_duplicates(keys, keep="first")
    return table.sort_values(keys, kind="stable").reset_index(drop=True)


def load_runs(
    run_dirs: Sequence[str | Path], names: Sequence[str] | None = None, source: Source = "auto"
) -> pd.DataFrame:
    """Loads several runs into one tidy table.

    Args:
        run_dirs: run directories; glob patterns and directories holding several runs
            (see :func:`find_runs`) are expanded.
        names: one name per expanded run (default: directory names, made unique).
        source: see :func:`load_run`.
    """
    pd = require_pandas()
    frames = [load_run(run, name, source) for run, name in named_runs(run_dirs, names)]
    return pd.concat(frames, ignore_index=True)
