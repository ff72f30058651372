"""``notebooks/reward_curves.ipynb`` runs end to end under ``nbclient`` and draws its figures.

The notebook reads its run list from ``SDPO_RUNS``. The runs are genuine: two tiny
``sdpo fit`` + ``sdpo test`` runs (S-DPO K=3 and DPO K=1) on the synthetic data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "reward_curves.ipynb"
#: figure-producing cells, identified by the helper they call.
FIGURE_CELLS = [
    "plot_losses",
    "plot_chosen_reward",
    "plot_rejected_rewards",
    "plot_margins",
    "plot_logps",
    "plot_val_hr1",
    "plot_hr1_vs_negatives",
]


@pytest.fixture(scope="module")
def notebook_runs(tmp_path_factory, synthetic_dir) -> list[Path]:
    """Two tiny real training runs (fit with validation generation, then test)."""
    from sdpo_lightning.cli import cli_main
    from tests.conftest import tiny_config

    root = tmp_path_factory.mktemp("nb_runs")
    runs = []
    for name, objective, k in (("sdpo_k3", "sdpo", 3), ("dpo", "dpo", 1)):
        cfg = tiny_config(
            root, synthetic_dir, name, objective=objective, num_negatives=k, val_generation=True
        )
        cli_main(["fit", "-c", str(cfg), "--trainer.max_steps", "6"])
        cli_main(["test", "-c", str(cfg)])
        runs.append(root / name)
    return runs


def _images(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_executes_and_draws_every_figure(notebook_runs, monkeypatch):
    monkeypatch.setenv("SDPO_RUNS", os.pathsep.join(map(str, notebook_runs)))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    for helper in FIGURE_CELLS:
        cell = next(c for c in code if f"sa.{helper}(" in c.source)
        assert _images(cell) >= 1, f"the {helper} cell drew no figure"
    cell = next(c for c in code if "run_table(" in c.source)
    table = next(o for o in cell.outputs if "data" in o)["data"]["text/plain"]
    assert "sdpo_k3" in table and "dpo" in table
