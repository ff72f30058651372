"""``sdpo-prepare`` end to end on fixture files: output, statistics, errors, lenient mode."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sdpo_lightning.data.prepare.cli import main
from sdpo_lightning.data.prepare.samples import write_goodreads, write_lastfm, write_movielens_100k
from sdpo_lightning.data.readers import load_examples


def test_cli_writes_splits_readable_by_the_data_module(tmp_path, capsys):
    raw = write_movielens_100k(tmp_path / "raw")
    out = tmp_path / "out"
    assert main(["movielens-100k", "--raw", str(raw), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    assert f"users          {stats['users']}" in printed and "mean history" in printed
    for split in ("train", "valid", "test"):
        examples = load_examples(out / f"{split}.json", min_candidates=20).examples
        assert len(examples) == stats["examples"][split]
        assert all(1 <= len(ex.history) <= 10 and len(ex.candidates) == 20 for ex in examples)
    assert stats["examples"]["total"] == stats["interactions"] - stats["users"]
    text = (out / "train.json").read_text(encoding="utf-8")
    assert "Café Society" in text and "\\u00e9" not in text  # UTF-8, not ASCII escapes


def test_cli_protocol_options(tmp_path):
    raw = write_lastfm(tmp_path / "raw")
    out = tmp_path / "out"
    assert (
        main(
            [
                "lastfm-hetrec",
                "--raw",
                str(raw),
                "--out",
                str(out),
                "--seed",
                "3",
                "--max-history",
                "4",
                "--num-candidates",
                "6",
                "--split",
                "0.5",
                "0.25",
                "0.25",
                "--no-item-ids",
                "-q",
            ]
        )
        == 0
    )
    rows = json.loads((out / "train.json").read_text())
    assert all(len(r["historyList"]) <= 4 and len(r["itemList"]) == 6 for r in rows)
    assert all("item_ids" not in r for r in rows)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["protocol"]["seed"] == 3 and stats["users_per_split"]["train"] == 6


def test_cli_goodreads_explicit_files(tmp_path):
    raw = write_goodreads(tmp_path / "raw", genre="poetry")
    assert (
        main(
            [
                "goodreads",
                "--interactions",
                str(raw / "goodreads_interactions_poetry.json.gz"),
                "--books",
                str(raw / "goodreads_books_poetry.json.gz"),
                "--min-rating",
                "1",
                "--out",
                str(tmp_path / "out"),
                "-q",
            ]
        )
        == 0
    )
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["dropped"]["below_min_rating"] > 0  # rating 0 = unrated


def test_cli_lenient_prints_the_skipped_count(tmp_path, capsys):
    raw = write_movielens_100k(tmp_path / "raw")
    with open(raw / "u.data", "a") as handle:
        handle.write("garbage line\n1\t2\n")
    assert main(["ml-100k", "--raw", str(raw), "--out", str(tmp_path / "o")]) == 2
    assert "u.data:139: expected 4" in capsys.readouterr().err
    assert main(["ml-100k", "--raw", str(raw), "--out", str(tmp_path / "o"), "--lenient"]) == 0
    out = capsys.readouterr().out
    assert "malformed lines skipped: 2" in out and "u.data: 2" in out
    assert json.loads((tmp_path / "o" / "stats.json").read_text())["skipped_lines"] == {"u.data": 2}


@pytest.mark.parametrize(
    "args, message",
    [
        (["netflix", "--raw", "x"], "unknown dataset 'netflix'"),
        (["ml-100k"], "pass --raw DIR"),
        (["ml-100k", "--raw", "{tmp}/nowhere"], "raw path does not exist"),
        (["ml-100k", "--raw", "{raw}", "--min-user-interactions", "1000"], "no users left"),
        (["ml-100k", "--raw", "{raw}", "--encoding", "nope"], "unknown encoding 'nope'"),
        (["ml-100k", "--raw", "{raw}", "--num-candidates", "1"], "num_candidates must be >= 2"),
        (["ml-100k", "--raw", "{raw}", "--download"], "either --raw or --download"),
        (["goodreads", "--raw", "{raw}"], "found interactions files: none"),
    ],
)
def test_cli_user_errors_exit_2_without_traceback(tmp_path, capsys, args, message):
    raw = write_movielens_100k(tmp_path / "raw")
    args = [a.format(tmp=tmp_path, raw=raw) for a in args] + ["--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdpo-prepare: error:") and message in err and "Traceback" not in err


def test_cli_usage_errors_and_module_entry_point(tmp_path):
    assert main(["ml-100k"]) == 2  # --out missing: argparse usage error, no exception
    done = subprocess.run(
        [sys.executable, "-m", "sdpo_lightning.data.prepare", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "movielens-100k" in done.stdout and "u.data" in done.stdout
