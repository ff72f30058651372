"""Training-curve figures from the tidy metrics table (one or several runs).

Every helper takes the table of :func:`~sdpo_lightning.analysis.load_runs`, draws on
``ax`` (a new figure when ``None``) and returns the axes. Runs keep one colour across
figures; splits are told apart by line style (train solid, val dashed, test dotted).
With ``smooth`` in ``(0, 1)`` the raw curve stays faint behind a TensorBoard-style
exponential moving average.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from sdpo_lightning.analysis._deps import require_pandas, require_pyplot

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

XAxis = Literal["step", "epoch"]
LINESTYLES = {"train": "-", "val": "--", "test": ":", "other": "-."}
_SUFFIXES = ("", "_step", "_epoch")
_PER_NEGATIVE = re.compile(r"^rewards/rejected_k(\d+)(_step|_epoch)?$")


def smooth(values: Sequence[float], weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average.

    Args:
        values: the raw curve.
        weight: smoothing in ``[0, 1)``; 0 returns the values unchanged.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    values = np.asarray(values, dtype=float)
    out = np.empty_like(values)
    last, count = 0.0, 0
    for i, v in enumerate(values):
        if np.isfinite(v):
            last, count = last * weight + (1.0 - weight) * v, count + 1
        out[i] = last / (1.0 - weight**count) if count else np.nan
    return out


def _runs(df: pd.DataFrame, runs: Sequence[str] | None) -> list[str]:
    return list(runs) if runs is not None else list(dict.fromkeys(df["run"]))


def _colors(df: pd.DataFrame) -> dict[str, str]:
    return {run: f"C{i % 10}" for i, run in enumerate(dict.fromkeys(df["run"]))}


def resolve_metric(df: pd.DataFrame, split: str, metric: str) -> str | None:
    """The logged name for ``metric``: itself, else its ``_step`` / ``_epoch`` variant."""
    present = set(df.loc[df["split"] == split, "metric"])
    return next((metric + s for s in _SUFFIXES if metric + s in present), None)


def has_metric(df: pd.DataFrame, split: str, metric: str) -> bool:
    """Whether any run logged ``split/metric`` (with or without a step/epoch suffix)."""
    return resolve_metric(df, split, metric) is not None


def series(
    df: pd.DataFrame, run: str, split: str, metric: str, x: XAxis = "step"
) -> tuple[np.ndarray, np.ndarray]:
    """One run's curve as ``(x, y)`` arrays (empty when not logged).

    With ``x="epoch"`` the values are averaged per epoch.
    """
    rows = df[(df["run"] == run) & (df["split"] == split)]
    name = resolve_metric(rows, split, metric)
    rows = rows[rows["metric"] == name].dropna(subset=["value"]).sort_values("step")
    if x == "epoch":
        rows = rows.dropna(subset=["epoch"]).groupby("epoch", as_index=False)["value"].mean()
    return rows[x].to_numpy(dtype=float), rows["value"].to_numpy(dtype=float)


def _new_axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    plt = require_pyplot()
    return plt.subplots(figsize=(6.4, 4.0), layout="constrained")[1]


def _draw(ax: Axes, x: np.ndarray, y: np.ndarray, weight: float, label: str, **style: Any) -> None:
    """Plots one curve; with ``weight`` > 0 the raw values stay faint behind the EMA."""
    if weight > 0 and len(y) > 1:
        raw = {**style, "alpha": 0.25 * style.get("alpha", 1.0), "linewidth": 0.8, "gid": None}
        ax.plot(x, y, label="_raw", **raw)
        y = smooth(y, weight)
    marker = {"marker": "o", "markersize": 3} if len(y) <= 30 else {}
    ax.plot(x, y, label=label, **{**marker, **style})


def _finish(ax: Axes, drawn: int, title: str, ylabel: str, x: XAxis) -> Axes:
    ax.set_title(title)
    ax.set_xlabel("training step" if x == "step" else "epoch")
    ax.set_ylabel(ylabel)
    if drawn:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    else:
        warnings.warn(f"no data for {title!r}", stacklevel=3)
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    return ax


def plot_metric(
    df: pd.DataFrame,
    metric: str,
    splits: Sequence[str] = ("train",),
    *,
    runs: Sequence[str] | None = None,
    smooth: float = 0.0,
    x: XAxis = "step",
    ax: Axes | None = None,
    title: str | None = None,
    ylabel: str | None = None,
) -> Axes:
    """Plots ``split/metric`` for every run and split.

    Args:
        df: the tidy metrics table.
        metric: the name after the split, e.g. ``"rewards/chosen"``.
        splits: which splits to draw.
        runs: which runs (default: all, in table order).
        smooth: EMA weight in ``[0, 1)``.
        x: ``"step"`` or ``"epoch"`` (epoch means).
        ax: axes to draw on.
        title: the title (default: the metric name).
        ylabel: the y label (default: the metric name).
    """
    ax, colors, drawn = _new_axes(ax), _colors(df), 0
    many_splits = len(splits) > 1
    for run in _runs(df, runs):
        for split in splits:
            xs, ys = series(df, run, split, metric, x)
            if len(ys):
                label = f"{run} · {split}" if many_splits else run
                star = {"marker": "*", "markersize": 11} if split == "test" else {}
                _draw(
                    ax,
                    xs,
                    ys,
                    smooth if split == "train" else 0.0,
                    label,
                    color=colors[run],
                    linestyle=LINESTYLES.get(split, "-"),
                    **star,
                )
                drawn += 1
    return _finish(ax, drawn, title or f"{'/'.join(splits)} {metric}", ylabel or metric, x)


def plot_chosen_reward(df: pd.DataFrame, split: str = "train", **kw: Any) -> Axes:
    """Reward of the preferred item, ``β·(log πθ(p|x) − log πref(p|x))``."""
    kw.setdefault("title", f"{split}: reward of the preferred item")
    return plot_metric(df, "rewards/chosen", (split,), ylabel="reward", **kw)


def plot_margins(df: pd.DataFrame, split: str = "train", **kw: Any) -> Axes:
    """Reward margin: chosen reward minus the (mean) rejected reward."""
    kw.setdefault("title", f"{split}: reward margin (chosen − rejected)")
    return plot_metric(df, "rewards/margins", (split,), ylabel="margin", **kw)


def plot_accuracies(df: pd.DataFrame, split: str = "train", **kw: Any) -> Axes:
    """Reward accuracy: share of examples whose chosen reward beats every rejected one."""
    kw.setdefault("title", f"{split}: reward accuracy (chosen beats all negatives)")
    ax = plot_metric(df, "rewards/accuracies", (split,), ylabel="accuracy", **kw)
    ax.set_ylim(-0.02, 1.02)
    return ax


def plot_losses(df: pd.DataFrame, splits: Sequence[str] = ("train", "val"), **kw: Any) -> Axes:
    """Training and validation loss (the validation curve is never smoothed)."""
    kw.setdefault("title", "loss")
    return plot_metric(df, "loss", splits, ylabel="loss", **kw)


def plot_val_hr1(df: pd.DataFrame, splits: Sequence[str] = ("val", "test"), **kw: Any) -> Axes:
    """Validation HR@1 over training (and the test HR@1 point, when logged)."""
    kw.setdefault("title", "HR@1 (validation; ★ test)" if "test" in splits else "HR@1")
    ax = plot_metric(df, "hr@1", splits, ylabel="HR@1", **kw)
    ax.set_ylim(bottom=0)
    return ax


def plot_logps(
    df: pd.DataFrame,
    split: str = "train",
    *,
    runs: Sequence[str] | None = None,
    smooth: float = 0.0,
    x: XAxis = "step",
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Policy log-likelihood of the chosen (solid) and rejected (dashed) completions."""
    ax, colors, drawn = _new_axes(ax), _colors(df), 0
    weight = smooth if split == "train" else 0.0
    for run in _runs(df, runs):
        for which, style in (("chosen", "-"), ("rejected", "--")):
            xs, ys = series(df, run, split, f"logps/{which}", x)
            if len(ys):
                _draw(ax, xs, ys, weight, f"{run} · {which}", color=colors[run], linestyle=style)
                drawn += 1
    return _finish(
        ax, drawn, title or f"{split}: log πθ of chosen vs rejected", "log-probability", x
    )


