"""What a run was: objective, number of negatives, β and its HR@1.

Read from the ``config.yaml`` LightningCLI saves (in the run directory or a logger
directory), Lightning's ``hparams.yaml``, the optional ``summary.json`` of the test
report, and — for HR@1 — the logged ``test/hr@1`` / ``val/hr@1`` curves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sdpo_lightning.analysis._deps import require_pandas
from sdpo_lightning.analysis.discovery import named_runs
from sdpo_lightning.analysis.loaders import Source, load_run

if TYPE_CHECKING:
    import pandas as pd

HR1Source = Literal["auto", "summary", "test", "val"]
RUN_TABLE_COLUMNS = [
    "run",
    "path",
    "objective",
    "method",
    "num_negatives",
    "beta",
    "hr@1",
    "hr@1_source",
]
_KEYS = {
    "num_negatives": ("num_negatives", "n_negatives", "num_neg"),
    "objective": ("objective", "loss_type"),
    "beta": ("beta",),
    "method": ("method",),
}


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Yields every ``(key, value)`` of a nested mapping, depth first."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield str(key), value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _find(config: Mapping[str, Any], keys: Sequence[str]) -> Any:
    """The first value under one of ``keys``, looking in ``model``, then ``data``,
    then anywhere in the config."""
    for section in (config.get("model"), config.get("data"), config):
        for key, value in _walk(section):
            if key == "objective" and key in keys and isinstance(value, Mapping):
                value = value.get("name")  # the grouped layout: model.objective.name
            if key in keys and value is not None and not isinstance(value, (Mapping, list)):
                return value
    return None


def _config_files(run_dir: Path) -> list[Path]:
    """``config.yaml`` files first, then ``hparams.yaml``; shallowest first."""
    found = []
    for name in ("config.yaml", "hparams.yaml"):
        found += sorted(run_dir.rglob(name), key=lambda p: (len(p.parts), str(p)))
    return found


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """Reads ``objective``, ``num_negatives``, ``beta`` and ``method`` (a display label)
    from a run's saved config.

    Both LightningCLI layouts are understood (``model.init_args.objective.num_negatives`` and
    ``model.objective.num_negatives``), and so is the flat one of earlier versions
    (``model.num_negatives``); the data section is searched too, since negative sampling
    may be configured there. Missing values are ``None``.
    """
    import yaml

    info: dict[str, Any] = dict.fromkeys(_KEYS)
    for path in _config_files(Path(run_dir)):
        try:
            config = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(config, Mapping):
            continue
        for field, keys in _KEYS.items():
            if info[field] is None:
                info[field] = _find(config, keys)
    if info["num_negatives"] is not None:
        info["num_negatives"] = int(info["num_negatives"])
    if info["beta"] is not None:
        info["beta"] = float(info["beta"])
    return info


def read_summary_hr1(run_dir: str | Path, protocol: str = "generation") -> float | None:
    """HR@1 of ``protocols.<protocol>.hr@1.value`` in the run's ``summary.json``."""
    for path in sorted(Path(run_dir).rglob("summary.json"), key=lambda p: len(p.parts)):
        try:
            entry = json.loads(path.read_text())["protocols"][protocol]["hr@1"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        value = entry.get("value") if isinstance(entry, Mapping) else entry
        if isinstance(value, (int, float)) and not math.isnan(value):
            return float(value)
    return None


def read_summary_method(run_dir: str | Path) -> str | None:
    """The ``method`` label recorded in the run's ``summary.json``, if any."""
    for path in sorted(Path(run_dir).rglob("summary.json"), key=lambda p: len(p.parts)):
        try:
            method = json.loads(path.read_text()).get("method")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(method, str):
            return method
    return None


def _last(metrics: pd.DataFrame, split: str, metric: str) -> float | None:
    rows = metrics[(metrics["split"] == split) & (metrics["metric"] == metric)]
    rows = rows.dropna(subset=["value"])
    return None if rows.empty else float(rows.sort_values("step")["value"].iloc[-1])


def run_hr1(
    run_dir: str | Path, metrics: pd.DataFrame | None = None, prefer: HR1Source = "auto"
) -> tuple[float | None, str | None]:
    """A run's HR@1 and where it came from.

    Args:
        run_dir: the run directory.
        metrics: its tidy metrics (loaded when ``None`` and needed).
        prefer: ``"summary"`` (``summary.json``, generation protocol), ``"test"`` (last
            logged ``test/hr@1``), ``"val"`` (last ``val/hr@1``), or ``"auto"``: the
            first of these three that exists.

    Returns:
        ``(value, source)``, or ``(None, None)`` when the run has no HR@1.
    """
    order = ("summary", "test", "val") if prefer == "auto" else (prefer,)
    for kind in order:
        if kind == "summary":
            value = read_summary_hr1(run_dir)
        else:
            if metrics is None:
                try:
                    metrics = load_run(run_dir)
                except FileNotFoundError:
                    continue
            value = _last(metrics, kind, "hr@1")
        if value is not None:
            return value, kind if kind == "summary" else f"{kind}/hr@1"
    return None, None


def run_table(
    run_dirs: Sequence[str | Path],
    names: Sequence[str] | None = None,
    *,
    num_negatives: Mapping[str, int] | None = None,
    objectives: Mapping[str, str] | None = None,
    hr1: HR1Source = "auto",
    source: Source = "auto",
    metrics: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per run: objective, number of negatives, β and HR@1.

    The table drives :func:`~sdpo_lightning.analysis.plot_hr1_vs_negatives`; values
    missing from a run's config can be supplied (or corrected) per run name through
    ``num_negatives`` / ``objectives``, or by editing the returned table.

    Args:
        run_dirs: run directories (glob patterns allowed).
        names: run names; directory names by default.
        num_negatives: overrides ``{run name: K}``.
        objectives: overrides ``{run name: objective}``.
        hr1: where HR@1 is read from; see :func:`run_hr1`.
        source: which logger to read logged HR@1 from; see :func:`load_run`.
        metrics: the runs' tidy table, if already loaded with the same names.
    """
    pd = require_pandas()
    rows = []
    for run_dir, name in named_runs(run_dirs, names):
        info = read_run_config(run_dir)
        if metrics is not None:
            logged = metrics[metrics["run"] == name]
        else:
            logged = None if hr1 == "summary" else load_run(run_dir, name, source)
        value, origin = run_hr1(run_dir, logged, hr1)
        rows.append(
            {
                "run": name,
                "path": str(run_dir),
                "objective": (objectives or {}).get(name, info["objective"]),
                "method": info["method"] or read_summary_method(run_dir),
                "num_negatives": (num_negatives or {}).get(name, info["num_negatives"]),
                "beta": info["beta"],
                "hr@1": value,
                "hr@1_source": origin,
            }
        )
    table = pd.DataFrame(rows, columns=RUN_TABLE_COLUMNS)
    table["num_negatives"] = table["num_negatives"].astype("Int64")
    return table
