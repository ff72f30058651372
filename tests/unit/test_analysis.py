"""Loaders, run info, plot helpers and the ``sdpo-plots`` command of ``analysis``.

Fixture logs are written by Lightning's real ``CSVLogger`` / ``TensorBoardLogger``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402

from sdpo_lightning import analysis as sa  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
#: (step, epoch, metrics) as the LightningModule would log them.
LOGGED = [
    (0, 0, {"train/loss": 1.386, "train/rewards/chosen": 0.0, "train/rewards/rejected_k0": 0.0}),
    (1, 0, {"train/loss": 1.2, "train/rewards/chosen": 0.25, "train/rewards/rejected_k0": -0.5}),
    (1, 0, {"val/loss": 1.1, "val/hr@1": 0.3, "lr-AdamW": 1e-4}),
    (2, 1, {"train/loss": 0.9, "train/rewards/chosen": 0.5, "train/rewards/rejected_k0": -1.0}),
    (3, 1, {"val/loss": 0.8, "val/hr@1": 0.45, "test/hr@1": 0.5}),
]


def write_logs(run_dir: Path, loggers=("csv", "tb"), logged=LOGGED, version=0) -> Path:
    """Logs ``logged`` through real Lightning loggers, like a Trainer would."""
    made = {
        "csv": CSVLogger(run_dir, name="csv", version=version),
        "tb": TensorBoardLogger(run_dir, name="tb", version=version),
    }
    active = [made[name] for name in loggers]
    for step, epoch, metrics in logged:
        for logger in active:
            logger.log_metrics({**metrics, "epoch": epoch}, step=step)
    for logger in active:
        logger.log_hyperparams({"objective": "sdpo", "num_negatives": 1})  # adds hp_metric
        logger.save()
        logger.finalize("success")
    return run_dir


def expected_rows() -> set[tuple[str, str, int, float]]:
    return {
        (*sa.split_name(name), step, float(epoch))
        for step, epoch, metrics in LOGGED
        for name in metrics
    }


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> Path:
    return write_logs(tmp_path_factory.mktemp("both") / "run")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Synthetic runs: S-DPO K=1/3 (CSV + TB), DPO (TB only, no per-negative rewards)."""
    root = tmp_path_factory.mktemp("runs")
    return [
        sa.write_synthetic_run(root / "sdpo_k1", num_negatives=1, steps=12),
        sa.write_synthetic_run(root / "sdpo_k3", num_negatives=3, steps=12),
        sa.write_synthetic_run(
            root / "dpo",
            objective="dpo",
            num_negatives=1,
            steps=12,
            loggers=["tensorboard"],
            per_negative=False,
            write_summary=False,
        ),
    ]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("train/rewards/chosen", ("train", "rewards/chosen")),
        ("val/hr@1", ("val", "hr@1")),
        ("validation/loss", ("val", "loss")),
        ("lr-AdamW", ("other", "lr-AdamW")),
        ("train", ("other", "train")),
        ("weird/x", ("other", "weird/x")),
    ],
)
def test_split_name(name, expected):
    assert sa.split_name(name) == expected


@pytest.mark.parametrize(
    "reader, pattern",
    [
        (sa.read_csv_metrics, "csv/version_0/metrics.csv"),
        (sa.read_tensorboard_metrics, "tb/version_0"),
    ],
)
def test_readers_return_the_logged_values_in_tidy_form(both, reader, pattern):
    df = reader(both / pattern, run="r")
    assert list(df.columns) == sa.COLUMNS
    assert set(zip(df.split, df.metric, df.step, df.epoch, strict=False)) == expected_rows()
    assert len(df) == sum(len(m) for _, _, m in LOGGED)  # no hp_metric, epoch, _hparams_
    assert (df.run == "r").all()
    loss = df[(df.split == "train") & (df.metric == "loss")].sort_values("step")
    np.testing.assert_allclose(loss.value, [1.386, 1.2, 0.9], rtol=1e-6)


