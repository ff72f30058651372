"""Tests for the seeded synthetic candidate-list data (``sdpo_lightning.data.synthetic``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sdpo_lightning.data.synthetic import (
    ADJECTIVES,
    PROMPT_TEXTS,
    THEMES,
    generate_catalogue,
    generate_dataset,
    heuristic_hit_rate,
    main,
    tokenizer_texts,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "valid", "test")
TITLE_RE = re.compile(r"^[A-Za-z]+( [A-Za-z]+){0,2}$")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Default-sized dataset and tokenizer written by the CLI entry point (in process)."""
    out = tmp_path_factory.mktemp("synthetic")
    assert main(["--out", str(out), "--seed", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def data(data_dir: Path) -> dict[str, list[dict]]:
    return {
        name: json.loads((data_dir / f"{name}.json").read_text()) for name in (*SPLITS, "items")
    }


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_files_and_default_sizes(data_dir: Path, data: dict[str, list[dict]]) -> None:
    for name in (*SPLITS, "items"):
        assert (data_dir / f"{name}.json").is_file()
    assert (data_dir / "tokenizer" / "tokenizer.json").is_file()
    assert len(data["items"]) == 200
    assert 1200 <= len(data["train"]) <= 1800
    assert 100 <= len(data["valid"]) <= 250
    assert 100 <= len(data["test"]) <= 250


def test_example_format(data: dict[str, list[dict]]) -> None:
    """Target among 20 unique candidates; history of 3..10 distinct items, never the target."""
    titles = {it["title"] for it in data["items"]}
    for split in SPLITS:
        for i, ex in enumerate(data[split]):
            assert set(ex) == {"historyList", "itemList", "trueSelection", "user_id"}, (split, i)
            hist, cands, target = ex["historyList"], ex["itemList"], ex["trueSelection"]
            assert isinstance(hist, list) and 3 <= len(hist) <= 10
            assert len(set(hist)) == len(hist)
            assert target not in hist
            assert len(cands) == 20 and len(set(cands)) == 20
            assert target in cands
            assert set(hist) <= titles and set(cands) <= titles
            assert not set(cands) & set(hist)  # negatives are never in the user's history
            assert isinstance(ex["user_id"], int)


def test_negatives_outside_whole_user_sequence(data: dict[str, list[dict]]) -> None:
    """Negatives avoid every item the user ever interacted with, not just the window."""
    for split in SPLITS:
        seen: dict[int, set[str]] = {}
        for ex in data[split]:
            seen.setdefault(ex["user_id"], set()).update([*ex["historyList"], ex["trueSelection"]])
        for ex in data[split]:
            negatives = set(ex["itemList"]) - {ex["trueSelection"]}
            assert not negatives & seen[ex["user_id"]]


def test_target_position_is_shuffled(data: dict[str, list[dict]]) -> None:
    positions = [ex["itemList"].index(ex["trueSelection"]) for ex in data["train"]]
    assert len(set(positions)) == 20
    assert max(positions.count(p) for p in range(20)) < 0.1 * len(positions)


def test_sliding_windows(data: dict[str, list[dict]]) -> None:
    """Consecutive rows of a user: the next history is (history + target)[-10:]."""
    rows = data["train"]
    for prev, nxt in zip(rows, rows[1:], strict=False):
        if prev["user_id"] == nxt["user_id"]:
            assert nxt["historyList"] == (prev["historyList"] + [prev["trueSelection"]])[-10:]
        else:
            assert len(nxt["historyList"]) == 3


def test_split_by_user(data: dict[str, list[dict]]) -> None:
    users = {s: {ex["user_id"] for ex in data[s]} for s in SPLITS}
    assert not users["train"] & users["valid"]
    assert not users["train"] & users["test"]
    assert not users["valid"] & users["test"]
    total = sum(len(u) for u in users.values())
    assert len(users["train"]) == pytest.approx(0.8 * total, abs=2)
    assert len(users["valid"]) == pytest.approx(0.1 * total, abs=1)


def test_titles_are_unique_simple_and_not_nested(data: dict[str, list[dict]]) -> None:
    titles = [it["title"] for it in data["items"]]
    assert len(set(titles)) == len(titles)
    assert all(TITLE_RE.match(t) for t in titles)
    assert {len(t.split()) for t in titles} == {1, 2, 3}
    for a in titles:
        for b in titles:
            assert a == b or f" {a} " not in f" {b} ", (a, b)
    nouns = [w for words in THEMES.values() for w in words.split()]
    assert len(set(nouns)) == len(nouns) and not set(nouns) & set(ADJECTIVES)


def test_catalogue_categories_and_successors() -> None:
    items = generate_catalogue(n_items=60, n_categories=6, seed=3)
    assert len({it.category for it in items}) == 6
    for it in items:
        succ = items[it.successor]
        assert succ.category == it.category and succ.item_id != it.item_id
    assert sorted(it.successor for it in items) == list(range(60))  # a permutation


def test_learnable_structure(data: dict[str, list[dict]]) -> None:
    """A rule using the last item's category beats the 5% random rate by far."""
    category = heuristic_hit_rate(data["valid"], data["items"])
    with_successor = heuristic_hit_rate(data["valid"], data["items"], use_successor=True)
    assert category > 0.4
    assert with_successor >= category


def test_tokenizer_texts_cover_titles(data: dict[str, list[dict]]) -> None:
    texts = tokenizer_texts(data["items"])
    for it in data["items"][:20]:
        assert it["title"] in texts and f" {it['title']}" in texts
    assert all(t in texts for t in PROMPT_TEXTS)
    assert tokenizer_texts(generate_catalogue(20, 4, seed=0)) == tokenizer_texts(
        generate_catalogue(20, 4, seed=0)
    )


def test_same_seed_byte_identical_across_processes(data_dir: Path, tmp_path: Path) -> None:
    """A fresh interpreter (other hash seeds) writes the same data bytes and trains the
    same BPE vocabulary and merges (the tokenizer half skips ``transformers`` for speed)."""
    script = (
        "import sys; from sdpo_lightning.data.synthetic import main, tokenizer_texts, generate_catalogue\n"
        "from sdpo_lightning.modeling.tokenizer import build_bpe\n"
        "main(['--out', sys.argv[1], '--seed', '0', '--no-tokenizer'])\n"
        "open(sys.argv[1] + '/bpe.json', 'w').write(build_bpe(tokenizer_texts(generate_catalogue()), 1000).to_str())\n"
    )
    env = {
        **os.environ,
        "PYTHONHASHSEED": "12345",
        "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], check=True, env=env, capture_output=True
    )
    fresh = json.loads((tmp_path / "bpe.json").read_text())["model"]
    (tmp_path / "bpe.json").unlink()
    expected = {k: v for k, v in _digests(data_dir).items() if not k.startswith("tokenizer")}
    assert _digests(tmp_path) == expected
    saved = json.loads((data_dir / "tokenizer" / "tokenizer.json").read_text())["model"]
    assert fresh["vocab"] == saved["vocab"] and fresh["merges"] == saved["merges"]


def test_different_seed_differs(data: dict[str, list[dict]]) -> None:
    other = generate_dataset(None, seed=1, n_users=20)
    assert other["train"][0] != data["train"][0]
    again = generate_dataset(None, seed=1, n_users=20)
    assert json.dumps(other) == json.dumps(again)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="n_categories"):
        generate_catalogue(n_items=10, n_categories=len(THEMES) + 1)
    with pytest.raises(ValueError, match="negatives"):
        generate_dataset(None, n_items=30, n_users=2)
    with pytest.raises(ValueError, match="min_history"):
        generate_dataset(None, min_history=0)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("n_itemz: 3\n", "unknown generator setting(s) ['n_itemz']"),
        ("a: [\n", "not valid YAML"),
        (None, "No such file or directory"),
    ],
)
def test_bad_generator_config_is_one_error_line(
    tmp_path: Path, capsys, text: str | None, reason: str
) -> None:
    """A bad ``--config`` exits 2 with one ``error:`` line naming the file and the reason."""
    cfg = tmp_path / "gen.yaml"
    if text is not None:
        cfg.write_text(text)
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "out"), "--config", str(cfg), "--no-tokenizer"])
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and str(cfg) in err[0] and reason in err[0], err
    assert not (tmp_path / "out").exists()