def negative_indices(df: pd.DataFrame, split: str = "train") -> list[int]:
    """The ``k`` of every logged per-negative reward ``split/rewards/rejected_k{k}``."""
    names = df.loc[df["split"] == split, "metric"].unique()
    return sorted({int(m.group(1)) for n in names if (m := _PER_NEGATIVE.match(n))})


def plot_rejected_rewards(
    df: pd.DataFrame,
    split: str = "train",
    *,
    per_negative: bool = True,
    runs: Sequence[str] | None = None,
    smooth: float = 0.0,
    x: XAxis = "step",
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Rewards of the dispreferred items: the mean (thick) and each negative (thin).

    Per-negative curves (``rewards/rejected_k0`` …) are drawn when logged; without them
    the mean alone is shown.
    """
    ax, colors, drawn = _new_axes(ax), _colors(df), 0
    names = _runs(df, runs)
    weight = smooth if split == "train" else 0.0
    require_pyplot()
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    for run in names:
        xs, ys = series(df, run, split, "rewards/rejected", x)
        if len(ys):
            _draw(
                ax,
                xs,
                ys,
                weight,
                f"{run} · mean",
                color=colors[run],
                linewidth=2.2,
                gid=f"{run}/mean",
            )
            drawn += 1
        ks = negative_indices(df[df["run"] == run], split) if per_negative else []
        for i, k in enumerate(ks):
            xs, ys = series(df, run, split, f"rewards/rejected_k{k}", x)
            single = len(names) == 1
            _draw(
                ax,
                xs,
                ys,
                weight,
                f"k{k}" if single else "_per_negative",
                color=cmap(i / max(len(ks) - 1, 1)) if single else colors[run],
                linewidth=0.9,
                alpha=0.8 if single else 0.45,
                gid=f"{run}/k{k}",
            )
            drawn += 1
    if len(names) > 1 and any(line.get_label() == "_per_negative" for line in ax.get_lines()):
        ax.plot([], [], color="grey", linewidth=0.9, alpha=0.6, label="thin: each negative")
    return _finish(ax, drawn, title or f"{split}: rewards of the dispreferred items", "reward", x)


def plot_overview(
    df: pd.DataFrame, *, smooth: float = 0.0, x: XAxis = "step", runs: Sequence[str] | None = None
) -> Figure:
    """A 2×3 dashboard: loss, chosen, rejected, margins, accuracies, HR@1."""
    require_pandas()
    plt = require_pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), layout="constrained")
    kw = {"smooth": smooth, "x": x, "runs": runs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plot_losses(df, ax=axes[0, 0], **kw)
        plot_chosen_reward(df, ax=axes[0, 1], **kw)
        plot_rejected_rewards(df, ax=axes[0, 2], **kw)
        plot_margins(df, ax=axes[1, 0], **kw)
        plot_accuracies(df, ax=axes[1, 1], **kw)
        plot_val_hr1(df, ax=axes[1, 2], **kw)
    return fig