def test_load_run_merges_sources_preferring_csv(both):
    auto = sa.load_run(both)
    assert set(auto.source) == {"csv"} and auto.run.iloc[0] == "run"
    assert not auto.duplicated(["split", "metric", "step"]).any()
    tb = sa.load_run(both, name="x", source="tensorboard")
    assert set(tb.source) == {"tensorboard"} and set(tb.run) == {"x"}
    keys = ["split", "metric", "step"]
    merged = auto.merge(tb, on=keys, suffixes=("_csv", "_tb"))
    assert len(merged) == len(auto) == len(tb)
    np.testing.assert_allclose(merged.value_csv, merged.value_tb, rtol=1e-6)


def test_load_run_reads_tensorboard_only_and_fills_csv_gaps(tmp_path):
    run = write_logs(tmp_path / "tb_only", loggers=("tb",))
    df = sa.load_run(run)
    assert set(df.source) == {"tensorboard"} and len(df) == len(expected_rows())
    with pytest.raises(sa.NoLogsError):
        sa.load_run(run, source="csv")
    extra = [(5, 2, {"train/only_in_tb": 1.0})]
    write_logs(tmp_path / "mixed", loggers=("csv",))
    write_logs(tmp_path / "mixed", loggers=("tb",), logged=LOGGED + extra)
    mixed = sa.load_run(tmp_path / "mixed")
    assert mixed[mixed.metric == "only_in_tb"].source.tolist() == ["tensorboard"]


def test_later_logger_version_wins_on_overlapping_steps(tmp_path):
    first = [(s, 0, {"train/loss": 1.0}) for s in range(5)]
    resumed = [(s, 0, {"train/loss": 2.0}) for s in range(3, 8)]
    write_logs(tmp_path, ("csv",), first, version=0)
    write_logs(tmp_path, ("csv",), resumed, version=1)
    df = sa.load_run(tmp_path).sort_values("step")
    assert df.step.tolist() == list(range(8))
    assert df.value.tolist() == [1.0] * 3 + [2.0] * 5


def test_missing_logs_raise_clear_errors(tmp_path):
    (tmp_path / "empty" / "csv").mkdir(parents=True)
    with pytest.raises(sa.NoLogsError, match="no Lightning logs under .*empty"):
        sa.load_run(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sa.load_runs([tmp_path / "absent"])
    with pytest.raises(FileNotFoundError, match="no run directory matches"):
        sa.expand_run_dirs([str(tmp_path / "nothing*")])


def test_load_runs_expands_globs_and_names_runs(runs):
    df = sa.load_runs([str(runs[0].parent / "sdpo_*"), runs[2]])
    assert list(dict.fromkeys(df.run)) == ["sdpo_k1", "sdpo_k3", "dpo"]
    named = sa.load_runs(runs[:2], names=["a", "b"])
    assert set(named.run) == {"a", "b"}
    with pytest.raises(ValueError, match="2 names given for 1 runs"):
        sa.load_runs(runs[:1], names=["a", "b"])


def test_directories_holding_several_runs_are_expanded(tmp_path):
    for stage in ("sft", "sdpo"):
        write_logs(tmp_path / "quickstart" / stage, ("csv", "tb"))
    write_logs(tmp_path / "quickstart" / "sdpo", ("csv",), version=1)  # resumed: same run
    write_logs(tmp_path / "sdpo", ("tb",))
    assert sa.find_runs(tmp_path / "quickstart" / "sdpo") == [tmp_path / "quickstart" / "sdpo"]
    assert [name for _, name in sa.named_runs([tmp_path / "quickstart", tmp_path / "sdpo"])] == [
        "quickstart/sdpo",
        "quickstart/sft",
        "sdpo",
    ]
    df = sa.load_runs([str(tmp_path / "*")])
    assert set(df.run) == {"quickstart/sdpo", "quickstart/sft", "sdpo"}
    assert df.groupby("run").size().nunique() == 1  # stages were not merged
    with pytest.raises(ValueError, match="holds the logs of other runs"):
        sa.load_run(tmp_path / "quickstart")


@pytest.mark.parametrize(
    "config",
    [
        {
            "model": {
                "class_path": "m.M",
                "init_args": {
                    "objective": "dpo_k",
                    "num_negatives": 5,
                    "beta": 0.1,
                    "method": "DPO-5",
                },
            }
        },
        {
            "model": {"objective": "dpo_k", "beta": 0.1, "method": "DPO-5"},
            "data": {"num_negatives": 5},
        },
        {
            "model": {
                "objective": {"name": "dpo_k", "beta": 0.1, "num_negatives": 5},
                "output": {"method": "DPO-5"},
            }
        },
    ],
)
def test_read_run_config_understands_lightningcli_layouts(tmp_path, config):
    import yaml

    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "config.yaml").write_text(yaml.safe_dump(config))
    assert sa.read_run_config(tmp_path) == {
        "objective": "dpo_k",
        "num_negatives": 5,
        "beta": 0.1,
        "method": "DPO-5",
    }
    assert sa.read_run_config(tmp_path / "csv" / "missing") == dict.fromkeys(
        ["num_negatives", "objective", "beta", "method"]
    )