def test_context_negatives_come_from_the_last_items_category() -> None:
    """With ``p_context_negative=1`` every negative shares the category of the history's last
    item (while that category has unseen items); with 0 the files are today's uniform draws;
    either way the same seed gives the same rows."""
    kwargs = dict(seed=3, n_items=200, n_users=30, n_candidates=4)
    uniform = generate_dataset(**kwargs)
    assert generate_dataset(**kwargs, p_context_negative=0.0) == uniform
    near = generate_dataset(**kwargs, p_context_negative=1.0)
    assert near == generate_dataset(**kwargs, p_context_negative=1.0)
    cat = {it["title"]: it["category"] for it in near["items"]}

    def share(rows: list[dict]) -> float:
        negs = [
            (ex["historyList"][-1], t)
            for ex in rows
            for t in ex["itemList"]
            if t != ex["trueSelection"]
        ]
        return sum(cat[h] == cat[t] for h, t in negs) / len(negs)

    assert share(near["train"]) > 0.99  # 20 items a category: it never runs out here
    assert share(uniform["train"]) < 0.2  # 10 categories, the current one partly seen
    with pytest.raises(ValueError, match="p_context_negative"):
        generate_dataset(**kwargs, p_context_negative=1.5)


def test_article_prefix_shares_a_first_word_and_keeps_titles_distinct() -> None:
    """``p_article`` starts about that share of titles with ``The``; titles stay unique and no
    title is a whole-word part of another; 0 keeps today's catalogue."""
    assert generate_catalogue(200, 10, seed=1) == generate_catalogue(200, 10, seed=1, p_article=0.0)
    items = generate_catalogue(200, 10, seed=1, noun_first=True, p_article=0.5)
    titles = [it.title for it in items]
    share = sum(t.startswith("The ") for t in titles) / len(titles)
    assert 0.4 < share < 0.6
    assert len(set(titles)) == len(titles)
    assert not any(a != b and f" {a} " in f" {b} " for a in titles for b in titles)
