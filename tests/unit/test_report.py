"""Tests of summary.json building/writing and the sdpo-report comparison table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdpo_lightning.evaluation.bootstrap import paired_bootstrap_pvalue
from sdpo_lightning.evaluation.report import (
    ReportError,
    build_summary,
    comparison_table,
    format_summary_table,
    load_summary,
    main,
    read_predictions,
    write_predictions,
    write_summary,
)


def _records(correct: list[int], valid: list[int], ranks: list[int] | None = None) -> list[dict]:
    out = []
    for i, (c, v) in enumerate(zip(correct, valid, strict=False)):
        rec = {
            "index": i,
            "generated": "x",
            "parsed": "t" if c else None,
            "target": "t",
            "correct": bool(c),
            "valid": bool(v),
        }
        if ranks is not None:
            rec["target_rank"] = ranks[i]
        out.append(rec)
    return out


def _run(root: Path, method: str, dataset: str, correct: list[int], valid: list[int]) -> Path:
    run_dir = root / f"{method}-{dataset}"
    records = _records(correct, valid)
    write_predictions(run_dir, records)
    meta = {"run": run_dir.name, "method": method, "dataset": dataset, "model": "tiny"}
    return write_summary(run_dir, build_summary(records, meta, n_boot=50))


def test_build_summary_schema_and_values() -> None:
    records = _records([1, 0, 0, 1], [1, 1, 0, 1], ranks=[1, 2, 4, 1])
    meta = {"run": "r1", "method": "S-DPO", "dataset": "LastFM", "model": "m", "split": "test"}
    summary = build_summary(records, meta, n_boot=200, seed=1)
    assert summary["schema_version"] == 1 and summary["n_examples"] == 4
    assert summary["predictions"] == "predictions.jsonl" and summary["split"] == "test"
    assert summary["bootstrap"] == {"n_boot": 200, "alpha": 0.05, "seed": 1}
    gen, rank = summary["protocols"]["generation"], summary["protocols"]["ranking"]
    assert list(gen) == ["hr@1", "valid_ratio", "hr@1_given_valid"]
    assert list(rank) == ["hr@1", "hr@3", "hr@5", "ndcg@5", "ndcg@10", "mrr"]
    assert gen["hr@1"]["value"] == 0.5 and gen["hr@1"]["n"] == 4
    assert gen["valid_ratio"]["value"] == 0.75
    assert (
        gen["hr@1_given_valid"]["value"] == pytest.approx(2 / 3)
        and gen["hr@1_given_valid"]["n"] == 3
    )
    assert rank["mrr"]["value"] == pytest.approx((1 + 0.5 + 0.25 + 1) / 4)
    assert rank["hr@3"]["value"] == 0.75
    for metrics in summary["protocols"].values():
        for m in metrics.values():
            assert m["ci_low"] <= m["value"] <= m["ci_high"]
    assert build_summary(records, meta, n_boot=200, seed=1) == summary  # deterministic


def test_build_summary_no_valid_and_errors(tmp_path: Path) -> None:
    meta = {"run": "r", "method": "m", "dataset": "d", "model": "x"}
    summary = build_summary(_records([0, 0], [0, 0]), meta)
    entry = summary["protocols"]["generation"]["hr@1_given_valid"]
    assert entry == {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    path = write_summary(tmp_path / "run", summary)
    assert "NaN" not in path.read_text() and load_summary(path) == summary
    with pytest.raises(ReportError, match="unique integer"):
        build_summary([{"index": 0, "correct": True, "valid": True}] * 2, meta)
    with pytest.raises(ReportError, match="meta needs"):
        build_summary(_records([1], [1]), {"run": "r"})
    with pytest.raises(ReportError, match="correct but not valid"):
        build_summary(_records([1], [0]), meta)


def test_format_summary_table() -> None:
    meta = {"run": "r1", "method": "S-DPO", "dataset": "LastFM", "model": "m"}
    summary = build_summary(_records([1, 1], [1, 1]), meta, n_boot=10)
    assert format_summary_table(summary) == "\n".join(
        [
            "S-DPO on LastFM (m), run r1",
            "protocol    metric            value   95% CI            n",
            "generation  hr@1              1.0000  [1.0000, 1.0000]  2",
            "generation  valid_ratio       1.0000  [1.0000, 1.0000]  2",
            "generation  hr@1_given_valid  1.0000  [1.0000, 1.0000]  2",
        ]
    )


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    paths = [
        _run(tmp_path, "DPO", "LastFM", [1, 0, 0, 1], [1, 1, 0, 1]),
        _run(tmp_path, "DPO", "MovieLens", [1, 0, 0, 0], [1, 1, 0, 0]),
        _run(tmp_path, "S-DPO", "LastFM", [1, 1, 0, 1], [1, 1, 1, 1]),
        _run(tmp_path, "S-DPO", "MovieLens", [1, 1, 0, 0], [1, 1, 1, 0]),
    ]
    (paths[1].parent / "predictions.jsonl").unlink()  # no p-value for MovieLens
    return paths


def test_comparison_table_exact(runs: list[Path], tmp_path: Path, capsys) -> None:
    p = paired_bootstrap_pvalue([1, 1, 0, 1], [1, 0, 0, 1], n_boot=200, seed=0)
    expected = "\n".join(
        [
            "| Method | LastFM HR@1 | LastFM ValidRatio | MovieLens HR@1 | MovieLens ValidRatio"
            " | Rel.Ipv LastFM | Rel.Ipv MovieLens |",
            "|:---|---:|---:|---:|---:|---:|---:|",
            f"| DPO | 0.5000 | 0.7500 | 0.2500 | 0.5000 | +50.00% (p={p:.4f}) | +100.00% |",
            "| S-DPO | 0.7500 | 1.0000 | 0.5000 | 0.7500 | — | — |",
            "",
            "Rel.Ipv: relative HR@1 improvement of S-DPO over each row.",
            "p: two-sided paired bootstrap test on per-example hits (n_boot=200, seed=0).",
            "",
        ]
    )
    assert comparison_table(runs, baseline_last=True, n_boot=200) == expected
    out = tmp_path / "tables" / "table.md"
    argv = [str(r) for r in runs] + ["--baseline-last", "--n-boot", "200", "--out", str(out)]
    assert main(argv) == 0
    assert out.read_text(encoding="utf-8") == expected
    assert capsys.readouterr().out == expected


def test_comparison_table_without_rel_and_glob(runs: list[Path], tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "*" / "summary.json")]) == 0  # a quoted glob is expanded
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0]
        == "| Method | LastFM HR@1 | LastFM ValidRatio | MovieLens HR@1 | MovieLens ValidRatio |"
    )
    assert lines[2:] == [
        "| DPO | 0.5000 | 0.7500 | 0.2500 | 0.5000 |",
        "| S-DPO | 0.7500 | 1.0000 | 0.5000 | 0.7500 |",
    ]


def test_mismatched_indices(runs: list[Path]) -> None:
    pred = runs[2].parent / "predictions.jsonl"
    records = read_predictions(pred)
    records[0]["index"] = 99
    write_predictions(pred.parent, records)
    with pytest.raises(ReportError, match="different example indices"):
        comparison_table(runs, baseline_last=True, n_boot=10)


def test_missing_and_malformed_files(runs: list[Path], tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope" / "summary.json"
    assert main([str(runs[0]), str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReportError, match=f"{bad}: malformed JSON"):
        load_summary(bad)
    bad.write_text(json.dumps({"method": "m", "dataset": "d", "protocols": {}}))
    with pytest.raises(ReportError, match=r"missing protocols\.generation\.hr@1"):
        load_summary(bad)
    with pytest.raises(ReportError, match="already given by"):
        comparison_table([runs[0], runs[0]])
    pred = runs[0].parent / "predictions.jsonl"
    pred.write_text('{"index": 0, "correct": true}\nnot json\n')
    with pytest.raises(ReportError, match=f"{pred}:2: malformed JSON"):
        comparison_table(runs, baseline_last=True, n_boot=10)


def test_summary_ranking_matches_ranking_metrics(tmp_path: Path) -> None:
    import torch

    from sdpo_lightning.evaluation.metrics import RankingMetrics, rank_of_target

    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40, 20), generator=gen).float()
    scores[0, 3] = float("-inf")
    target = torch.randint(0, 20, (40,), generator=gen)
    ranks = rank_of_target(scores, target).tolist()
    records = [
        {
            "index": i,
            "correct": r == 1,
            "valid": True,
            "target_rank": r,
            "scores": scores[i].tolist(),
        }
        for i, r in enumerate(ranks)
    ]
    path = write_predictions(tmp_path, records)
    assert read_predictions(path)[0]["scores"][3] is None  # -inf stored as null
    meta = {"run": "r", "method": "m", "dataset": "d", "model": "x"}
    summary = build_summary(records, meta, n_boot=10)
    metric = RankingMetrics()
    metric.update(scores, target)
    for name, value in metric.compute().items():
        assert summary["protocols"]["ranking"][name]["value"] == pytest.approx(
            float(value), abs=1e-6
        )