def test_run_table_reads_config_hr1_sources_and_overrides(runs, tmp_path):
    table = sa.run_table(runs).set_index("run")
    assert table.loc["sdpo_k3", "num_negatives"] == 3
    assert table.loc["dpo", "objective"] == "dpo"
    assert table.loc["sdpo_k3", "hr@1_source"] == "summary"
    assert table.loc["dpo", "hr@1_source"] == "test/hr@1"
    (tmp_path / "summary.json").write_text(
        json.dumps({"protocols": {"generation": {"hr@1": {"value": 0.61}}}})
    )
    assert sa.read_summary_hr1(tmp_path) == 0.61
    val_only = write_logs(tmp_path / "val", ("csv",), LOGGED[:3])
    over = sa.run_table([val_only], num_negatives={"val": 9}, objectives={"val": "x"})
    assert over.iloc[0][["num_negatives", "hr@1", "hr@1_source", "objective"]].tolist() == [
        9,
        0.3,
        "val/hr@1",
        "x",
    ]


def test_smooth_is_a_debiased_ema():
    np.testing.assert_array_equal(sa.smooth([1.0, 5.0, 2.0], 0.0), [1.0, 5.0, 2.0])
    np.testing.assert_allclose(sa.smooth([3.0] * 4, 0.9), [3.0] * 4)
    out = sa.smooth([0.0, 10.0, np.nan], 0.5)
    assert out[0] == 0.0 and 0.0 < out[1] < 10.0 and out[2] == out[1]
    with pytest.raises(ValueError):
        sa.smooth([1.0], 1.0)


def labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


@pytest.mark.parametrize(
    "helper", [sa.plot_chosen_reward, sa.plot_margins, sa.plot_accuracies, sa.plot_val_hr1]
)
def test_curve_helpers_draw_one_line_per_run(runs, helper):
    ax = helper(sa.load_runs(runs), smooth=0.6)
    assert len([lb for lb in labels(ax) if "test" not in lb]) == 3
    assert all(len(line.get_xdata()) for line in ax.get_lines())


def test_loss_logps_and_rejected_rewards(runs):
    df = sa.load_runs(runs)
    assert labels(sa.plot_losses(df)) == [
        f"{r} · {s}" for r in ("sdpo_k1", "sdpo_k3", "dpo") for s in ("train", "val")
    ]
    assert len(labels(sa.plot_logps(df, x="epoch"))) == 6
    gids = [ln.get_gid() for ln in sa.plot_rejected_rewards(df, smooth=0.5).get_lines()]
    assert sorted(g for g in gids if g) == sorted(
        [
            "sdpo_k1/mean",
            "sdpo_k1/k0",
            "sdpo_k3/mean",
            "sdpo_k3/k0",
            "sdpo_k3/k1",
            "sdpo_k3/k2",
            "dpo/mean",
        ]
    )  # DPO logged no per-negative rewards: mean only
    assert sa.negative_indices(df[df.run == "sdpo_k3"]) == [0, 1, 2]
    assert labels(sa.plot_rejected_rewards(df, per_negative=False)) == [
        "sdpo_k1 · mean",
        "sdpo_k3 · mean",
        "dpo · mean",
    ]


