"""Compact predictions files: ``compact`` drops the target and prompt, ``expand`` gives them
back from the data file and the row index, byte for byte; the readers take the compact
``.gz`` copy wherever they take the plain file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from sdpo_lightning.evaluation.compact_predictions import (
    DERIVED_FIELDS,
    compact_file,
    compact_record,
    expand_records,
    main,
)
from sdpo_lightning.evaluation.report import (
    ReportError,
    comparison_table,
    find_predictions,
    hits_by_index,
    read_predictions,
    write_predictions,
)

TEMPLATE = "Heard {history}. Next from {candidates}?\nAnswer:"

#: three test rows: history, candidates, target
ROWS = [
    {
        "historyList": ["Abba", "Blur"],
        "itemList": ["Cher", "Dido", "Enya"],
        "trueSelection": "Dido",
    },
    {"historyList": ["Cher"], "itemList": ["Abba", "Björk", "Blur"], "trueSelection": "Abba"},
    {
        "historyList": ["Enya", "Dido", "Abba"],
        "itemList": ["Blur", "Cher"],
        "trueSelection": "Cher",
    },
]

#: what ``sdpo test`` writes for them (prompts rendered by hand from TEMPLATE)
FULL = [
    {
        "index": 0,
        "target": "Dido",
        "prompt": "Heard Abba, Blur. Next from Cher, Dido, Enya?\nAnswer:",
        "generated": " Cher",
        "parsed": "Cher",
        "valid": True,
        "correct": False,
        "target_rank": 2,
        "top_item": "Cher",
        "scores": [-0.5, -1.25, -3.0],
    },
    {
        "index": 1,
        "target": "Abba",
        "prompt": "Heard Cher. Next from Abba, Björk, Blur?\nAnswer:",
        "generated": " Abba",
        "parsed": "Abba",
        "valid": True,
        "correct": True,
        "target_rank": 1,
        "top_item": "Abba",
        "scores": [-0.1, -2.0, None],
    },
    {
        "index": 2,
        "target": "Cher",
        "prompt": "Heard Enya, Dido, Abba. Next from Blur, Cher?\nAnswer:",
        "generated": " Zappa",
        "parsed": None,
        "valid": False,
        "correct": False,
        "target_rank": 1,
        "top_item": "Cher",
        "scores": [-4.0, -0.75],
    },
]


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path]:
    """``(predictions.jsonl, data file)`` of a run on ROWS (records written shuffled)."""
    data = tmp_path / "test.json"
    data.write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    pred = write_predictions(tmp_path / "run", [FULL[2], FULL[0], FULL[1]])
    return pred, data


def test_compact_record_drops_only_the_derived_fields() -> None:
    assert DERIVED_FIELDS == ("target", "prompt")
    assert compact_record(FULL[0]) == {
        "index": 0,
        "generated": " Cher",
        "parsed": "Cher",
        "valid": True,
        "correct": False,
        "target_rank": 2,
        "top_item": "Cher",
        "scores": [-0.5, -1.25, -3.0],
    }


def test_round_trip_is_byte_identical(run: tuple[Path, Path]) -> None:
    pred, data = run
    original = pred.read_bytes()
    packed = compact_file(pred, keep_source=True)
    assert packed == pred.with_name("predictions.jsonl.gz")
    compact = [json.loads(line) for line in gzip.decompress(packed.read_bytes()).splitlines()]
    assert [r["index"] for r in compact] == [2, 0, 1]
    assert all(not set(r) & set(DERIVED_FIELDS) for r in compact)
    expanded = expand_records(read_predictions(packed), data, prompt_templates=TEMPLATE)
    out = write_predictions(pred.parent, expanded, name="expanded.jsonl")
    assert out.read_bytes() == original


def test_compact_bytes_are_reproducible(run: tuple[Path, Path], tmp_path: Path) -> None:
    pred, _ = run
    a = compact_file(pred, tmp_path / "a.jsonl.gz", keep_source=True)
    b = compact_file(a, tmp_path / "b.jsonl.gz")  # compacting a compact file changes nothing
    assert a.read_bytes() == b.read_bytes()
    want = "".join(
        json.dumps(compact_record(FULL[i]), ensure_ascii=False) + "\n" for i in (2, 0, 1)
    )
    assert gzip.open(a).read() == want.encode("utf-8")


def test_readers_take_the_compact_copy(run: tuple[Path, Path]) -> None:
    pred, _ = run
    hits = hits_by_index(pred)
    full = read_predictions(pred)
    compact_file(pred)  # removes the plain file
    assert not pred.exists() and find_predictions(pred) == pred.with_name("predictions.jsonl.gz")
    assert hits_by_index(pred) == hits == {0: (0.0, 0.0), 1: (1.0, 1.0), 2: (0.0, 1.0)}
    assert read_predictions(pred) == [compact_record(r) for r in full]
    assert find_predictions(pred.with_name("other.jsonl")) is None


def test_report_pairs_compact_predictions(tmp_path: Path) -> None:
    """The Rel.Ipv p-value of sdpo-report is the same with compact predictions."""
    from sdpo_lightning.evaluation.report import build_summary, write_summary

    def make(name: str, flips: int) -> Path:
        recs = [
            dict(r, index=i, correct=(i % 3 == 0) != (i < flips), valid=True)
            for i, r in enumerate(FULL * 10)
        ]
        write_predictions(tmp_path / name, recs)
        meta = {"run": name, "method": name, "dataset": "d", "model": "m"}
        return write_summary(tmp_path / name, build_summary(recs, meta, n_boot=50))

    paths = [make("a", 0), make("b", 7)]
    before = comparison_table(paths, baseline_last=True, n_boot=200)
    assert "(p=" in before
    for name in ("a", "b"):
        compact_file(tmp_path / name / "predictions.jsonl")
    assert comparison_table(paths, baseline_last=True, n_boot=200) == before


def test_baseline_records_without_prompt(tmp_path: Path, run: tuple[Path, Path]) -> None:
    _, data = run
    recs = [{k: v for k, v in r.items() if k != "prompt"} for r in FULL]
    pred = write_predictions(tmp_path / "base", recs)
    original = pred.read_bytes()
    expanded = expand_records(read_predictions(compact_file(pred)), data)
    assert write_predictions(tmp_path / "base", expanded).read_bytes() == original


def test_hybrid_prompts_mark_every_title(run: tuple[Path, Path]) -> None:
    _, data = run
    [rec] = expand_records([compact_record(FULL[1])], data, prompt_templates=TEMPLATE, hybrid=True)
    assert rec["prompt"] == (
        "Heard Cher<item>. Next from Abba<item>, Björk<item>, Blur<item>?\nAnswer:"
    )


def test_wrong_data_file_is_refused(run: tuple[Path, Path], tmp_path: Path) -> None:
    _, data = run
    with pytest.raises(ReportError, match="no row 3"):
        expand_records([dict(compact_record(FULL[0]), index=3)], data)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([ROWS[1], ROWS[0], ROWS[2]]), encoding="utf-8")
    with pytest.raises(ReportError, match="another data file"):
        expand_records([compact_record(FULL[1])], other)


def test_cli(run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred, data = run
    original = pred.read_text(encoding="utf-8")
    assert main(["compact", str(pred)]) == 0
    assert not pred.exists() and "predictions.jsonl.gz" in capsys.readouterr().out
    out = tmp_path / "full.jsonl"
    assert (
        main(
            [
                "expand",
                str(pred) + ".gz",
                "--data",
                str(data),
                "--prompt-templates",
                TEMPLATE,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.read_text(encoding="utf-8") == original
    assert main(["expand", str(pred) + ".gz", "--data", str(tmp_path / "missing.json")]) == 2
    assert "compact_predictions: error:" in capsys.readouterr().err
