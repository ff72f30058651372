"""Reward-curve analysis of S-DPO runs: tidy metric tables, figures, ``sdpo-plots``.

Needs the ``analysis`` extra (``pip install sdpo_lightning[analysis]``): pandas and
matplotlib are imported when a function first needs them, so importing this package
works without them.

Typical use (see ``notebooks/reward_curves.ipynb``)::

    from sdpo_lightning import analysis as sa

    df = sa.load_runs(["runs/sdpo_k3", "runs/dpo"])      # tidy: run, split, metric, ...
    sa.plot_chosen_reward(df, smooth=0.6)
    sa.plot_hr1_vs_negatives(sa.run_table(["runs/*"]))
"""

from sdpo_lightning.analysis._deps import INSTALL_HINT, MissingExtraError
from sdpo_lightning.analysis.cli import main, render_figures
from sdpo_lightning.analysis.discovery import (
    NoLogsError,
    discover_logs,
    expand_run_dirs,
    expand_runs,
    find_runs,
    named_runs,
)
from sdpo_lightning.analysis.loaders import (
    COLUMNS,
    load_run,
    load_runs,
    read_csv_metrics,
    read_tensorboard_metrics,
    split_name,
)
from sdpo_lightning.analysis.plots import (
    has_metric,
    negative_indices,
    plot_accuracies,
    plot_chosen_reward,
    plot_logps,
    plot_losses,
    plot_margins,
    plot_metric,
    plot_overview,
    plot_rejected_rewards,
    plot_val_hr1,
    series,
    smooth,
)
from sdpo_lightning.analysis.runinfo import (
    read_run_config,
    read_summary_hr1,
    run_hr1,
    run_table,
)
from sdpo_lightning.analysis.study import plot_hr1_vs_negatives
from sdpo_lightning.analysis.synthetic import write_synthetic_run

__all__ = [
    "COLUMNS",
    "INSTALL_HINT",
    "MissingExtraError",
    "NoLogsError",
    "discover_logs",
    "expand_run_dirs",
    "expand_runs",
    "find_runs",
    "has_metric",
    "load_run",
    "load_runs",
    "main",
    "named_runs",
    "negative_indices",
    "plot_accuracies",
    "plot_chosen_reward",
    "plot_hr1_vs_negatives",
    "plot_logps",
    "plot_losses",
    "plot_margins",
    "plot_metric",
    "plot_overview",
    "plot_rejected_rewards",
    "plot_val_hr1",
    "read_csv_metrics",
    "read_run_config",
    "read_summary_hr1",
    "read_tensorboard_metrics",
    "render_figures",
    "run_hr1",
    "run_table",
    "series",
    "smooth",
    "split_name",
    "write_synthetic_run",
]