def test_missing_metric_warns_and_says_so(runs):
    with pytest.warns(UserWarning, match="no data"):
        ax = sa.plot_metric(sa.load_runs(runs[:1]), "rewards/nothing")
    assert ax.texts[0].get_text() == "not logged"
    assert len(sa.plot_overview(sa.load_runs(runs)).axes) == 6


@pytest.mark.parametrize("kind", ["bar", "line"])
def test_hr1_vs_negatives(runs, kind):
    table = sa.run_table(runs)
    ax = sa.plot_hr1_vs_negatives(table, kind=kind)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dpo", "sdpo"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3"]
    heights = sorted(p.get_height() for p in ax.patches) if kind == "bar" else None
    if kind == "bar":
        assert heights == pytest.approx(sorted(table["hr@1"]))
    with pytest.warns(UserWarning, match="left out.*sdpo_k3"):
        sa.plot_hr1_vs_negatives(table.assign(num_negatives=[1, None, 1]), kind=kind)
    by_method = sa.plot_hr1_vs_negatives(
        table.assign(method=["S-DPO", None, "Vanilla"]), kind=kind, hue="method"
    )
    assert [t.get_text() for t in by_method.get_legend().get_texts()] == [
        "S-DPO",
        "Vanilla",
        "sdpo",
    ]  # a run without a label falls back to its objective
    with pytest.raises(ValueError, match="no run has both"), pytest.warns(UserWarning):
        sa.plot_hr1_vs_negatives(table.assign(**{"hr@1": None}))


def test_sdpo_plots_command_writes_pngs(runs, tmp_path, capsys):
    out = tmp_path / "figs"
    assert (
        sa.main([*map(str, runs), "--out", str(out), "--smooth", "0.6", "--negatives", "dpo=1"])
        == 0
    )
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == [
        f"{stem}.png"
        for stem in (
            "loss",
            "rewards_chosen",
            "rewards_rejected",
            "rewards_margins",
            "rewards_accuracies",
            "logps",
            "val_hr1",
            "hr1_vs_negatives",
        )
    ]
    for path in map(Path, printed):
        assert path.parent == out and path.stat().st_size > 1000
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_sdpo_plots_command_errors(tmp_path, capsys):
    (tmp_path / "no_logs").mkdir()
    assert sa.main([str(tmp_path / "no_logs"), "--out", str(tmp_path / "o")]) == 2
    assert "no Lightning logs under" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sa.main([str(tmp_path), "--out", str(tmp_path), "--smooth", "1.5"])
    with pytest.raises(SystemExit):
        sa.main(["--out", str(tmp_path)])


def test_package_imports_without_the_extra_and_names_it(both):
    code = (
        "import sys; sys.modules['pandas'] = sys.modules['matplotlib'] = None\n"
        "import sdpo_lightning.analysis as sa\n"
        "try:\n    sa.load_run(sys.argv[1])\n"
        "except ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(both)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pip install sdpo_lightning[analysis]" in result.stdout


def test_sft_runs_stay_out_of_the_negatives_study(runs):
    """SFT trains on no negatives: its config's num_negatives must not place it at some K."""
    table = sa.run_table(runs)
    with_sft = table.assign(objective=["sft"] + list(table["objective"][1:]))
    ax = sa.plot_hr1_vs_negatives(with_sft, kind="bar")
    assert "sft" not in [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(ax.patches) == len(table) - 1
