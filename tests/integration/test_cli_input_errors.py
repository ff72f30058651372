"""``sdpo predict`` writes its answers; bad settings and paths are one ``sdpo: error:`` line
(exit 2) naming the file or setting, never a library traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdpo_lightning.cli import cli_main
from tests.conftest import record, tiny_config
from tests.integration.test_user_errors import _error_line


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.setenv("SDPO_DEBUG", "0")


@pytest.fixture()
def cfg(tmp_path, synthetic_dir) -> Path:
    return tiny_config(tmp_path, synthetic_dir, "run", objective="sft")


def test_predict_writes_answers_for_records_without_a_target(cfg, tmp_path, synthetic_dir):
    rows = json.loads((synthetic_dir / "test.json").read_text())[:3]
    rows[0].pop("trueSelection")
    rows[1]["trueSelection"] = None
    path = tmp_path / "to_predict.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cli_main(["predict", "-c", str(cfg), "--data.predict_file", str(path)])
    preds = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").open()]
    assert [p["index"] for p in preds] == [0, 1, 2]
    for p, row in zip(preds, rows, strict=False):
        assert isinstance(p["generated"], str) and p["top_item"] in row["itemList"]
        assert p["parsed"] is None or p["parsed"] in row["itemList"]
    assert "correct" not in preds[0] and "target_rank" not in preds[1]
    assert preds[0]["target"] is None
    assert isinstance(preds[2]["correct"], bool) and preds[2]["target"] == rows[2]["trueSelection"]


def test_predict_without_a_predict_file(capsys, cfg):
    line = _error_line(capsys, "predict", "-c", str(cfg))
    assert line == "sdpo: error: no predict file configured (data.predict_file); `predict` reads it"


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("--data.max_length", "-5"),
            "invalid configuration: max_length must be a positive integer, got -5",
        ),
        (
            ("--data.batch_size", "0"),
            "invalid configuration: batch_size must be a positive integer, got 0",
        ),
        (
            ("--model.optim.learning_rate", "-1"),
            "invalid configuration: learning_rate must be a finite number >= 0, got -1.0",
        ),
    ],
)
def test_bad_settings(capsys, cfg, args, message):
    assert _error_line(capsys, "fit", "-c", str(cfg), *args) == f"sdpo: error: {message}"


def test_max_length_too_small_for_a_record(capsys, cfg, synthetic_dir):
    line = _error_line(capsys, "fit", "-c", str(cfg), "--data.max_length", "10")
    assert line.startswith(f"sdpo: error: {synthetic_dir / 'train.json'}, record ")
    assert "over max_length=10" in line


def test_a_directory_given_as_a_data_file(capsys, cfg, tmp_path):
    line = _error_line(capsys, "fit", "-c", str(cfg), "--data.train_file", str(tmp_path))
    assert line == f"sdpo: error: {tmp_path}: is a directory, not a .json / .jsonl data file"


def test_a_missing_model_directory(capsys, cfg, tmp_path):
    line = _error_line(
        capsys, "fit", "-c", str(cfg), "--model.source.model_name_or_path", str(tmp_path / "none")
    )
    assert line == f"sdpo: error: model path '{tmp_path / 'none'}' does not exist"


def test_an_unwritable_run_directory(capsys, cfg, tmp_path):
    (tmp_path / "file").write_text("x")
    root = tmp_path / "file" / "run"
    line = _error_line(capsys, "fit", "-c", str(cfg), "--trainer.default_root_dir", str(root))
    assert line == (
        f"sdpo: error: trainer.default_root_dir '{root}': cannot create or write "
        "the run directory (Not a directory); choose a writable one"
    )


def test_malformed_yaml_names_the_file(capsys, cfg, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  beta: [1\n")
    line = _error_line(capsys, "fit", "-c", str(cfg), "-c", str(bad))
    assert f"in {bad}, line 2, column 9" in line and "<unicode string>" not in line


def test_candidates_equal_up_to_case_stop_the_run(capsys, cfg, write_json):
    bad = write_json([record(items=("Heat", "Up", "HEAT", "Down"), target="Up")], name="bad.json")
    line = _error_line(capsys, "test", "-c", str(cfg), "--data.test_file", str(bad))
    assert line.startswith(
        f"sdpo: error: {bad}, record 0: candidates 'Heat' (position 0) and "
        "'HEAT' (position 2) differ only in case"
    )
