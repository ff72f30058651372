"""The paper's "study of performance": HR@1 against the number of negatives K."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np

from sdpo_lightning.analysis._deps import require_pandas, require_pyplot

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes


def _aggregate(table: pd.DataFrame, hue: str) -> pd.DataFrame:
    """Mean / min / max HR@1 per (``hue``, K), e.g. over seeds."""
    usable = table.dropna(subset=["num_negatives", "hr@1"])
    if "objective" in usable.columns:  # SFT has no negatives: its K is a config leftover
        usable = usable[usable["objective"].astype(str) != "sft"]
    left_out = sorted(set(table["run"]) - set(usable["run"]))
    if left_out:
        warnings.warn(
            "runs without a number of negatives or an HR@1 are left out of the "
            f"negatives study: {', '.join(left_out)} (pass num_negatives={{run: K}} to "
            "run_table, or fill the table's columns)",
            stacklevel=3,
        )
    if usable.empty:
        raise ValueError(
            "no run has both a number of negatives and an HR@1: the chart needs "
            "`num_negatives` (config.yaml or an override) and an HR@1 (summary.json, "
            "test/hr@1 or val/hr@1)"
        )
    labels = usable[hue].fillna(usable["objective"]) if hue != "objective" else usable[hue]
    usable = usable.assign(
        series=labels.fillna("unknown").astype(str),
        num_negatives=usable["num_negatives"].astype(int),
    )
    return (
        usable.groupby(["series", "num_negatives"], sort=True)["hr@1"]
        .agg(["mean", "min", "max", "count"])
        .reset_index()
    )


def plot_hr1_vs_negatives(
    table: pd.DataFrame,
    *,
    kind: Literal["bar", "line"] = "bar",
    hue: str = "objective",
    ax: Axes | None = None,
    title: str | None = None,
    annotate: bool = True,
) -> Axes:
    """HR@1 as a function of the number of negatives, one series per objective.

    Args:
        table: the table of :func:`~sdpo_lightning.analysis.run_table` (columns ``run``,
            ``objective``, ``num_negatives``, ``hr@1``). Several runs with the same
            objective and K (seeds) are averaged, with a min–max error bar.
        kind: ``"bar"`` (grouped bars per K) or ``"line"`` (HR@1 against K).
        hue: the column naming the series: ``"objective"``, or ``"method"`` for the
            runs' display labels (the objective where a run has none).
        ax: axes to draw on; a new figure when ``None``.
        title: the title.
        annotate: write each HR@1 value on the chart.

    Raises:
        ValueError: no run has both a K and an HR@1, or ``kind`` / ``hue`` is unknown.
    """
    require_pandas()
    if kind not in ("bar", "line"):
        raise ValueError(f"kind must be 'bar' or 'line', not {kind!r}")
    if hue not in table.columns:
        raise ValueError(f"hue {hue!r} is not a column of the run table")
    stats = _aggregate(table, hue)
    plt = require_pyplot()
    if ax is None:
        ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")[1]
    ks = sorted(stats["num_negatives"].unique())
    names = list(dict.fromkeys(stats["series"]))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        rows = stats[stats["series"] == name]
        mean = rows["mean"].to_numpy()
        err = np.vstack([mean - rows["min"].to_numpy(), rows["max"].to_numpy() - mean])
        err = err if (rows["count"] > 1).any() else None
        if kind == "bar":
            xs = (
                np.array([ks.index(k) for k in rows["num_negatives"]])
                + (j - (len(names) - 1) / 2) * width
            )
            ax.bar(
                xs, mean, width=width * 0.95, yerr=err, capsize=3, label=name, color=f"C{j % 10}"
            )
        else:
            xs = rows["num_negatives"].to_numpy()
            ax.errorbar(xs, mean, yerr=err, marker="o", capsize=3, label=name, color=f"C{j % 10}")
        if annotate:
            for xv, yv in zip(xs, mean, strict=False):
                ax.annotate(
                    f"{yv:.3f}",
                    (xv, yv),
                    textcoords="offset points",
                    xytext=(0, 4),
                    ha="center",
                    fontsize="small",
                )
    if kind == "bar":
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    else:
        ax.set_xticks(ks)
    ax.set_xlabel("number of negatives K")
    ax.set_ylabel("HR@1")
    ax.set_ylim(0, max(1e-3, float(stats["max"].max())) * 1.15)
    ax.set_title(title or "HR@1 vs number of negatives")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title=hue, fontsize="small")
    return ax
