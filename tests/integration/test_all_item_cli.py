"""``sdpo test`` with the all-item protocol on a tiny model and tiny data: the catalogue from
``sdpo-prepare catalogue``, ``summary.json`` / ``predictions.jsonl``, ``sdpo-report``, and the
one-line errors for a bad catalogue or setting."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from sdpo_lightning.cli import cli_main
from sdpo_lightning.data.prepare.cli import main as prepare_main
from sdpo_lightning.evaluation.report import main as report_main
from tests.conftest import tiny_config
from tests.integration.test_user_errors import _error_line


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.setenv("SDPO_DEBUG", "0")


@pytest.fixture(scope="module")
def catalogue(synthetic_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("catalogue") / "catalogue.json"
    files = [str(synthetic_dir / f"{s}.json") for s in ("train", "valid", "test")]
    assert prepare_main(["catalogue", *files, "--out", str(out)]) == 0
    return out


def _cfg(tmp_path, synthetic_dir, catalogue, name="run", **model):
    settings = dict(
        objective="sft",
        eval_protocols=["ranking", "all_item"],
        catalogue_file=str(catalogue),
        top_n=10,
        beam_width=12,
        **model,
    )
    return tiny_config(tmp_path, synthetic_dir, name, **settings)


def test_sdpo_test_all_item(tmp_path, synthetic_dir, catalogue, capsys):
    cfg = _cfg(tmp_path, synthetic_dir, catalogue)
    cli_main(["test", "-c", str(cfg)])
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    preds = [json.loads(line) for line in (run / "predictions.jsonl").open()]
    rows = json.loads((synthetic_dir / "test.json").read_text())
    cat = json.loads(catalogue.read_text())
    assert len(preds) == 8 == summary["n_examples"]
    assert (
        summary["catalogue"]["n_items"] == len(cat)
        and summary["catalogue"]["history_rule"] == "excluded"
    )
    metrics = summary["protocols"]["all_item"]
    assert set(metrics) == {
        "hr@1",
        "hr@5",
        "hr@10",
        "ndcg@5",
        "ndcg@10",
        "mrr",
        "valid_ratio",
        "generation_hr@1",
        "coverage@10",
        "popularity@10",
        "target_popularity",
        "popularity_lift@10",
        "novelty@10",
        "target_novelty",
    }  # no @20: top_n 10
    assert "ranking" in summary["protocols"]  # the candidate-list protocol unchanged beside it
    titles = {c["title"] for c in cat}
    for p in preds:
        part, row = p["all_item"], rows[p["index"]]
        assert len(part["items"]) == len(set(part["items"])) == 10 and set(part["items"]) <= titles
        assert not set(part["items"]) & set(row["historyList"])  # the history rule
        assert part["scores"] == sorted(part["scores"], reverse=True)
        rank = part["target_rank"]
        assert rank == (
            part["items"].index(p["target"]) + 1 if p["target"] in part["items"] else None
        )
        assert "movie" in part["prompt"] and "Choose" not in part["prompt"]  # history-only preset
        assert isinstance(part["valid"], bool) and part["parsed"] in titles | {None}
    hits = [p["all_item"]["target_rank"] is not None for p in preds]
    assert metrics["hr@10"]["value"] == pytest.approx(sum(hits) / 8)
    mrr = sum(1 / p["all_item"]["target_rank"] for p in preds if p["all_item"]["target_rank"]) / 8
    assert metrics["mrr"]["value"] == pytest.approx(mrr)
    top = {t for p in preds for t in p["all_item"]["items"]}
    assert metrics["coverage@10"]["value"] == pytest.approx(len(top) / len(cat))
    assert math.isfinite(metrics["novelty@10"]["value"])
    # sdpo-report renders the protocol; the same predictions under another name: p = 1
    other = tmp_path / "other"
    shutil.copytree(run, other)
    s2 = json.loads((other / "summary.json").read_text())
    (other / "summary.json").write_text(json.dumps({**s2, "method": "copy"}))
    capsys.readouterr()
    assert (
        report_main(
            [
                str(run / "summary.json"),
                str(other / "summary.json"),
                "--protocol",
                "all_item",
                "--baseline-last",
                "--n-boot",
                "200",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert (
        f"{synthetic_dir.name} HR@10 | {synthetic_dir.name} NDCG@10" in table
        and "(p=1.0000)" in table
    )
    assert report_main([str(run / "summary.json")]) == 2  # no generation protocol in this run
    assert "missing protocols.generation.hr@1.value" in capsys.readouterr().err


def test_all_item_errors_are_one_line(tmp_path, synthetic_dir, catalogue, capsys):
    cfg = _cfg(tmp_path, synthetic_dir, catalogue)
    short = tmp_path / "short.json"
    items = json.loads(catalogue.read_text())
    rows = json.loads((synthetic_dir / "test.json").read_text())
    short.write_text(json.dumps([c for c in items if c["title"] != rows[0]["trueSelection"]]))
    line = _error_line(capsys, "test", "-c", str(cfg), "--model.eval.catalogue_file", str(short))
    assert (
        f"test.json, record 0: target {rows[0]['trueSelection']!r} is not in the catalogue" in line
    )
    line = _error_line(
        capsys,
        "test",
        "-c",
        str(cfg),
        "--model.eval.top_n",
        "500",
        "--model.eval.beam_width",
        "500",
    )
    assert line.endswith(f"top_n=500 is larger than the catalogue ({len(items)} items)")
    line = _error_line(capsys, "test", "-c", str(cfg), "--model.eval.beam_width", "5")
    assert line == "sdpo: error: invalid configuration: beam_width must be >= top_n (10), got 5"
    dup = tmp_path / "dup.json"
    dup.write_text(
        json.dumps(items + [{"item_id": None, "title": items[3]["title"].upper(), "popularity": 0}])
    )
    line = _error_line(capsys, "test", "-c", str(cfg), "--model.eval.catalogue_file", str(dup))
    assert f"dup.json, record {len(items)}: title" in line and "only in letter case" in line
