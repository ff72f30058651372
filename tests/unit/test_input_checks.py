"""Inputs refused with one line naming the file, record or setting: ambiguous candidate lists and
history strings, mistyped prediction files, split fractions, settings, model sources, plot
inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdpo_lightning.data.compact import load_compact
from sdpo_lightning.data.readers import parse_record
from sdpo_lightning.data.records import DataFormatError
from sdpo_lightning.errors import ModelSourceError, UserError
from tests.conftest import GGUF, record, require_shared


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.setenv("SDPO_DEBUG", "0")


def _one_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    return err.strip()


# ------------------------------------------------------------ candidate lists and histories
def test_candidates_equal_up_to_case_are_refused_naming_file_record_and_titles(write_json):
    path = write_json([record(), record(items=("Muse", "Blur", "MUSE", "Oasis"), target="MUSE")])
    with pytest.raises(DataFormatError) as err:
        load_compact(path)
    assert str(err.value) == (
        f"{path}, record 1: candidates 'Muse' (position 0) and 'MUSE' (position 2) differ only "
        "in case, blanks or punctuation, which answer parsing ignores: a generated answer could "
        "not tell them apart; rename one or drop it from the list"
    )


@pytest.mark.parametrize("pair", [("Heat", "heat."), ("The  Thing", "the thing"), ("Ça", "ÇA")])
def test_candidates_equal_after_answer_normalisation_are_refused(pair):
    with pytest.raises(ValueError, match="differ only in case, blanks or punctuation"):
        parse_record(record(items=(*pair, "Other"), target="Other"))


def test_distinct_titles_stay_accepted():
    ex = parse_record(record(items=("Muse", "Muse (band)", "Mused"), target="Muse"))
    assert ex.candidates == ("Muse", "Muse (band)", "Mused")


def test_a_title_with_double_colon_next_to_a_history_string_is_refused(write_json):
    path = write_json(
        [record(history="A::B", items=("Re::Zero", "B2", "C2"), target="B2")], name="data.jsonl"
    )
    with pytest.raises(DataFormatError) as err:
        load_compact(path)
    assert str(err.value) == (
        f"{path}, line 1: title 'Re::Zero' contains '::', which also joins the titles of the "
        "historyList string; give historyList as a JSON list of titles"
    )


def test_an_ambiguous_history_string_is_refused_and_a_list_is_the_escape():
    with pytest.raises(ValueError, match=r"historyList string is ambiguous at ':B'"):
        parse_record(record(history="A:::B"))
    ex = parse_record(record(history=["Re::Zero", "A:"], items=("Re::Zero", "B2"), target="B2"))
    assert ex.history == ("Re::Zero", "A:")
    assert parse_record(record(history="A::B: C::D")).history == ("A", "B: C", "D")


def test_predict_records_may_leave_out_the_answer(write_json):
    rows = [
        record(),
        {k: v for k, v in record().items() if k != "trueSelection"},
        {**record(), "trueSelection": None},
    ]
    examples, _ = load_compact(write_json(rows), require_target=False)
    assert [ex.target for ex in examples] == ["B2", None, None]
    assert [ex.target_index for ex in examples] == [1, -1, -1]
    with pytest.raises(DataFormatError, match="record 1: missing key.s. trueSelection"):
        load_compact(write_json(rows))


def test_a_directory_as_data_file(tmp_path):
    with pytest.raises(DataFormatError) as err:
        load_compact(tmp_path)
    assert str(err.value) == f"{tmp_path}: is a directory, not a .json / .jsonl data file"


# ------------------------------------------------------------ sdpo-report
def _report_inputs(tmp_path: Path, correct: object) -> list[str]:
    from sdpo_lightning.evaluation.report import build_summary, write_predictions, write_summary

    paths = []
    for method, hits in (("A", [True, False, True]), ("B", [False, False, True])):
        run = tmp_path / method
        recs = [
            {
                "index": i,
                "target": "x",
                "generated": "x",
                "parsed": "x",
                "valid": True,
                "correct": h,
            }
            for i, h in enumerate(hits)
        ]
        write_summary(
            run,
            build_summary(
                recs,
                {
                    "run": method,
                    "method": method,
                    "dataset": "d",
                    "model": "m",
                    "predictions": "predictions.jsonl",
                },
            ),
        )
        recs[1]["correct"] = correct
        write_predictions(run, recs)
        paths.append(str(run / "summary.json"))
    return paths


@pytest.mark.parametrize("value", ["no", 0, None])
def test_report_refuses_a_correct_field_that_is_not_a_bool(tmp_path, capsys, value):
    from sdpo_lightning.evaluation.report import main

    paths = _report_inputs(tmp_path, value)
    assert main([*paths, "--baseline-last", "--n-boot", "100"]) == 2
    assert _one_line(capsys, "sdpo-report") == (
        f"sdpo-report: error: {tmp_path / 'B' / 'predictions.jsonl'}:2: 'correct' must be true or "
        f"false, got {json.dumps(value)}"
    )


def test_report_refuses_mistyped_ranks_and_summary_values(tmp_path):
    from sdpo_lightning.evaluation.report import ReportError, load_summary, read_predictions

    pred = tmp_path / "p.jsonl"
    pred.write_text('{"index": 0, "target_rank": 1}\n{"index": 1, "target_rank": "1"}\n')
    with pytest.raises(ReportError, match=r"p.jsonl:2: 'target_rank' must be an integer >= 1"):
        read_predictions(pred)
    summary = tmp_path / "summary.json"
    summary.write_text(
        json.dumps(
            {
                "method": "A",
                "dataset": "d",
                "protocols": {
                    "generation": {"hr@1": {"value": "0.5"}, "valid_ratio": {"value": 1.0}}
                },
            }
        )
    )
    with pytest.raises(ReportError, match=r"protocols.generation.hr@1.value must be a number"):
        load_summary(summary)
    assert issubclass(ReportError, UserError)


# ------------------------------------------------------------ sdpo-prepare
@pytest.mark.parametrize(
    "split, message",
    [
        (("0.9", "0.9", "0.1"), "split fractions must sum to 1, got 0.9 + 0.9 + 0.1 = 1.9"),
        (("0.8", "0.1", "0.100002"), "split fractions must sum to 1, got 0.8 + 0.1 + 0.100002"),
        (
            ("0.8", "0", "0.2"),
            "--split: every fraction must be positive (each split gets users), got 0.8 0.0 0.2",
        ),
        (("1.2", "-0.1", "-0.1"), "--split: every fraction must be positive"),
    ],
)
def test_prepare_refuses_split_fractions(tmp_path, capsys, split, message):
    from sdpo_lightning.data.prepare.cli import main

    args = [
        "movielens-100k",
        "--raw",
        str(tmp_path),
        "--out",
        str(tmp_path / "out"),
        "--split",
        *split,
    ]
    assert main(args) == 2
    assert _one_line(capsys, "sdpo-prepare").startswith(f"sdpo-prepare: error: {message}")
    assert not (tmp_path / "out").exists()


def test_split_fractions_summing_to_one_within_tolerance_pass():
    from sdpo_lightning.data.prepare.protocol import ProtocolConfig

    ProtocolConfig(split=(0.8, 0.1, 0.1000001)).validate()
    ProtocolConfig(split=(1, 0, 0)).validate()


# ------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "setting",
    [
        dict(batch_size=0),
        dict(max_length=-5),
        dict(max_length=0),
        dict(eval_batch_size=0),
        dict(num_workers=-1),
    ],
)
def test_data_module_refuses_non_positive_counts(setting):
    from sdpo_lightning.data.datamodule import RecDataModule

    name, value = next(iter(setting.items()))
    with pytest.raises(ValueError, match=rf"^{name} must be .*, got {value}$"):
        RecDataModule(**setting)


@pytest.mark.parametrize(
    "setting",
    [
        dict(learning_rate=-1e-4),
        dict(learning_rate=float("nan")),
        dict(weight_decay=-0.1),
        dict(min_lr_ratio=1.5),
        dict(warmup_steps=-1),
        dict(max_new_tokens=0),
    ],
)
def test_module_refuses_unusable_optimizer_settings(synthetic_dir, setting):
    from sdpo_lightning.training.module import SDPOModule
    from sdpo_lightning.training.module_args import grouped_kwargs

    name = next(iter(setting))
    with pytest.raises(ValueError, match=rf"^{name} must be "):
        flat = {"tokenizer_path": str(synthetic_dir / "tokenizer"), **setting}
        SDPOModule(**grouped_kwargs(flat))


# ------------------------------------------------------------ model sources
def test_a_folder_without_a_model(tmp_path):
    from sdpo_lightning.modeling.models import load_tokenizer

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelSourceError) as err:
        load_tokenizer(str(tmp_path))
    assert str(err.value) == (
        f"cannot load the model from '{tmp_path}': the folder holds no "
        "model (no config.json); to load its GGUF file give "
        f"'{tmp_path / 'm.gguf'}'"
    )


def test_missing_model_path_is_a_user_error(tmp_path):
    from sdpo_lightning.modeling.models import build_policy

    with pytest.raises(ModelSourceError, match=r"model path '.*nowhere' does not exist"):
        build_policy(str(tmp_path / "nowhere"), tokenizer=None)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "the GGUF file is empty"),
        (b"PK\x03\x04 zip", "not a GGUF file (it does not start with 'GGUF')"),
    ],
)
def test_empty_or_foreign_gguf_file(tmp_path, content, reason):
    from sdpo_lightning.modeling.models import load_tokenizer

    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelSourceError) as err:
        load_tokenizer(str(path))
    assert str(err.value) == f"cannot load the model from '{path}': {reason}"


def test_truncated_gguf_file(tmp_path):
    from sdpo_lightning.modeling.models import load_tokenizer

    path = tmp_path / "cut.gguf"
    with require_shared(GGUF).open("rb") as f:
        path.write_bytes(f.read(100_000))
    with pytest.raises(ModelSourceError) as err:
        load_tokenizer(str(path))
    assert str(err.value).startswith(
        f"cannot load the model from '{path}': the GGUF file is truncated or corrupt ("
    )


# ------------------------------------------------------------ sdpo-plots
def _run_with_metrics(tmp_path: Path, text: bytes) -> Path:
    run = tmp_path / "run"
    (run / "csv" / "version_0").mkdir(parents=True)
    (run / "csv" / "version_0" / "metrics.csv").write_bytes(text)
    return run


@pytest.mark.parametrize(
    "text, reason",
    [
        (b"", "not a readable metrics.csv (No columns to parse from file)"),
        (b"\xff\xfe\x00garbage", "not a readable metrics.csv ('utf-8' codec can't decode"),
        (
            b"epoch,step,train/loss\n0,0,1.0\n0,1,2.0,3.0,4\n",
            "not a readable metrics.csv (Error tokenizing",
        ),
        (
            b"epoch,step,train/loss\n0,0,1.0\n0,1,high\n",
            "a metrics.csv with a value that is not a number",
        ),
    ],
)
def test_plots_name_a_corrupt_metrics_file(tmp_path, capsys, text, reason):
    pytest.importorskip("matplotlib")
    from sdpo_lightning.analysis.cli import main

    run = _run_with_metrics(tmp_path, text)
    assert main([str(run), "--out", str(tmp_path / "figs")]) == 2
    line = _one_line(capsys, "sdpo-plots")
    path = run / "csv" / "version_0" / "metrics.csv"
    assert line.startswith(f"sdpo-plots: error: {path}: {reason}")


def test_plots_out_pointing_at_a_file(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from sdpo_lightning.analysis.cli import main

    run = _run_with_metrics(tmp_path, b"epoch,step,train/loss\n0,0,1.0\n")
    (tmp_path / "taken").write_text("x")
    assert main([str(run), "--out", str(tmp_path / "taken")]) == 2
    assert _one_line(capsys, "sdpo-plots") == (
        f"sdpo-plots: error: --out {tmp_path / 'taken'}: exists and is not a directory; give a "
        "directory for the figures"
    )
