"""The full MovieLens-100K preparation on ``../shared/data/ml-100k``: exact statistics and
byte-identical output across runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sdpo_lightning.data.prepare.cli import main

ML100K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-100k"

EXPECTED = {
    "dataset": "movielens-100k",
    "users": 943,
    "items": 1682,
    "interactions": 100000,
    "raw_interactions": 100000,
    "users_per_split": {"train": 754, "valid": 95, "test": 94},
    "examples": {"train": 77287, "valid": 10561, "test": 11209, "total": 99057},
    "mean_history_length": {"train": 9.561, "valid": 9.5952, "test": 9.6226, "all": 9.5716},
    "disambiguated_titles": 18,
    "dropped": {},
    "skipped_lines": {},
}
# Pinned SHA-256 of test.json with the default protocol: any change to ordering, split,
# sampling, title cleaning or serialization shows up here. Update deliberately.
TEST_JSON_SHA256 = "fb9ff36381a5ee8ef0f10e18b744ac5a7c50d1da8d9fbb6b747034681d84a219"


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def ml100k() -> Path:
    if not (ML100K / "u.data").is_file():
        reason = f"{ML100K} is absent (../shared not laid out next to the repo)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return ML100K


def test_ml100k_exact_statistics_and_deterministic_output(ml100k, tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["movielens-100k", "--raw", str(ml100k), "--out", str(first)]) == 0
    printed = capsys.readouterr().out
    assert "users          943" in printed and "99057" in printed
    stats = json.loads((first / "stats.json").read_text())
    assert {key: stats[key] for key in EXPECTED} == EXPECTED
    assert stats["protocol"]["max_history"] == 10 and stats["protocol"]["num_candidates"] == 20
    assert main(["ml-100k", "--raw", str(ml100k), "--out", str(second), "-q"]) == 0
    digests = _digests(first)
    assert digests == _digests(second)
    assert sorted(digests) == [
        "catalogue.json",
        "stats.json",
        "test.json",
        "train.json",
        "valid.json",
    ]
    assert digests["test.json"] == TEST_JSON_SHA256

    rows = json.loads((first / "test.json").read_text(encoding="utf-8"))
    titles = {t for r in rows for t in r["itemList"]}
    assert "Chasing Amy (1997) [2]" in titles or "Chasing Amy (1997)" in titles
    catalogue = json.loads((first / "catalogue.json").read_text(encoding="utf-8"))
    assert len(catalogue) == 1682 and {"item_id", "title", "popularity"} == set(catalogue[0])
    train = json.loads((first / "train.json").read_text(encoding="utf-8"))
    assert sum(c["popularity"] for c in catalogue) == len(train) == 77287
    names = {c["title"] for c in catalogue}
    assert all(r["trueSelection"] in names and not set(r["historyList"]) - names for r in rows)
    assert not any(
        r["trueSelection"] in r["historyList"] for r in rows
    )  # the history rule's premise
    for row in rows[:2000]:
        assert len(set(row["itemList"])) == 20 and row["trueSelection"] in row["itemList"]
        assert 1 <= len(row["historyList"]) <= 10
